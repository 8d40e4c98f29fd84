"""Settings with documented defaults, overridable by a settings module and ``ASYNCMQ_*`` variables.

Precedence, highest first: an ``ASYNCMQ_<NAME>`` environment variable, the module or class
named by ``ASYNCMQ_SETTINGS_MODULE``, the defaults below. List settings read from the
environment are comma separated (``ASYNCMQ_TASKS=app.tasks,app.jobs``) or a JSON array.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import os
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from .errors import ConfigError

__all__ = ["Settings", "get_settings", "override_settings", "reload_settings", "settings"]

SETTINGS_MODULE_VARIABLE = "ASYNCMQ_SETTINGS_MODULE"
ENV_PREFIX = "ASYNCMQ_"
MIB = 1024 * 1024


@dataclass
class Settings:
    """Every knob of the worker framework, with its default.

    Attributes:
        backend: ``"memory://"`` (embedded, one process), a ``redis://`` / ``rediss://`` URL, or a backend.
        tasks: packages whose modules ``autodiscover_tasks()`` imports, recursively.
        worker_concurrency: jobs one worker runs at once (an anyio ``CapacityLimiter``).
        rate_limit: at most this many job starts per ``rate_interval`` seconds (``None``: unlimited).
        rate_interval: the token bucket's refill period in seconds.
        worker_on_startup: hook(s) run before the first claim; a failure stops the worker.
        worker_on_shutdown: hook(s) run on the way out; failures are logged and swallowed.
        sandbox_enabled: run every handler in a warm child process.
        sandbox_default_timeout: the sandbox's timeout for tasks that have none.
        sandbox_processes: warm children kept by the sandbox pool.
        sandbox_term_grace: seconds between SIGTERM and SIGKILL for a sandboxed handler past its timeout.
        max_payload_bytes: largest encoded job accepted at enqueue.
        max_result_bytes: largest encoded result accepted at completion.
        lease: seconds a claim owns a job before the reaper may take it back (renewed while it runs).
        renew_interval: seconds between lease renewals (at most ``lease / 3``).
        reaper_interval: seconds between reaps of expired leases (``3 ×`` it must stay under ``lease``).
        max_stalls: lease losses a job survives; the next one dead-letters it as ``worker_lost``.
        max_interrupts: shutdown requeues a job survives; the next one dead-letters it as ``interrupted``.
        block_timeout: longest idle wait on the backend before a worker claims again.
        loop_block_limit: once the event loop has not ticked for this long, leases stop being renewed.
        shutdown_timeout: seconds in-flight jobs get to finish after a stop request.
        heartbeat_interval: seconds between worker registration heartbeats.
        worker_group: the consumer group name reported in telemetry.
        event_queue_size: bound of the FIFO feeding queued event listeners.
        on_duplicate: ``"return"`` the existing id for a duplicate ``job_id``, or ``"raise"``.
        publish_events: workers publish their lifecycle events for other processes (Redis:
            ``<prefix>:events``); off saves the serialisation when nobody subscribes.
        on_data_loss: when Redis lost a queue's data: ``"report"`` (event, metric, ERROR log, red
            health; keep consuming) or ``"halt"`` (also stop the worker, which raises ``DataLossDetected``).
        keep_completed: completed (and cancelled) jobs retained, by count.
        keep_completed_age: ... and by age in seconds.
        keep_failed: dead-lettered jobs retained, by count.
        keep_failed_age: ... and by age in seconds.
        redis_prefix: the key prefix of the Redis backend.

    """

    backend: Any = "memory://"
    tasks: list[str] = field(default_factory=list)
    worker_concurrency: int = 10
    rate_limit: int | None = None
    rate_interval: float = 1.0
    worker_on_startup: Any = None
    worker_on_shutdown: Any = None
    sandbox_enabled: bool = False
    sandbox_default_timeout: float = 60.0
    sandbox_processes: int = 2
    sandbox_term_grace: float = 5.0
    max_payload_bytes: int = MIB
    max_result_bytes: int = MIB
    lease: float = 30.0
    renew_interval: float = 10.0
    reaper_interval: float = 5.0
    max_stalls: int = 1
    max_interrupts: int = 5
    block_timeout: float = 5.0
    loop_block_limit: float = 60.0
    shutdown_timeout: float = 25.0
    heartbeat_interval: float = 5.0
    worker_group: str = "default"
    event_queue_size: int = 10_000
    on_duplicate: str = "return"
    on_data_loss: str = "report"
    publish_events: bool = True
    keep_completed: int = 1000
    keep_completed_age: float = 86_400.0
    keep_failed: int = 10_000
    keep_failed_age: float = 7 * 86_400.0
    redis_prefix: str = "asyncmq"

    def validate(self) -> Settings:
        """Check the combinations the reliability contract requires; return ``self``."""
        self._validate_worker()
        self._validate_leases()
        for name, allowed in (("on_duplicate", ("return", "raise")), ("on_data_loss", ("report", "halt"))):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} must be one of {allowed}, not {getattr(self, name)!r}")
        return self

    def _validate_worker(self) -> None:
        if self.worker_concurrency < 1:
            raise ConfigError(f"worker_concurrency must be >= 1, not {self.worker_concurrency}")
        if self.rate_limit is not None and self.rate_limit < 1:
            raise ConfigError(f"rate_limit must be >= 1 or None, not {self.rate_limit}")
        if self.rate_interval <= 0:
            raise ConfigError(f"rate_interval must be > 0, not {self.rate_interval}")
        if self.block_timeout <= 0:
            raise ConfigError(f"block_timeout must be > 0, not {self.block_timeout}")

    def _validate_leases(self) -> None:
        if self.renew_interval > self.lease / 3:
            raise ConfigError(
                f"renew_interval ({self.renew_interval}s) must be at most lease / 3 ({self.lease / 3:g}s)"
            )
        if 3 * self.reaper_interval >= self.lease:
            raise ConfigError(
                f"3 × reaper_interval ({self.reaper_interval}s) must stay under lease ({self.lease}s)"
            )
        if self.loop_block_limit < self.lease:
            raise ConfigError(f"loop_block_limit ({self.loop_block_limit}s) must be >= lease ({self.lease}s)")
        if self.max_stalls < 0 or self.max_interrupts < 0:
            raise ConfigError("max_stalls and max_interrupts must be >= 0")

    @classmethod
    def load(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from the defaults, the settings module and ``ASYNCMQ_*`` variables."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        source = env.get(SETTINGS_MODULE_VARIABLE, "").strip()
        if source:
            values.update(_values_from_object(_import_settings_source(source)))
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            raw = env.get(ENV_PREFIX + f.name.upper())
            if raw is not None and f.name not in {"worker_on_startup", "worker_on_shutdown"}:
                values[f.name] = _parse_env(ENV_PREFIX + f.name.upper(), raw, hints[f.name])
        return cls(**values).validate()


def _import_settings_source(source: str) -> object:
    """Import ``pkg.module``, ``pkg.module:Name`` or ``pkg.module.Name``."""
    module_name, _, attribute = source.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        parent, _, attribute = module_name.rpartition(".")
        if not parent:
            raise ConfigError(f"{SETTINGS_MODULE_VARIABLE}={source!r} cannot be imported: {exc}") from exc
        try:
            module = importlib.import_module(parent)
        except ImportError:
            raise ConfigError(f"{SETTINGS_MODULE_VARIABLE}={source!r} cannot be imported: {exc}") from exc
    if not attribute:
        return module
    try:
        target = getattr(module, attribute)
    except AttributeError:
        raise ConfigError(
            f"{SETTINGS_MODULE_VARIABLE}={source!r}: {module.__name__} has no {attribute!r}"
        ) from None
    return target() if isinstance(target, type) and not issubclass(target, Settings) else target


def _values_from_object(source: object) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(Settings)}
    if isinstance(source, Settings):
        return {name: getattr(source, name) for name in names}
    if isinstance(source, type) and issubclass(source, Settings):
        return {name: getattr(source(), name) for name in names}
    found: dict[str, Any] = {}
    for name in names:
        if hasattr(source, name):
            found[name] = getattr(source, name)
        elif isinstance(source, types.ModuleType) and hasattr(source, name.upper()):
            found[name] = getattr(source, name.upper())
    return found


def _parse_env(variable: str, raw: str, hint: Any) -> Any:  # noqa: ANN401 - one parser per field type
    """Parse one environment value by the field's type; errors name the variable."""
    kind = hint
    optional = False
    if typing.get_origin(hint) in {typing.Union, types.UnionType}:
        members = typing.get_args(hint)
        optional = type(None) in members
        kind = next(member for member in members if member is not type(None))
    text = raw.strip()
    if optional and text.lower() in {"", "none", "null"}:
        return None
    parser = _PARSERS.get(typing.get_origin(kind) or kind)
    if parser is None:
        return raw
    try:
        return parser(text)
    except ValueError as exc:
        raise ConfigError(f"{variable}={raw!r}: {exc}") from exc


