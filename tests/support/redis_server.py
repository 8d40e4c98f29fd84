"""Private ``redis-server`` processes for tests that kill, fill or reconfigure Redis.

A server binds 127.0.0.1 on a free port (bind port 0, release it, start, retry on a collision),
keeps its files in its own temporary directory, runs with AOF ``everysec`` or no persistence and
``--enable-debug-command local``, and offers ``kill9()``, ``restart()`` and ``config_set()``.
Variants: a single-node Redis Cluster (all 16384 slots), TLS (certificates made by ``trustme``)
and a password. Read-and-write tests use the shared server on 127.0.0.1:6379 instead.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

from tests.support.poll import wait_until

__all__ = [
    "SHARED_URL",
    "RedisServer",
    "TLSFiles",
    "delete_prefix",
    "free_port",
    "private_redis",
    "redis_cluster_server",
    "redis_prefix",
    "redis_server",
    "redis_server_factory",
    "redis_url",
    "require_ci_or_skip",
    "shared_redis_available",
    "unique_prefix",
]

SHARED_URL = "redis://127.0.0.1:6379/0"


def free_port() -> int:
    """A port that was free a moment ago (the caller retries if it is taken by then)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def unique_prefix() -> str:
    """A key prefix no other test uses."""
    return f"t{uuid.uuid4().hex[:12]}"


def shared_redis_available(url: str = SHARED_URL) -> bool:
    """Whether the shared server answers ``PING``."""
    client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=2)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def delete_prefix(url: str, prefix: str, **kwargs: object) -> int:
    """Delete every key under ``prefix`` (a test-only ``SCAN``; the product never scans)."""
    client = redis.Redis.from_url(url, socket_timeout=10, **kwargs)  # type: ignore[arg-type]
    try:
        doomed = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        pipe = client.pipeline(transaction=False)
        for key in doomed:
            pipe.delete(key)  # one key per command: on a cluster the keys span many slots
        pipe.execute()
        return len(doomed)
    finally:
        client.close()


@dataclass
class TLSFiles:
    """A CA and a server certificate for 127.0.0.1/localhost, written as PEM files."""

    directory: Path
    ca: Path = field(init=False)
    cert: Path = field(init=False)
    key: Path = field(init=False)
    client_cert: Path = field(init=False)
    client_key: Path = field(init=False)
    other_ca: Path = field(init=False)

    def __post_init__(self) -> None:
        import trustme

        ca = trustme.CA()
        server = ca.issue_cert("127.0.0.1", "localhost")
        client = ca.issue_cert("client.test")
        self.ca = self.directory / "ca.pem"
        self.cert = self.directory / "server.pem"
        self.key = self.directory / "server.key"
        self.client_cert = self.directory / "client.pem"
        self.client_key = self.directory / "client.key"
        self.other_ca = self.directory / "other-ca.pem"
        ca.cert_pem.write_to_path(str(self.ca))
        server.cert_chain_pems[0].write_to_path(str(self.cert))
        server.private_key_pem.write_to_path(str(self.key))
        client.cert_chain_pems[0].write_to_path(str(self.client_cert))
        client.private_key_pem.write_to_path(str(self.client_key))
        trustme.CA().cert_pem.write_to_path(str(self.other_ca))


