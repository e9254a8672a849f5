"""Queue and task names, and the routes between them; `polling` comes first and is served
first. The one place that names them (the domain never does).

Each site (polling/sites.py) polls on a queue of its own: `default` keeps `polling`, so an
installation of one site is what it always was; any other site S polls on `polling.S`.
"""

from __future__ import annotations

from collections.abc import Iterable

from kombu import Queue

from polling.sites import DEFAULT_SITE

POLLING = "polling"
SCHEDULING = "scheduling"
DEFAULT = "default"
QUEUE_NAMES = (POLLING, SCHEDULING, DEFAULT)
QUEUES = tuple(Queue(name) for name in QUEUE_NAMES)
#: A site's queue is `polling.SITE` (but `default`'s is `polling`).
SITE_SEP = "."

POLL_BATCH_TASK = "pollctl.poll_batch"
RECONCILE_TASK = "pollctl.reconcile"
DIAGNOSE_TASK = "pollctl.diagnose"
CANARY_TASK = "pollctl.canary"
PROBE_TASK = "pollctl.probe"
CLEANUP_TASK = "pollctl.cleanup"
#: Commands the CLI has a worker of the gateway's site run (polling/replies.py).
POLL_NOW_TASK = "pollctl.poll_now"
WRITE_TASK = "pollctl.write"

# Poll batches, canaries and probes name their site's queue when sent; these routes are
# the default site's.
ROUTES = {
    POLL_BATCH_TASK: {"queue": POLLING},
    RECONCILE_TASK: {"queue": SCHEDULING},
    DIAGNOSE_TASK: {"queue": SCHEDULING},
    CANARY_TASK: {"queue": POLLING},
    PROBE_TASK: {"queue": POLLING},
    CLEANUP_TASK: {"queue": SCHEDULING},
    POLL_NOW_TASK: {"queue": POLLING},
    WRITE_TASK: {"queue": POLLING},
}


def site_queue(site: str) -> str:
    """The queue a site's polls, probes and canaries travel on."""
    return POLLING if site == DEFAULT_SITE else f"{POLLING}{SITE_SEP}{site}"


def queue_site(queue: str) -> str | None:
    """The site whose queue `queue` is (None for a queue that is no site's)."""
    if queue == POLLING:
        return DEFAULT_SITE
    head, sep, site = queue.partition(SITE_SEP)
    return site if head == POLLING and sep and site else None


def served_sites(queues: Iterable[str]) -> tuple[str, ...]:
    """The sites a worker consuming `queues` serves, in order."""
    return tuple(site for q in queues if (site := queue_site(q)) is not None)


def worker_queues(selected: Iterable[str], sites: Iterable[str]) -> list[str]:
    """What a worker started on `selected` queues (its `-Q`) consumes: a polling worker
    (one selecting `polling`) serves the queues of `sites` (POLLING_SITES) in its place,
    and any site queue it names itself; the other queues are kept as they are."""
    selected = list(selected)
    if POLLING not in selected:
        return selected
    wanted = [site_queue(site) for site in sites]
    out = [q for q in selected if q != POLLING and q not in wanted]
    return wanted + out
