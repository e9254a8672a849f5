"""Queue and task names, and the routes between them; `polling` comes first and is served
first. The one place that names them (the domain never does)."""

from __future__ import annotations

from kombu import Queue

POLLING = "polling"
SCHEDULING = "scheduling"
DEFAULT = "default"
QUEUE_NAMES = (POLLING, SCHEDULING, DEFAULT)
QUEUES = tuple(Queue(name) for name in QUEUE_NAMES)

POLL_BATCH_TASK = "pollctl.poll_batch"
RECONCILE_TASK = "pollctl.reconcile"
DIAGNOSE_TASK = "pollctl.diagnose"
CANARY_TASK = "pollctl.canary"
PROBE_TASK = "pollctl.probe"
CLEANUP_TASK = "pollctl.cleanup"

ROUTES = {
    POLL_BATCH_TASK: {"queue": POLLING},
    RECONCILE_TASK: {"queue": SCHEDULING},
    DIAGNOSE_TASK: {"queue": SCHEDULING},
    CANARY_TASK: {"queue": POLLING},
    PROBE_TASK: {"queue": POLLING},
    CLEANUP_TASK: {"queue": SCHEDULING},
}
