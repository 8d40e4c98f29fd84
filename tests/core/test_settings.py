import math
import textwrap
import warnings

import anyio
import pytest

from asyncmq_otel.errors import ConfigError
from asyncmq_otel.settings import (
    Settings,
    SettingsWarning,
    get_settings,
    override_settings,
    reload_settings,
    settings,
)


def test_documented_defaults():
    s = Settings()
    assert s.backend == "memory://"
    assert s.worker_concurrency == 10
    assert s.rate_limit is None
    assert s.rate_interval == 1.0
    assert s.max_payload_bytes == 1024 * 1024
    assert s.tasks == []
    assert s.validate() is s


def test_env_lists_are_split_on_commas_or_json_never_into_characters():
    s = Settings.load({"ASYNCMQ_TASKS": "app.tasks, app.jobs"})
    assert s.tasks == ["app.tasks", "app.jobs"]
    assert Settings.load({"ASYNCMQ_TASKS": '["one.tasks"]'}).tasks == ["one.tasks"]
    assert Settings.load({"ASYNCMQ_TASKS": "single"}).tasks == ["single"]


def test_env_scalars_are_typed_and_errors_name_the_variable():
    s = Settings.load(
        {
            "ASYNCMQ_WORKER_CONCURRENCY": "7",
            "ASYNCMQ_RATE_LIMIT": "none",
            "ASYNCMQ_SANDBOX_ENABLED": "yes",
            "ASYNCMQ_RATE_INTERVAL": "0.5",
        }
    )
    assert (s.worker_concurrency, s.rate_limit, s.sandbox_enabled, s.rate_interval) == (7, None, True, 0.5)
    with pytest.raises(ConfigError, match="ASYNCMQ_WORKER_CONCURRENCY"):
        Settings.load({"ASYNCMQ_WORKER_CONCURRENCY": "many"})


def _write_module(tmp_path, name, body):
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(body))


