"""pollctl's domain: gateways, register maps, slots, Modbus I/O and storage.

Nothing in this package imports Celery; `workers/` wraps it in tasks.
"""
