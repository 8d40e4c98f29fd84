"""Child process of the OTLP wire test: providers built by ``instrument()`` from the OTEL_ environment.

It runs a worker over a few jobs, prints ``drained`` once the worker returned (its shutdown tail
flushes the providers), waits for a line on stdin, then forks a grandchild that instruments again
and runs one more job, and finally exits (``atexit`` flushes whatever is left).
"""

from __future__ import annotations

import os
import sys

import anyio
from opentelemetry import trace

from asyncmq_otel import telemetry
from asyncmq_otel.backends.memory import InMemoryBackend
from asyncmq_otel.queues import Queue
from asyncmq_otel.settings import override_settings
from asyncmq_otel.tasks import task
from asyncmq_otel.workers import Worker

QUEUE = "otlp-wire"


class WireError(Exception):
    """Raised by the first attempt."""


@task(QUEUE, name="wire.flaky", retries=1, backoff=0.01)
async def flaky(key: str) -> str:
    seen = flaky.__dict__.setdefault("seen", set())
    if key not in seen:
        seen.add(key)
        raise WireError(key)
    return key


async def run_jobs(prefix: str) -> None:
    backend = InMemoryBackend()
    queue = Queue(QUEUE, backend=backend)
    with trace.get_tracer("wire.producer").start_as_current_span("producer request"):
        await queue.add("wire.flaky", args=[f"{prefix}-1"], retries=1, backoff=0.01)
    with override_settings(heartbeat_interval=0.05, block_timeout=0.2):
        await Worker(QUEUE, backend=backend, burst=True).run()


def main() -> None:
    telemetry.instrument(otlp_metrics=True, logs_exporter="otlp", metrics_addr="", log_level="DEBUG")
    anyio.run(run_jobs, "parent")
    print("drained", flush=True)
    sys.stdin.readline()
    pid = os.fork()
    if pid == 0:
        telemetry.instrument(otlp_metrics=True, logs_exporter="otlp", metrics_addr="", log_level="DEBUG")
        anyio.run(run_jobs, "forked")
        telemetry.uninstrument()
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    print(f"forked child exited {os.waitstatus_to_exitcode(status)}", flush=True)


if __name__ == "__main__":
    main()
