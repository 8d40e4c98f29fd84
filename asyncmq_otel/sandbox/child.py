"""The sandbox child: import the task modules, then run one job per request frame.

The parent starts it as ``python -m asyncmq_otel.sandbox.child --requests FD --replies FD --parent-watch FD``
in a session of its own. Requests and replies are length-prefixed JSON frames (4-byte big-endian length, then
UTF-8 JSON) on two dedicated pipes, so whatever task code prints to stdout or stderr cannot corrupt the
protocol: the parent turns those streams into log lines.

The child must not outlive its worker, or a job redelivered elsewhere would run beside the one it is still
running. The parent never writes to the third pipe and the kernel closes its end when the parent dies, however
it dies; a thread here then reads end of file, kills every process below the child and the child itself. The
child is a subreaper, so what its handlers start stays below it even when their own parents exit.

Requests: ``init`` (once: ``sys_path``, ``modules``, ``packages``), then ``run`` (``task``, ``module``,
``args``, ``kwargs``, ``max_result_bytes``). Replies: ``ready`` (``pid``, ``errors``) to ``init``; to each
``run`` any number of ``progress`` frames, then exactly one of ``result``, ``error``, ``too_large``,
``unserializable`` or ``unknown_task``. End of file on the request pipe means "exit now".

The frame codec lives here because both sides use it and the child must not import the parent's anyio code.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import io
import json
import os
import signal
import struct
import sys
import threading
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import JobArgumentError
from ..jobs import check_json, dumps, error_type_name
from ..tasks import TASK_REGISTRY, TaskInfo, autodiscover_tasks
from ._process_tree import ProcessTree, become_subreaper

__all__ = [
    "FRAME_HEADER",
    "MAX_ERROR_MESSAGE",
    "MAX_TRACEBACK",
    "Oversize",
    "encode_message",
    "error_frame",
    "main",
    "read_frame",
    "write_frame",
]

MAX_ERROR_MESSAGE = 2 * 1024
"""Characters of a handler's error message kept (the reliability contract bounds every stored error)."""
MAX_TRACEBACK = 16 * 1024
"""Characters of a handler's traceback kept, from its end where the raising frame is."""

FRAME_HEADER = struct.Struct(">I")
"""A frame's header: the length of its body, 4 bytes big-endian."""
_MAX_FRAME = 2**32 - 1
_READ_CHUNK = 1024 * 1024
_PROTOCOL_ERROR = 2
_MAX_REPORTED_ERRORS = 20


@dataclass(frozen=True, slots=True)
class Oversize:
    """A frame header announced more bytes than the reader accepts; its body was left unread."""

    size: int


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def write_frame(fd: int, payload: bytes) -> None:
    """Write one frame (blocking). Raises ``OSError`` (``BrokenPipeError``) when the reader is gone."""
    if len(payload) > _MAX_FRAME:
        raise ValueError(f"a frame carries at most {_MAX_FRAME} bytes, not {len(payload)}")
    # Two writes rather than one concatenation: a result frame can be large and need not be copied.
    _write_all(fd, FRAME_HEADER.pack(len(payload)))
    _write_all(fd, payload)


def _read_exact(fd: int, size: int) -> bytes | None:
    buffer = bytearray()
    while len(buffer) < size:
        chunk = os.read(fd, min(size - len(buffer), _READ_CHUNK))
        if not chunk:
            return None
        buffer += chunk
    return bytes(buffer)


def read_frame(fd: int, limit: int | None = None) -> bytes | Oversize | None:
    """Read one frame (blocking); ``None`` at end of file, :class:`Oversize` past ``limit`` bytes.

    The body of an oversized frame is not read, so a huge reply costs the reader nothing; the stream is
    then out of step and the writer must be discarded.
    """
    header = _read_exact(fd, FRAME_HEADER.size)
    if header is None:
        return None
    (size,) = FRAME_HEADER.unpack(header)
    if limit is not None and size > limit:
        return Oversize(size)
    return _read_exact(fd, size)


