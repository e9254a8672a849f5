"""Queue names and declarations; `polling` comes first and is served first."""

from __future__ import annotations

from kombu import Queue

POLLING = "polling"
SCHEDULING = "scheduling"
DEFAULT = "default"

QUEUES = (Queue(POLLING), Queue(SCHEDULING), Queue(DEFAULT))

ROUTES = {
    "pollctl.poll_batch": {"queue": POLLING},
    "pollctl.reconcile": {"queue": SCHEDULING},
    "pollctl.diagnose": {"queue": SCHEDULING},
    "pollctl.canary": {"queue": POLLING},
}
