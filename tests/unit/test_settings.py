import textwrap

import pytest

from asyncmq_otel.errors import ConfigError
from asyncmq_otel.settings import Settings, override_settings, reload_settings, settings


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