class RedisServer:
    """One private ``redis-server``; call :meth:`start` (or use :func:`private_redis`)."""

    def __init__(
        self,
        *,
        aof: bool = False,
        cluster: bool = False,
        tls: bool = False,
        password: str | None = None,
        extra: tuple[str, ...] = (),
        directory: Path | None = None,
    ) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.binary = binary
        self.aof = aof
        self.cluster = cluster
        self.password = password
        self.extra = extra
        self._own_dir = directory is None
        self.directory = directory or Path(tempfile.mkdtemp(prefix="asyncmq-redis-"))
        self.tls = TLSFiles(self.directory) if tls else None
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    # -- addresses ------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """The URL clients use (``rediss://`` for TLS, with the password when one is set)."""
        scheme = "rediss" if self.tls else "redis"
        auth = f":{self.password}@" if self.password else ""
        return f"{scheme}://{auth}127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        """An admin client (it skips TLS verification: tests check verification elsewhere)."""
        kwargs: dict[str, object] = {"socket_timeout": 10, "password": self.password}
        if self.tls:
            kwargs.update(ssl=True, ssl_ca_certs=str(self.tls.ca), ssl_check_hostname=False)
        return redis.Redis(host="127.0.0.1", port=self.port, **kwargs)  # type: ignore[arg-type]

    # -- lifecycle ------------------------------------------------------------------------------------
    def _args(self) -> list[str]:
        args = [
            self.binary,
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.directory),
            "--save",
            "",
            "--enable-debug-command",
            "local",
            "--logfile",
            str(self.directory / "redis.log"),
            "--daemonize",
            "no",
        ]
        if self.aof:
            args += ["--appendonly", "yes", "--appendfsync", "everysec"]
        else:
            args += ["--appendonly", "no"]
        if self.tls:
            args += [
                "--port",
                "0",
                "--tls-port",
                str(self.port),
                "--tls-cert-file",
                str(self.tls.cert),
                "--tls-key-file",
                str(self.tls.key),
                "--tls-ca-cert-file",
                str(self.tls.ca),
                "--tls-auth-clients",
                "optional",
            ]
        else:
            args += ["--port", str(self.port)]
        if self.cluster:
            args += ["--cluster-enabled", "yes", "--cluster-config-file", str(self.directory / "nodes.conf")]
        if self.password:
            args += ["--requirepass", self.password]
        return args + list(self.extra)

    def _ping(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"redis-server exited with {self.process.returncode}: {self.log_tail()}")
        client = self.client()
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    def _launch(self) -> None:
        self.process = subprocess.Popen(self._args(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(self._ping, timeout=10, what=f"redis-server on port {self.port} answers PING")

    def start(self) -> RedisServer:
        """Start on a free port, retrying when another process takes the port first."""
        for _ in range(5):
            self.port = free_port()
            try:
                self._launch()
            except RuntimeError:
                self.process = None
                continue
            break
        else:
            raise RuntimeError(f"redis-server did not start: {self.log_tail()}")
        if self.cluster:
            self._make_cluster()
        return self

    def _make_cluster(self) -> None:
        client = self.client()
        try:
            client.execute_command("CLUSTER", "ADDSLOTSRANGE", "0", "16383")

            def ready() -> bool:
                info = client.execute_command("CLUSTER", "INFO")
                text = info.decode() if isinstance(info, bytes) else str(info)
                return "cluster_state:ok" in text

            wait_until(ready, timeout=10, what="the single-node cluster is ok")
        finally:
            client.close()

    def kill9(self) -> None:
        """SIGKILL the server (no shutdown save) and reap it."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def restart(self) -> None:
        """Start again on the same port and directory (the AOF, if any, is replayed)."""
        self.kill9()
        deadline = time.monotonic() + 10
        while True:
            try:
                self._launch()
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                continue
            return

    def restart_loading(self) -> None:
        """Like :meth:`restart`, but return as soon as the server accepts connections, while it may
        still be loading its dataset (``INFO`` answers during ``LOADING``; commands get ``-LOADING``).
        """
        self.kill9()
        self.process = subprocess.Popen(self._args(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(
            lambda: self.loading() is not None, timeout=10, what=f"redis-server on {self.port} accepts"
        )

    def loading(self) -> bool | None:
        """Whether the server is loading its dataset (``None`` when it does not answer)."""
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"redis-server exited with {self.process.returncode}: {self.log_tail()}")
        client = self.client()
        try:
            return bool(int(client.info("persistence")["loading"]))
        except redis.RedisError:
            return None
        finally:
            client.close()

    def config_set(self, name: str, value: str) -> None:
        """``CONFIG SET`` on the running server."""
        client = self.client()
        try:
            client.config_set(name, value)
        finally:
            client.close()

    def stop(self) -> None:
        """Kill the server and remove its directory."""
        self.kill9()
        if self._own_dir:
            shutil.rmtree(self.directory, ignore_errors=True)

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the server's log, for failure messages."""
        path = self.directory / "redis.log"
        with contextlib.suppress(OSError):
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        return "(no log)"


@contextlib.contextmanager
def private_redis(**kwargs: object) -> Iterator[RedisServer]:
    """A started :class:`RedisServer`, stopped and removed on exit."""
    server = RedisServer(**kwargs)  # type: ignore[arg-type]
    try:
        server.start()
        yield server
    finally:
        server.stop()


def require_ci_or_skip(reason: str) -> None:
    """Skip a test locally, but fail it in CI, where every service must be there."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI must provide it)")
    pytest.skip(reason)


# -- pytest fixtures (imported by tests/backends/redis/conftest.py and the conformance suite) ---------------------
@pytest.fixture
def redis_url() -> str:
    """The shared server's URL; skipped locally (failed in CI) when it does not answer."""
    if not shared_redis_available():
        require_ci_or_skip(f"no Redis answers at {SHARED_URL}")
    return SHARED_URL


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A unique key prefix on the shared server; its keys are deleted after the test."""
    prefix = unique_prefix()
    yield prefix
    delete_prefix(redis_url, prefix)


@pytest.fixture
def redis_server_factory() -> Iterator[Callable[..., RedisServer]]:
    """Start private servers with :class:`RedisServer` options; all are stopped after the test."""
    started: list[RedisServer] = []

    def start(**kwargs: object) -> RedisServer:
        server = RedisServer(**kwargs)  # type: ignore[arg-type]
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def redis_server(redis_server_factory: Callable[..., RedisServer]) -> RedisServer:
    """A private server without persistence."""
    return redis_server_factory()


@pytest.fixture(scope="session")
def redis_cluster_server() -> Iterator[RedisServer]:
    """A single-node Redis Cluster holding all 16384 slots, shared by the session's cluster tests."""
    with private_redis(cluster=True) as server:
        yield server
