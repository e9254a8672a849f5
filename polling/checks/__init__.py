"""Independent health checks; `polling.diagnostics` runs them and applies their fixes."""
