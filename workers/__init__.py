"""The Celery side of pollctl: the app, its queues, the beat guard and thin tasks."""