def _parse_list(text: str) -> list[str]:
    if text.startswith("["):
        items = json.loads(text)
        if not isinstance(items, list):
            raise ValueError("expected a JSON array")
        return [str(item) for item in items]
    return [part.strip() for part in text.split(",") if part.strip()]


def _parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError("expected true or false")


_PARSERS: dict[Any, Callable[[str], Any]] = {list: _parse_list, bool: _parse_bool, int: int, float: float}


class _LazySettings:
    """Loads :class:`Settings` on first use, so the settings module may import this package."""

    __slots__ = ("_loaded",)

    def __init__(self) -> None:
        object.__setattr__(self, "_loaded", None)

    def _get(self) -> Settings:
        loaded = cast("Settings | None", object.__getattribute__(self, "_loaded"))
        if loaded is None:
            loaded = Settings.load()
            object.__setattr__(self, "_loaded", loaded)
        return loaded

    def _set(self, value: Settings | None) -> None:
        object.__setattr__(self, "_loaded", value)

    def __getattr__(self, name: str) -> Any:  # noqa: ANN401 - proxies every setting
        return getattr(self._get(), name)

    def __setattr__(self, name: str, value: object) -> None:
        setattr(self._get(), name, value)

    def __repr__(self) -> str:
        return repr(self._get())


_lazy = _LazySettings()
settings: Settings = cast("Settings", _lazy)
"""The process-wide settings (loaded on first use). Assign attributes to change them at run time."""


def get_settings() -> Settings:
    """The loaded :class:`Settings` instance behind ``settings``."""
    return _lazy._get()  # noqa: SLF001 - the proxy's own accessor


def reload_settings(new: Settings | None = None) -> Settings:
    """Re-read the environment and settings module (or install ``new``) and return the result."""
    _lazy._set(new if new is not None else Settings.load())  # noqa: SLF001 - the proxy's own setter
    return get_settings()


@contextlib.contextmanager
def override_settings(**changes: Any) -> Iterator[Settings]:  # noqa: ANN401 - any setting value
    """Temporarily change settings (for tests); the previous values come back on exit."""
    current = get_settings()
    replacement = dataclasses.replace(current, **changes).validate()
    _lazy._set(replacement)  # noqa: SLF001 - the proxy's own setter
    try:
        yield replacement
    finally:
        _lazy._set(current)  # noqa: SLF001 - as above
