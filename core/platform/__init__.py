"""Runtime machinery every service stands on: tasks, metrics, health, scheduler,
outbox, spool, bus, leases, files, S3, circuit breaker, process roles."""
