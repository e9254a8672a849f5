"""`make bench`: pollctl as deployed, the naive Celery setup, and an asyncio floor, on the
same simulated fleet; see `python -m bench --help`."""
