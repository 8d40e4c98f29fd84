"""The demo: its tasks (``app``), its run (``run``: producer, worker, waves) and its report (``report``).

``asyncmq-otel demo`` (``asyncmq_otel.cli.demo``) is the command in front of it; ``asyncmq-otel worker demo
--app asyncmq_otel.demo.app`` serves its queue from another process.
"""
