"""Where a batch of poll records goes: the database, in one transaction; the Redis buffer
while the database is unreachable; and when the database refuses the batch (a gateway
deleted while its poll ran, a bad buffered entry), each entry on its own, so one entry's
fault never costs the others their records: an entry refused alone is kept aside as a dead
letter with the reason (`pollctl buffer show`). What is saved is counted for `/metrics`
wherever it goes (`counters`), and then published to the live feed (`live`). The flush also
saves the request plans learnt while the database was down (`planstore.to_json`)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from sqlalchemy.exc import DBAPIError

from . import configcache, counters, live, planstore
from .buffer import Refusals
from .db import is_unreachable
from .learnedplan import LearnedPlan
from .records import Entry, from_json, to_json, write
from .runtime import Runtime

log = logging.getLogger(__name__)

#: Gateway id -> why a failed poll in the write disabled it.
Disabled = dict[int, str]


def save(rt: Runtime, entries: Sequence[Entry]) -> Disabled:
    """Write `entries` (see the module); returns the disable reason of every gateway a
    failed poll pushed over the failure threshold (a buffered entry's is known only when
    flushed)."""
    if not entries:
        return {}
    counters.count_records(rt.redis, rt.keys, entries)
    disabled = _save(rt, entries)
    # After the record, wherever it went (database or buffer): the page shows what was polled.
    live.publish(rt.redis, rt.keys, rt.live, entries, configcache.names(rt))
    return disabled


def _save(rt: Runtime, entries: Sequence[Entry]) -> Disabled:
    try:
        disabled, refused = _write(rt, entries)
    except DBAPIError as exc:  # only when unreachable: the rest is refused per entry
        _keep_for_later(rt, entries, exc)
        return {}
    if refused:
        letters = [(to_json(entries[i]), why) for i, why in sorted(refused.items())]
        rt.buffer.put_aside(letters, rt.clock())
        log.error(
            "%s poll records refused by the database, kept aside (pollctl buffer show): %s",
            len(refused),
            letters[0][1],
        )
    return disabled


def flush(rt: Runtime) -> int:
    """Write what the buffer holds, oldest first, putting aside entries the database
    refuses; raises only while the database is unreachable. Returns the entries written."""
    if not rt.buffer.pending():
        return 0
    done = rt.buffer.flush(lambda batch: _write_buffered(rt, batch), rt.clock)
    if done.written:
        rt.bump_config()  # a buffered failure may have disabled a gateway
        log.warning("flushed %s buffered records to the database", done.written)
    if done.dead:
        log.error(
            "%s buffered records refused by the database, kept aside: pollctl buffer show",
            done.dead,
        )
    return done.written


def _write_buffered(rt: Runtime, batch: list[dict]) -> Refusals:
    entries: dict[int, Entry] = {}
    plans: dict[int, tuple[int, LearnedPlan]] = {}
    refused: Refusals = {}
    for index, item in enumerate(batch):
        try:
            if item.get("type") == "plan":
                plans[index] = planstore.from_json(item)
            else:
                entries[index] = from_json(item)
        except (KeyError, TypeError, ValueError) as exc:
            refused[index] = f"not a poll record: {_one_line(exc)}"
    order = list(entries)
    _, refused_now = _write(rt, list(entries.values()))
    refused |= {order[i]: why for i, why in refused_now.items()}
    return refused | _write_plans(rt, plans)


def _write_plans(rt: Runtime, plans: dict[int, tuple[int, LearnedPlan]]) -> Refusals:
    """Buffered plans, oldest first, each skipped if a newer one was saved meanwhile; a
    plan the database refuses is put aside. Raises only when it is unreachable."""
    refused: Refusals = {}
    for index, plan in plans.items():
        try:
            with rt.sessions() as session, session.begin():
                planstore.save(session, [plan], newer_only=True)
        except Exception as exc:  # a plan's own fault puts it aside
            _raise_if_unreachable(exc)
            refused[index] = _one_line(exc)
    return refused


def _write(rt: Runtime, entries: Sequence[Entry]) -> tuple[Disabled, Refusals]:
    """All in one transaction; if the database refuses that, each entry in its own.
    Raises only when the database is unreachable."""
    try:
        return _write_in_one(rt, entries), {}
    except Exception as exc:  # which entry is at fault is found below
        _raise_if_unreachable(exc)
    disabled: Disabled = {}
    refused: Refusals = {}
    for index, entry in enumerate(entries):
        try:
            disabled |= _write_in_one(rt, [entry])
        except Exception as exc:  # an entry's own fault puts it aside
            _raise_if_unreachable(exc)
            refused[index] = _one_line(exc)
    return disabled, refused


def _write_in_one(rt: Runtime, entries: Sequence[Entry]) -> Disabled:
    if not entries:
        return {}
    with rt.sessions() as session, session.begin():
        return write(
            session,
            entries,
            failure_threshold=rt.settings.failure_threshold,
            recovery_first=rt.settings.recovery_first,
        )


def _keep_for_later(rt: Runtime, entries: Sequence[Entry], exc: DBAPIError) -> None:
    """Into the buffer; any entry written before the database went away is written again
    by the flush, and the unique keys absorb it."""
    kept = sum(rt.buffer.push(to_json(entry), rt.clock()) for entry in entries)
    if kept:
        log.warning("database unreachable (%s): %s records buffered in Redis", _one_line(exc), kept)
    if kept < len(entries):
        log.error(
            "database unreachable and buffer full: %s records lost (counted)", len(entries) - kept
        )


def _raise_if_unreachable(exc: Exception) -> None:
    if isinstance(exc, DBAPIError) and is_unreachable(exc):
        raise exc


def _one_line(exc: BaseException) -> str:
    cause: BaseException = exc.orig if isinstance(exc, DBAPIError) and exc.orig else exc
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[0] if text else ''}"
