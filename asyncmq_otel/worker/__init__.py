"""The worker engine, under the AsyncMQ-compatible surface of ``asyncmq_otel.workers``.

A worker's life (``worker``), its claim loop (``claim_loop``), one attempt of a job (``attempt``), the
lease keeper (``leases``), the event relay (``relay``), progress writes (``progress``), what a worker
holds while it runs (``context``) and the supervisor of ``--processes N`` (``supervisor``).
"""
