"""A settings module for the precedence tests (``ASYNCMQ_SETTINGS_MODULE=tests.cli.settings_cli``)."""

worker_concurrency = 7
shutdown_timeout = 9.0
