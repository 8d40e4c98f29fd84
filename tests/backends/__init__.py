"""The backend port: its typed records, the conformance suites and the Redis backend."""
