"""The startup banner: written once to stderr, or as the ``worker.started`` JSON record.

```
asyncmq-otel 0.1.0 · worker 5f3c9a1e (pid 4121, host api-7)
  backend      redis://app:****@redis:6379/0  Redis 7.2.4 · prefix asyncmq · AOF on · noeviction
  queues       default, emails
  concurrency  50 · rate limit 100/1.0s · lease 30s · shutdown timeout 25s
  telemetry    metrics http://127.0.0.1:9464/metrics · otlp http://jaeger:4318 (traces)
  tasks        app.tasks.send_email, app.tasks.resize_image
```
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import IO, Any

from .._version import __version__
from ._output import Reporter, paint

__all__ = ["Banner"]


def _seconds(value: float) -> str:
    return f"{value:g}s"


@dataclass
class Banner:
    """The facts a long-running command prints once at startup (secrets already masked)."""

    role: str
    process_id: str
    pid: int
    host: str
    backend: str
    backend_details: str
    queues: Sequence[str] = ()
    concurrency: int | None = None
    rate_limit: int | None = None
    rate_interval: float | None = None
    lease: float | None = None
    shutdown_timeout: float | None = None
    metrics_url: str | None = None
    otlp_endpoint: str | None = None
    otlp_signals: Sequence[str] = ("traces",)
    tasks: Sequence[str] = ()
    warnings: Sequence[str] = field(default_factory=list)
    version: str = __version__

    def fields(self) -> dict[str, Any]:
        """The banner as the fields of the ``<role>.started`` record."""
        out = asdict(self)
        out["queues"] = list(self.queues)
        out["tasks"] = list(self.tasks)
        out["otlp_signals"] = list(self.otlp_signals) if self.otlp_endpoint else []
        out["warnings"] = list(self.warnings)
        return {key: value for key, value in out.items() if value is not None}

    def lines(self, stream: IO[str] | None = None) -> list[str]:
        """The banner as text lines, coloured only when ``stream`` takes colour."""
        title = paint(f"asyncmq-otel {self.version}", "cyan", stream, bold=True)
        head = f"{title} · {self.role} {self.process_id[:8]} (pid {self.pid}, host {self.host})"
        rows: list[tuple[str, str]] = [("backend", f"{self.backend}  {self.backend_details}")]
        rows.append(("queues", ", ".join(self.queues) if self.queues else "every queue the backend knows"))
        limits: list[str] = []
        if self.concurrency is not None:
            limits.append(f"concurrency {self.concurrency}")
        if self.rate_interval is not None:
            limits.append(
                f"rate limit {self.rate_limit}/{self.rate_interval:g}s"
                if self.rate_limit
                else "rate limit none"
            )
        if self.lease is not None:
            limits.append(f"lease {_seconds(self.lease)}")
        if self.shutdown_timeout is not None:
            limits.append(f"shutdown timeout {_seconds(self.shutdown_timeout)}")
        if limits:
            label, _, rest = limits[0].partition(" ")
            rows.append((label, " · ".join([rest, *limits[1:]])))
        metrics = f"metrics {self.metrics_url}" if self.metrics_url else "metrics off"
        otlp = (
            f"otlp {self.otlp_endpoint} ({', '.join(self.otlp_signals)})"
            if self.otlp_endpoint
            else "otlp off"
        )
        rows.append(("telemetry", f"{metrics} · {otlp}"))
        if self.tasks or self.role == "worker":
            rows.append(("tasks", ", ".join(self.tasks) if self.tasks else "none registered (pass --app)"))
        out = [head]
        out.extend(f"  {paint(label.ljust(12), 'blue', stream)} {value}" for label, value in rows)
        out.extend(
            f"  {paint('warning'.ljust(12), 'yellow', stream, bold=True)} {warning}"
            for warning in self.warnings
        )
        return out

    def write(self, reporter: Reporter) -> None:
        """Write the banner once: text lines, or the ``<role>.started`` JSON record."""
        if reporter.json_lines:
            reporter.say(
                f"{self.role}.started",
                f"asyncmq-otel {self.role} {self.process_id[:8]} started",
                **self.fields(),
            )
            return
        stream = reporter.stream
        stream.write("\n".join(self.lines(stream)) + "\n")
        stream.flush()
