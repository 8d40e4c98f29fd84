"""Settings with documented defaults, overridable by a settings module and ``ASYNCMQ_*`` variables.

Precedence, highest first: an ``ASYNCMQ_<NAME>`` environment variable, the module or class
named by ``ASYNCMQ_SETTINGS_MODULE``, the defaults below. List settings read from the
environment are comma separated (``ASYNCMQ_TASKS=app.tasks,app.jobs``) or a JSON array.

This module is the process-wide settings: ``settings.lease`` reads them and ``settings.lease = 60``
changes them, however ``settings`` was imported (``from asyncmq_otel import settings``, ``from
asyncmq_otel.settings import settings`` or ``import asyncmq_otel.settings as settings``): all three
are this one object.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import importlib
import json
import math
import os
import sys
import threading
import types
import typing
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from .backends.base import Backend
from .errors import ConfigError

__all__ = ["Settings", "SettingsWarning", "get_settings", "override_settings", "reload_settings", "settings"]

SETTINGS_MODULE_VARIABLE = "ASYNCMQ_SETTINGS_MODULE"
ENV_PREFIX = "ASYNCMQ_"
MIB = 1024 * 1024
NO_SIZE_LIMIT = 2**63 - 1
"""What ``max_payload_bytes=None`` / ``max_result_bytes=None`` ("no limit") is stored as: the backends
compare sizes with an int (Redis strings still stop at 512 MiB)."""
DEFAULT_METRICS_ADDR = "127.0.0.1:9464"
"""Where a worker serves ``/metrics`` unless told otherwise (``ASYNCMQ_METRICS_ADDR``, ``--metrics-addr``)."""

_NOT_SETTINGS = frozenset(
    {
        "APP",
        "BURST",
        "CONNECT_TIMEOUT",
        "EXPORTER_ADDR",
        "LOG_FORMAT",
        "MAX_RESTARTS",
        "METRICS_ADDR",
        "OTLP_ENDPOINT",
        "PROCESSES",
        "QUEUE_SAMPLER",
        "QUEUE_SAMPLE_INTERVAL",
        "SETTINGS_MODULE",
        "SPAN_NAME_STYLE",
        "TRACE_PROPAGATION",
        "WORKER_PROCESSES",
        "WORKER_SPEC",
    }
)
"""``ASYNCMQ_*`` variables the commands read that are not settings (never reported as misspelt)."""

# (name, smallest value); every number must also be finite
_INT_BOUNDS: tuple[tuple[str, int], ...] = (
    ("worker_concurrency", 1),
    ("rate_limit", 1),
    ("sandbox_processes", 1),
    ("max_payload_bytes", 1),
    ("max_result_bytes", 1),
    ("max_stalls", 0),
    ("max_interrupts", 0),
    ("event_queue_size", 1),
    ("keep_completed", 0),
    ("keep_failed", 0),
)
# (name, bound, whether the bound itself is allowed)
_FLOAT_BOUNDS: tuple[tuple[str, float, bool], ...] = (
    ("rate_interval", 0.0, False),
    ("sandbox_default_timeout", 0.0, False),
    ("sandbox_term_grace", 0.0, True),
    ("lease", 0.0, False),
    ("renew_interval", 0.0, False),
    ("reaper_interval", 0.0, False),
    ("block_timeout", 0.0, False),
    ("loop_block_limit", 0.0, False),
    ("shutdown_timeout", 0.0, True),
    ("heartbeat_interval", 0.0, False),
    ("keep_completed_age", 0.0, True),
    ("keep_failed_age", 0.0, True),
)
_OPTIONAL = frozenset({"rate_limit", "max_payload_bytes", "max_result_bytes"})


class SettingsWarning(UserWarning):
    """A settings module, class or ``ASYNCMQ_*`` variable names something that is not a setting."""


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
        max_payload_bytes: largest encoded job accepted at enqueue (``None``: no limit of ours).
        max_result_bytes: largest encoded result accepted at completion (``None``: no limit of ours).
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

    backend: str | Backend = "memory://"
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
    max_payload_bytes: int = MIB  # None is accepted and stored as NO_SIZE_LIMIT
    max_result_bytes: int = MIB  # as above
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
    on_duplicate: Literal["return", "raise"] = "return"
    on_data_loss: Literal["report", "halt"] = "report"
    publish_events: bool = True
    keep_completed: int = 1000
    keep_completed_age: float = 86_400.0
    keep_failed: int = 10_000
    keep_failed_age: float = 7 * 86_400.0
    redis_prefix: str = "asyncmq"

    def __post_init__(self) -> None:
        self._normalise()

    def _normalise(self) -> None:
        # None means "no limit" for the size limits; the backends compare with an int
        for name in ("max_payload_bytes", "max_result_bytes"):
            if getattr(self, name) is None:
                object.__setattr__(self, name, NO_SIZE_LIMIT)

    def validate(self) -> Settings:
        """Check every number (type, finite, range) and the combinations the reliability contract requires.

        Returns ``self``.

        Raises:
            ConfigError: naming the setting and the value it refused.

        """
        self._normalise()
        self._validate_numbers()
        self._validate_leases()
        for name, allowed in (("on_duplicate", ("return", "raise")), ("on_data_loss", ("report", "halt"))):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} must be one of {allowed}, not {getattr(self, name)!r}")
        return self

    def _validate_numbers(self) -> None:
        for name, smallest in _INT_BOUNDS:
            value = getattr(self, name)
            if value is None and name in _OPTIONAL:
                continue
            if not isinstance(value, int) or isinstance(value, bool):
                raise ConfigError(f"{name} must be an int, not {value!r}")
            if value < smallest:
                raise ConfigError(f"{name} must be >= {smallest}, not {value}")
        for name, bound, inclusive in _FLOAT_BOUNDS:
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool):
                raise ConfigError(f"{name} must be a number of seconds, not {value!r}")
            if not math.isfinite(value):
                raise ConfigError(f"{name} must be a finite number of seconds, not {value}")
            if value < bound or (value == bound and not inclusive):
                relation = ">=" if inclusive else ">"
                raise ConfigError(f"{name} must be {relation} {bound:g} seconds, not {value}")

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

    @classmethod
    def load(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from the defaults, the settings module and ``ASYNCMQ_*`` variables.

        While the settings module is being imported, a nested load (say a ``RedisBackend(...)``
        built in that module, which reads its defaults from the settings) does without the
        module: it cannot be read before it has finished loading.
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        source = env.get(SETTINGS_MODULE_VARIABLE, "").strip()
        if source and not _is_loading(source):
            with _loading(source):
                values.update(_values_from_object(_import_settings_source(source), source))
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            variable = ENV_PREFIX + f.name.upper()
            raw = env.get(variable)
            if raw is not None and f.name not in {"worker_on_startup", "worker_on_shutdown"}:
                values[f.name] = _parse_env(variable, raw, hints[f.name], optional=f.name in _OPTIONAL)
        _warn_misspelt_variables(env)
        return cls(**values).validate()


_state = threading.local()


def _is_loading(source: str) -> bool:
    """Whether this thread is importing the settings source ``source`` right now."""
    return source in getattr(_state, "sources", ())


def _loading_anything() -> bool:
    return bool(getattr(_state, "sources", ()))


@contextlib.contextmanager
def _loading(source: str) -> Iterator[None]:
    sources: list[str] = getattr(_state, "sources", [])
    _state.sources = sources
    sources.append(source)
    try:
        yield
    finally:
        sources.pop()


def _closest_setting(name: str) -> str | None:
    names = [f.name for f in dataclasses.fields(Settings)]
    found = difflib.get_close_matches(name.lower(), names, n=1, cutoff=0.8)
    return found[0] if found else None


def _warn_misspelt_variables(env: Mapping[str, str]) -> None:
    known = {f.name.upper() for f in dataclasses.fields(Settings)} | _NOT_SETTINGS
    for variable in env:
        if not variable.startswith(ENV_PREFIX):
            continue
        name = variable[len(ENV_PREFIX) :]
        if name in known:
            continue
        closest = _closest_setting(name)
        if closest is not None:
            warnings.warn(
                f"{variable} is not a setting and is ignored; did you mean {ENV_PREFIX}{closest.upper()}?",
                SettingsWarning,
                stacklevel=3,
            )


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


def _values_from_object(source: object, where: str) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(Settings)}
    _warn_misspelt_attributes(source, names, where)
    if isinstance(source, Settings):
        return {name: getattr(source, name) for name in names}
    if isinstance(source, type) and issubclass(source, Settings):
        instance = source()
        # a subclass without @dataclass keeps its values as class attributes, which the inherited
        # __init__ shadows with the defaults: the subclass's own attributes win
        own = [vars(klass) for klass in source.__mro__[: source.__mro__.index(Settings)]]
        return {
            name: next((space[name] for space in own if name in space), getattr(instance, name))
            for name in names
        }
    found: dict[str, Any] = {}
    for name in names:
        if hasattr(source, name):
            found[name] = getattr(source, name)
        elif isinstance(source, types.ModuleType) and hasattr(source, name.upper()):
            found[name] = getattr(source, name.upper())
    return found


def _warn_misspelt_attributes(source: object, names: set[str], where: str) -> None:
    """Warn about a name of the settings source that is close to a setting but is none (a typo)."""
    builtin = set(dir(Settings))
    for attribute in dir(source):
        if attribute.startswith("_") or attribute in builtin or attribute.lower() in names:
            continue
        value = getattr(source, attribute, None)
        if isinstance(value, type | types.ModuleType):
            continue  # imported classes and modules are not settings
        closest = _closest_setting(attribute)
        if closest is not None:
            warnings.warn(
                f"{where}: {attribute!r} is not a setting and is ignored; did you mean {closest!r}?",
                SettingsWarning,
                stacklevel=4,
            )


def _parse_env(variable: str, raw: str, hint: Any, *, optional: bool = False) -> Any:  # noqa: ANN401 - per type
    """Parse one environment value by the field's type; errors name the variable.

    ``none`` (or an empty value) is ``None`` for optional settings.
    """
    kind = hint
    if typing.get_origin(hint) in {typing.Union, types.UnionType}:
        members = typing.get_args(hint)
        optional = optional or type(None) in members
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
            provisional = _loading_anything()
            loaded = Settings.load()
            if provisional:
                # read while the settings module is importing (see Settings.load): not the final settings
                return loaded
            object.__setattr__(self, "_loaded", loaded)
        return loaded

    def _set(self, value: Settings | None) -> None:
        object.__setattr__(self, "_loaded", value)

    def __getattr__(self, name: str) -> Any:  # noqa: ANN401 - proxies every setting
        return getattr(self._get(), name)

    def __setattr__(self, name: str, value: object) -> None:
        loaded = self._get()
        setattr(loaded, name, value)
        loaded._normalise()  # noqa: SLF001 - None means no limit here too

    def __repr__(self) -> str:
        return repr(self._get())


_lazy = _LazySettings()


class _SettingsModule(types.ModuleType):
    """The type of this module: the names of the settings reach the loaded settings.

    A setting (or ``validate``, ``load``) read or assigned on the module is read or assigned on the
    loaded :class:`Settings`; every other name is the module's own.
    """

    def __getattr__(self, name: str) -> Any:  # noqa: ANN401 - proxies every setting
        if name not in _SETTINGS_NAMES:  # a tool probing the module must not load the settings
            raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")
        return getattr(_lazy, name)

    def __setattr__(self, name: str, value: object) -> None:
        if name in _SETTINGS_NAMES:
            setattr(_lazy, name, value)
        else:
            super().__setattr__(name, value)


_SETTINGS_NAMES = frozenset(name for name in dir(Settings) if not name.startswith("_")) | {
    field.name for field in dataclasses.fields(Settings)
}
sys.modules[__name__].__class__ = _SettingsModule
settings: Settings = cast("Settings", sys.modules[__name__])
"""The process-wide settings (loaded on first use): this module. Assign attributes to change them."""


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
