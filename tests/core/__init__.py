"""Core modules: jobs, events, clock, settings, enqueue options, admin reads, the pytest plugin."""