def test_settings_module_with_module_level_names_and_hooks(tmp_path, monkeypatch):
    _write_module(
        tmp_path,
        "mysettings_mod",
        """
        async def on_startup(backend, worker_id, queue):
            pass

        def on_shutdown(backend, worker_id, queue):
            pass

        worker_concurrency = 4
        tasks = ["myapp.tasks"]
        worker_on_startup = [on_startup]
        worker_on_shutdown = on_shutdown
        """,
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("ASYNCMQ_SETTINGS_MODULE", "mysettings_mod")
    monkeypatch.setenv("ASYNCMQ_RATE_LIMIT", "9")  # the environment wins over the module
    s = reload_settings()
    assert s.worker_concurrency == 4
    assert s.tasks == ["myapp.tasks"]
    assert s.worker_on_startup[0].__name__ == "on_startup"
    assert callable(s.worker_on_shutdown)
    assert s.rate_limit == 9
    assert settings.worker_concurrency == 4


def test_settings_class_subclassing_settings(tmp_path, monkeypatch):
    _write_module(
        tmp_path,
        "mysettings_cls",
        """
        from dataclasses import dataclass
        from asyncmq_otel.settings import Settings

        @dataclass
        class Production(Settings):
            worker_concurrency: int = 32
            backend: str = "memory://"
        """,
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("ASYNCMQ_SETTINGS_MODULE", "mysettings_cls.Production")
    assert reload_settings().worker_concurrency == 32
    monkeypatch.setenv("ASYNCMQ_SETTINGS_MODULE", "mysettings_cls:Production")
    assert reload_settings().worker_concurrency == 32


def test_bad_settings_module_is_a_config_error(monkeypatch):
    monkeypatch.setenv("ASYNCMQ_SETTINGS_MODULE", "no_such_module_xyz")
    with pytest.raises(ConfigError, match="cannot be imported"):
        Settings.load()


def test_invalid_combinations_are_refused():
    with pytest.raises(ConfigError, match="renew_interval"):
        Settings(lease=3, renew_interval=2).validate()
    with pytest.raises(ConfigError, match="reaper_interval"):
        Settings(lease=3, renew_interval=1, reaper_interval=1, loop_block_limit=3).validate()
    with pytest.raises(ConfigError, match="loop_block_limit"):
        Settings(lease=30, loop_block_limit=10).validate()


def test_override_settings_restores():
    before = settings.worker_concurrency
    with override_settings(worker_concurrency=2):
        assert settings.worker_concurrency == 2
    assert settings.worker_concurrency == before
    settings.worker_concurrency = 5  # plain assignment works like AsyncMQ's settings object
    assert settings.worker_concurrency == 5


# -- every number is checked: type, finite, range ---------------------------------------------------
_NUMBERS = [
    ("worker_concurrency", 0),
    ("rate_limit", 0),
    ("sandbox_processes", 0),
    ("max_payload_bytes", 0),
    ("max_result_bytes", -1),
    ("max_stalls", -1),
    ("max_interrupts", -1),
    ("event_queue_size", 0),
    ("keep_completed", -1),
    ("keep_failed", -1),
    ("rate_interval", 0.0),
    ("sandbox_default_timeout", 0.0),
    ("sandbox_term_grace", -1.0),
    ("lease", 0.0),
    ("renew_interval", 0.0),
    ("reaper_interval", 0.0),
    ("block_timeout", 0.0),
    ("loop_block_limit", 0.0),
    ("shutdown_timeout", -1.0),
    ("heartbeat_interval", 0.0),
    ("keep_completed_age", -1.0),
    ("keep_failed_age", -1.0),
]


@pytest.mark.parametrize(("name", "out_of_range"), _NUMBERS)
@pytest.mark.parametrize("kind", ["nan", "inf", "out of range", "wrong type"])
def test_every_number_is_finite_typed_and_in_range(name: str, out_of_range: float, kind: str) -> None:
    value = {"nan": math.nan, "inf": math.inf, "out of range": out_of_range, "wrong type": "5"}[kind]
    with pytest.raises(ConfigError, match=name):
        Settings(**{name: value}).validate()


@pytest.mark.parametrize("variable", ["ASYNCMQ_LEASE", "ASYNCMQ_BLOCK_TIMEOUT", "ASYNCMQ_HEARTBEAT_INTERVAL"])
@pytest.mark.parametrize("raw", ["nan", "inf", "-inf", "-1"])
def test_nan_inf_and_negative_seconds_in_the_environment_are_config_errors(variable: str, raw: str) -> None:
    with pytest.raises(ConfigError, match=variable.removeprefix("ASYNCMQ_").lower()):
        Settings.load({variable: raw})


def test_size_limits_of_none_mean_no_limit() -> None:
    assert Settings(max_payload_bytes=None).validate().max_payload_bytes >= 2**62  # type: ignore[arg-type]
    assert Settings.load({"ASYNCMQ_MAX_RESULT_BYTES": "none"}).max_result_bytes >= 2**62
    with override_settings(max_payload_bytes=None):
        assert settings.max_payload_bytes >= 2**62
    settings.max_payload_bytes = None  # type: ignore[assignment]
    assert settings.max_payload_bytes >= 2**62


async def _add_big_job() -> str:
    from asyncmq_otel import Queue
    from asyncmq_otel.backends._default import memory_backend

    return await Queue("big", backend=memory_backend()).add("t.big", ["x" * (2 * 1024 * 1024)])


def test_a_payload_over_the_default_limit_is_accepted_with_no_limit() -> None:
    with override_settings(max_payload_bytes=None):
        assert anyio.run(_add_big_job)


# -- settings modules and classes ----------------------------------------------------------------------
def test_settings_class_holding_a_backend_that_reads_the_settings(tmp_path, monkeypatch):
    # building the backend reads the settings while the settings module is still importing
    _write_module(
        tmp_path,
        "mysettings_backend_cls",
        """
        from asyncmq_otel.backends.redis import RedisBackend
        from asyncmq_otel.settings import Settings

        class AppSettings(Settings):
            backend = RedisBackend("redis://127.0.0.1:6379/0", prefix="mysettings")
            worker_concurrency = 3
        """,
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("ASYNCMQ_SETTINGS_MODULE", "mysettings_backend_cls.AppSettings")
    monkeypatch.setenv("ASYNCMQ_KEEP_FAILED", "77")
    settings._lazy._set(None)  # a first use of the settings in this process (conftest restores them)
    loaded = get_settings()
    assert type(loaded.backend).__name__ == "RedisBackend"
    assert loaded.backend.prefix == "mysettings"
    # the backend built during the import took its defaults from the environment and the defaults
    assert loaded.backend.keep_failed == 77
    assert loaded.worker_concurrency == 3  # class attributes of a subclass without @dataclass count
    assert settings.worker_concurrency == 3


def test_a_misspelt_setting_in_a_module_or_class_warns_with_the_closest_name(tmp_path, monkeypatch):
    _write_module(
        tmp_path,
        "mysettings_typo",
        """
        import os
        from asyncmq_otel.settings import Settings

        worker_concurency = 3
        SHUTDOWN_TIMEOUT = 4.0
        unrelated_helper = os.path.join

        class Typo(Settings):
            lese = 40.0
        """,
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("ASYNCMQ_SETTINGS_MODULE", "mysettings_typo")
    with pytest.warns(
        SettingsWarning, match="'worker_concurency' is not a setting.*did you mean 'worker_concurrency'"
    ):
        loaded = reload_settings()
    assert (loaded.worker_concurrency, loaded.shutdown_timeout) == (10, 4.0)
    monkeypatch.setenv("ASYNCMQ_SETTINGS_MODULE", "mysettings_typo.Typo")
    with pytest.warns(SettingsWarning, match="'lese' is not a setting.*did you mean 'lease'"):
        reload_settings()


def test_a_misspelt_variable_warns_with_the_closest_name():
    with pytest.warns(
        SettingsWarning, match="ASYNCMQ_WORKER_CONCURENCY.*did you mean ASYNCMQ_WORKER_CONCURRENCY"
    ):
        Settings.load({"ASYNCMQ_WORKER_CONCURENCY": "3"})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # the commands' own variables and names nowhere near a setting are not reported
        Settings.load({"ASYNCMQ_METRICS_ADDR": ":9000", "ASYNCMQ_APP": "x", "ASYNCMQ_ZZZ": "1"})


def test_the_settings_module_is_the_settings_however_it_is_imported():
    import asyncmq_otel
    import asyncmq_otel.settings as settings_module
    from asyncmq_otel import settings as from_package

    assert settings_module is from_package is settings is asyncmq_otel.settings
    assert settings_module.Settings is Settings  # the module's own names stay its own
    with override_settings(worker_concurrency=4):
        assert settings.worker_concurrency == 4
        settings.worker_concurrency = 5  # an assignment changes the loaded settings, not a module global
        assert get_settings().worker_concurrency == 5
        assert "worker_concurrency" not in vars(settings_module)
        assert settings.validate() is get_settings()
    with pytest.raises(AttributeError):
        _ = settings.not_a_setting  # a probe of the module does not load the settings
