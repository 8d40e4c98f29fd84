"""The worker engine: claim loop, attempts, leases, hooks, the sandbox, flows and rate limits in a worker."""