def encode_message(message: dict[str, Any]) -> bytes:
    """Encode a control frame; ASCII escapes keep odd strings (lone surrogates) encodable."""
    return json.dumps(message, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode("ascii")


def _head(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 15] + "... (truncated)"


def _tail(text: str, limit: int) -> str:
    return text if len(text) <= limit else "(truncated) ..." + text[-(limit - 15) :]


def _is_group(exc: BaseException) -> bool:
    # By name, so the exceptiongroup backport on Python 3.10 is recognised as well as the builtin.
    return any(cls.__name__ == "BaseExceptionGroup" for cls in type(exc).__mro__)


def _unwrap(exc: BaseException) -> BaseException:
    """A group wrapping a single error (anyio, trio, TaskGroup) reports that error, so the real type shows."""
    while _is_group(exc):
        inner = getattr(exc, "exceptions", ())
        if not (isinstance(inner, tuple) and len(inner) == 1 and isinstance(inner[0], BaseException)):
            break
        exc = inner[0]
    return exc


def _describe(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:  # noqa: BLE001 - a broken __str__ must not lose the error itself
        return f"<{type(exc).__name__} with an unprintable message>"


def error_frame(exc: BaseException) -> dict[str, Any]:
    """The ``error`` reply for a handler exception: qualified type, message head, traceback tail."""
    exc = _unwrap(exc)
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return {
        "op": "error",
        "type": error_type_name(exc),
        "message": _head(_describe(exc), MAX_ERROR_MESSAGE),
        "traceback": _tail(text, MAX_TRACEBACK),
    }


class _Server:
    """The child's request loop; one job at a time, so only progress frames need the write lock."""

    def __init__(self, requests: int, replies: int) -> None:
        self._requests = requests
        self._replies = replies
        # Handlers may report progress from their own threads while the main thread writes a reply.
        self._write_lock = threading.Lock()

    def send(self, payload: bytes) -> None:
        with self._write_lock:
            write_frame(self._replies, payload)

    def receive(self) -> dict[str, Any] | None:
        frame = read_frame(self._requests)
        if frame is None or isinstance(frame, Oversize):
            return None
        message = json.loads(frame)
        if not isinstance(message, dict):
            raise TypeError(f"request is a JSON {type(message).__name__}, not an object")
        return message

    def serve(self) -> int:
        init = self.receive()
        if init is None:
            return 0
        if init.get("op") != "init":
            return _PROTOCOL_ERROR
        errors = self._prepare(init)
        self.send(encode_message({"op": "ready", "pid": os.getpid(), "errors": errors}))
        while (request := self.receive()) is not None:
            if request.get("op") != "run":
                return _PROTOCOL_ERROR
            self._run(request)
            # Buffered prints would otherwise reach the parent's log only when the buffer fills; a handler
            # that closed or replaced a stream must not turn a finished job into a crash.
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(AttributeError, OSError, ValueError):
                    stream.flush()
        return 0

    def _prepare(self, init: dict[str, Any]) -> list[str]:
        """Take the parent's import path and import the task modules; report failures, do not stop."""
        parent_path = [entry for entry in init.get("sys_path", []) if isinstance(entry, str)]
        sys.path[:] = [*parent_path, *(entry for entry in sys.path if entry not in parent_path)]
        errors: list[str] = []
        for module in init.get("modules", []):
            try:
                importlib.import_module(str(module))
            except Exception as exc:  # noqa: BLE001 - one broken module must not take the other tasks down
                errors.append(f"{module}: {error_type_name(exc)}: {_head(_describe(exc), MAX_ERROR_MESSAGE)}")
        for package in init.get("packages", []):
            try:
                autodiscover_tasks([str(package)])
            except Exception as exc:  # noqa: BLE001 - as above
                errors.append(
                    f"{package}: {error_type_name(exc)}: {_head(_describe(exc), MAX_ERROR_MESSAGE)}"
                )
        if len(errors) > _MAX_REPORTED_ERRORS:
            # The ready frame must stay small; the parent logs these, and the rest follow the same cause.
            errors[_MAX_REPORTED_ERRORS:] = [f"... and {len(errors) - _MAX_REPORTED_ERRORS} more"]
        return errors

    def _find(self, task_id: str, module: object) -> TaskInfo | None:
        info = TASK_REGISTRY.get(task_id)
        # The module name comes from the parent's registry (a task it already imported), never from a job
        # payload, so importing it here is how a task registered after this child started becomes runnable.
        if info is None and isinstance(module, str) and module and module != "__main__":
            try:
                importlib.import_module(module)
            except Exception:  # noqa: BLE001 - reported as an unknown task; the traceback goes to the log
                traceback.print_exc()
            info = TASK_REGISTRY.get(task_id)
        return info

    def _reporter(self, limit: int) -> Callable[..., None]:
        def report_progress(pct: float, data: Any = None) -> None:  # noqa: ANN401 - any JSON value
            """Send the job's progress (a percentage and optional JSON data) to the worker."""
            body = dumps(
                {"op": "progress", "pct": check_json(float(pct), "pct"), "data": check_json(data, "data")}
            )
            encoded = body.encode("utf-8")
            if len(encoded) > limit:
                raise ValueError(f"progress data is {len(encoded)} bytes, over max_result_bytes ({limit})")
            self.send(encoded)

        return report_progress

    def _run(self, request: dict[str, Any]) -> None:
        task_id = str(request.get("task"))
        limit = int(request.get("max_result_bytes", 0))
        info = self._find(task_id, request.get("module"))
        if info is None:
            message = (
                f"task {task_id!r} is registered in the worker but not in its sandbox child: register it "
                "when its module is imported (not in __main__ or inside a function)"
            )
            self.send(encode_message({"op": "unknown_task", "message": message}))
            return
        args = list(request.get("args", []))
        kwargs = dict(request.get("kwargs", {}))
        if info.progress:
            kwargs["report_progress"] = self._reporter(limit)
        try:
            result = asyncio.run(info.func(*args, **kwargs)) if info.is_async else info.func(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - the handler's error is the job's outcome, sent to the parent
            self.send(encode_message(error_frame(exc)))
            return
        self._send_result(result, limit)

    def _send_result(self, result: object, limit: int) -> None:
        try:
            encoded = dumps(check_json(result, "result")).encode("utf-8")
        except (JobArgumentError, TypeError, ValueError, RecursionError) as exc:
            message = (
                f"the handler ran (its side effects may have happened), but its result is not JSON: {exc}"
            )
            self.send(encode_message({"op": "unserializable", "message": _head(message, MAX_ERROR_MESSAGE)}))
            return
        if len(encoded) > limit:
            # Checked here so the child stays in step and warm; the parent's frame limit is only a backstop.
            self.send(encode_message({"op": "too_large", "size": len(encoded)}))
            return
        self.send(b'{"op":"result","value":' + encoded + b"}")


def _die_with_parent(watch: int) -> None:
    """Block until the parent is gone (end of file on ``watch``), then kill this child's tree and itself."""
    with contextlib.suppress(OSError):
        while os.read(watch, 1):
            pass  # the parent never writes; read on until its end closes
    ProcessTree(os.getpid()).kill()
    os.kill(os.getpid(), signal.SIGKILL)


def main(argv: Sequence[str] | None = None) -> int:
    """Serve requests until the parent closes the request pipe; return the exit code."""
    parser = argparse.ArgumentParser(prog="python -m asyncmq_otel.sandbox.child", description=__doc__)
    parser.add_argument("--requests", type=int, required=True, help="fd to read request frames from")
    parser.add_argument("--replies", type=int, required=True, help="fd to write reply frames to")
    parser.add_argument(
        "--parent-watch", type=int, required=True, help="fd whose end of file means the parent is gone"
    )
    options = parser.parse_args(argv)
    for fd in (options.requests, options.replies, options.parent_watch):
        # Processes the handler starts must not hold the protocol pipes open (or write to them).
        os.set_inheritable(fd, False)  # noqa: FBT003 - os.set_inheritable takes no keywords
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(line_buffering=True)  # so each printed line reaches the log promptly
    become_subreaper()
    # A daemon thread, so a clean exit does not wait for it. There is no race with the parent's death: the
    # descriptor was inherited at fork, so a parent already gone reads as end of file at once.
    threading.Thread(
        target=_die_with_parent,
        args=(options.parent_watch,),
        name="asyncmq-sandbox-parent-watch",
        daemon=True,
    ).start()
    try:
        return _Server(options.requests, options.replies).serve()
    except BrokenPipeError:
        return 0  # the parent is gone or discarded this child: nobody is left to answer


if __name__ == "__main__":
    sys.exit(main())
