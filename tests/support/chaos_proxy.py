"""An in-repo asyncio TCP proxy between workers and Redis that misbehaves on request (reliability.md §13).

It runs its own event loop in a thread, so sync tests, async tests and worker subprocesses can all
use it: point a client at :attr:`ChaosProxy.url` instead of Redis. It parses the RESP requests
just enough to know each command's name (and first argument, e.g. the SHA of an ``EVALSHA``) and
the replies just enough to know where each one ends, so it can

* :meth:`drop_reply` ``(command, n)``: swallow the next ``n`` replies to ``command`` after Redis
  executed it, then reset the connection (``then="reset"``: the reply was lost on the way, the
  client sees a connection error at once) or keep it open (``then="hang"``: the client waits for
  its socket timeout);
* :meth:`blackhole` ``(seconds)``: stop moving bytes in both directions (and leave new connections
  unanswered) for ``seconds``; like a network partition that heals, what was sent meanwhile is
  delivered afterwards, unless the client gave up on the connection first;
* :meth:`reset_all`: send a TCP RST on every open connection;
* :meth:`latency` ``(ms)``: delay every request by ``ms`` milliseconds;
* :attr:`counts`: count the commands it forwarded, by upper-case name (:attr:`scripts`:
  ``EVALSHA`` calls by SHA).

A connection that subscribes (Pub/Sub) is only counted, not matched: pushed messages are not replies.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import pytest

__all__ = ["ChaosProxy", "RespReplies", "RespRequests", "chaos_proxy"]

T = TypeVar("T")
_SUBSCRIBE = {b"SUBSCRIBE", b"PSUBSCRIBE", b"SSUBSCRIBE"}
_LINE_TYPES = frozenset(b"+-:_,#(")
_BLOB_TYPES = frozenset(b"$!=")
_AGGREGATE_TYPES = frozenset(b"*~>")
_PAIR_TYPES = frozenset(b"%|")


class RespRequests:
    """Incremental parser of client requests: yields ``(NAME, first argument or None)`` per command."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[bytes, bytes | None]]:
        self._buffer += data
        out: list[tuple[bytes, bytes | None]] = []
        while self._buffer:
            args = self._one()
            if args is None:
                break
            if args:  # an empty inline line or array is skipped
                out.append((args[0].upper(), args[1] if len(args) > 1 else None))
        return out

    def _one(self) -> list[bytes] | None:
        """The name and first argument of the request at the head of the buffer (consumed), or None."""
        buf = self._buffer
        end = buf.find(b"\r\n")
        if end < 0:
            return None
        if buf[0:1] != b"*":  # an inline command: words on one line
            words = bytes(buf[:end]).split()
            del buf[: end + 2]
            return words[:2]
        pos = end + 2
        args: list[bytes] = []
        for _ in range(max(int(buf[1:end]), 0)):
            line_end = buf.find(b"\r\n", pos)
            if line_end < 0:
                return None
            start = line_end + 2
            length = int(buf[pos + 1 : line_end])
            if len(buf) < start + length + 2:
                return None
            if len(args) < 2:  # the name and the first argument are all we keep
                args.append(bytes(buf[start : start + length]))
            pos = start + length + 2
        del buf[:pos]
        return args


