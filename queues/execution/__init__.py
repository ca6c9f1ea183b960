"""Running one attempt of a job: the runner, cancellation, timeouts, tracing and log context."""
