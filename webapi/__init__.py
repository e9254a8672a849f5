"""`pollctl api`: health, fleet status and Prometheus metrics over HTTP, for monitors.

Every answer is read from shared state (the newest diagnostics run and the poll log in the
database, chains, heartbeats, queues and counters in Redis), so it is the same whichever
API process answers and however many workers poll."""