class RespReplies:
    """Incremental parser of server replies (RESP2 and RESP3): yields each complete reply's bytes."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self._buffer += data
        out: list[bytes] = []
        while True:
            end = self._end_of_value(0)
            if end is None:
                return out
            out.append(bytes(self._buffer[:end]))
            del self._buffer[:end]

    def rest(self) -> bytes:
        """Bytes of an incomplete reply (forwarded as they are when matching stops)."""
        data = bytes(self._buffer)
        self._buffer.clear()
        return data

    def _end_of_value(self, pos: int) -> int | None:
        """The offset after the complete value starting at ``pos`` (attributes included), or None."""
        buf = self._buffer
        pending = 1  # values still to read
        while pending:
            if pos >= len(buf):
                return None
            kind = buf[pos]
            line_end = buf.find(b"\r\n", pos)
            if line_end < 0:
                return None
            pending -= 1
            if kind in _LINE_TYPES:
                pos = line_end + 2
            elif kind in _BLOB_TYPES:
                length = int(buf[pos + 1 : line_end])
                pos = line_end + 2 if length < 0 else line_end + 2 + length + 2
                if pos > len(buf):
                    return None
            elif kind in _AGGREGATE_TYPES:
                pending += max(int(buf[pos + 1 : line_end]), 0)
                pos = line_end + 2
            elif kind in _PAIR_TYPES:
                pending += 2 * max(int(buf[pos + 1 : line_end]), 0)
                if kind == ord("|"):  # an attribute precedes the value it describes
                    pending += 1
                pos = line_end + 2
            else:
                raise ValueError(f"not RESP: {bytes(buf[pos : pos + 20])!r}")
        return pos


@dataclass
class _DropRule:
    command: bytes
    remaining: int
    first_arg: bytes | None
    then: str
    reply_contains: bytes | None = None

    def matches(self, command: bytes, first_arg: bytes | None, reply: bytes) -> bool:
        return (
            self.remaining > 0
            and command == self.command
            and (self.first_arg is None or first_arg == self.first_arg)
            and (self.reply_contains is None or self.reply_contains in reply)
        )


class _Pair:
    """One client connection and its upstream connection."""

    def __init__(self, client: asyncio.StreamWriter, upstream: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream = upstream
        self.pending: deque[tuple[bytes, bytes | None]] = deque()
        self.pubsub = False
        self.closed = False

    def abort(self, *, rst: bool = True) -> None:
        if self.closed:
            return
        self.closed = True
        for writer in (self.client, self.upstream):
            sock = writer.get_extra_info("socket")
            if rst and sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort() if rst else writer.close()


class ChaosProxy:
    """A TCP proxy to ``target_host:target_port`` on a free loopback port; :meth:`start` it first."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self.counts: Counter[str] = Counter()
        self.scripts: Counter[str] = Counter()  # EVALSHA calls by SHA
        self.dropped: Counter[str] = Counter()
        self.connections_made = 0
        self._rules: list[_DropRule] = []
        self._latency = 0.0
        self._blackhole_until = 0.0
        self._pairs: set[_Pair] = set()
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    # -- lifecycle -----------------------------------------------------------------------------------
    def start(self) -> ChaosProxy:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            self._server = loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
            self.port = self._server.sockets[0].getsockname()[1]
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        self._thread = threading.Thread(target=run, name="chaos-proxy", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the chaos proxy did not start")
        return self

    def stop(self) -> None:
        loop = self._loop
        if loop is None or self._thread is None:
            return

        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            for pair in list(self._pairs):
                pair.abort(rst=False)
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self._server is not None:
                await self._server.wait_closed()

        with contextlib.suppress(RuntimeError):
            asyncio.run_coroutine_threadsafe(shutdown(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        self._thread.join(timeout=10)
        self._loop = None

    def _call(self, func: Callable[[], T]) -> T:
        """Run ``func`` in the proxy's loop and return its result."""
        if self._loop is None:
            raise RuntimeError("the chaos proxy is not running")

        async def call() -> T:
            return func()

        return asyncio.run_coroutine_threadsafe(call(), self._loop).result(timeout=10)

    # -- faults --------------------------------------------------------------------------------------
    def drop_reply(
        self,
        command: str,
        n: int = 1,
        *,
        first_arg: str | bytes | None = None,
        reply_contains: bytes | None = None,
        then: str = "reset",
    ) -> None:
        """Swallow the replies to the next ``n`` ``command`` calls (with ``first_arg``, and whose
        reply contains ``reply_contains``, if given): Redis executed the command, the reply is lost.
        """
        if then not in {"reset", "hang"}:
            raise ValueError("then must be 'reset' or 'hang'")
        arg = first_arg.encode() if isinstance(first_arg, str) else first_arg
        rule = _DropRule(command.upper().encode(), n, arg, then, reply_contains)
        self._call(lambda: self._rules.append(rule))

    def pending_drops(self) -> int:
        """Replies still to be dropped by :meth:`drop_reply` rules."""
        return self._call(lambda: sum(rule.remaining for rule in self._rules))

    def blackhole(self, seconds: float) -> None:
        """Move no bytes (and answer no new connection) for ``seconds``, starting now."""
        until = time.monotonic() + seconds
        self._call(lambda: setattr(self, "_blackhole_until", until))

    def heal(self) -> None:
        """End a blackhole now."""
        self._call(lambda: setattr(self, "_blackhole_until", 0.0))

    def reset_all(self) -> int:
        """RST every open connection; return how many."""

        def reset() -> int:
            pairs = list(self._pairs)
            for pair in pairs:
                pair.abort()
            return len(pairs)

        return self._call(reset)

    def latency(self, ms: float) -> None:
        """Delay every request by ``ms`` milliseconds (0 to stop)."""
        self._call(lambda: setattr(self, "_latency", ms / 1000.0))

    def open_connections(self) -> int:
        return self._call(lambda: len(self._pairs))

    # -- the pumps -----------------------------------------------------------------------------------
    async def _gate(self) -> None:
        while (wait := self._blackhole_until - time.monotonic()) > 0:
            await asyncio.sleep(min(wait, 0.05))

    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self.connections_made += 1
        pair: _Pair | None = None
        try:
            await self._gate()
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
            pair = _Pair(client_writer, upstream_writer)
            self._pairs.add(pair)
            await asyncio.gather(
                self._requests(pair, client_reader),
                self._replies(pair, upstream_reader),
                return_exceptions=True,
            )
        except (OSError, asyncio.CancelledError):
            pass  # Redis is down, or the proxy is stopping (asyncio would log a cancelled handler)
        finally:
            if pair is None:
                client_writer.transport.abort()
            else:
                self._pairs.discard(pair)
                pair.abort(rst=False)

    async def _requests(self, pair: _Pair, reader: asyncio.StreamReader) -> None:
        parser = RespRequests()
        try:
            while not pair.closed:
                data = await reader.read(65536)
                await self._gate()
                if not data:
                    break
                for name, first_arg in parser.feed(data):
                    self.counts[name.decode(errors="replace")] += 1
                    if name == b"EVALSHA" and first_arg is not None:
                        self.scripts[first_arg.decode(errors="replace")] += 1
                    if name in _SUBSCRIBE:
                        pair.pubsub = True
                    if not pair.pubsub:
                        pair.pending.append((name, first_arg))
                if self._latency:
                    await asyncio.sleep(self._latency)
                if pair.closed:
                    break
                pair.upstream.write(data)
                await pair.upstream.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            pair.abort(rst=False)

    async def _replies(self, pair: _Pair, reader: asyncio.StreamReader) -> None:
        parser = RespReplies()
        try:
            while not pair.closed:
                data = await reader.read(65536)
                await self._gate()
                if not data:
                    break
                if pair.pubsub and not pair.pending:
                    pair.client.write(parser.rest() + data)
                    await pair.client.drain()
                    continue
                out = bytearray()
                for reply in parser.feed(data):
                    command = pair.pending.popleft() if pair.pending else (b"?", None)
                    rule = next((r for r in self._rules if r.matches(*command, reply)), None)
                    if rule is None:
                        out += reply
                        continue
                    rule.remaining -= 1
                    self.dropped[command[0].decode(errors="replace")] += 1
                    if rule.then == "reset":
                        if out:
                            pair.client.write(bytes(out))
                        pair.abort()
                        return
                if out and not pair.closed:
                    pair.client.write(bytes(out))
                    await pair.client.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            pair.abort(rst=False)


@pytest.fixture
def chaos_proxy() -> Iterator[Callable[[int], ChaosProxy]]:
    """``start(redis_port)``: a running proxy to ``127.0.0.1:redis_port``; all are stopped after the test."""
    started: list[ChaosProxy] = []

    def start(port: int) -> ChaosProxy:
        proxy = ChaosProxy(port).start()
        started.append(proxy)
        return proxy

    try:
        yield start
    finally:
        for proxy in started:
            proxy.stop()
