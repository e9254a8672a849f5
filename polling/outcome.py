"""What became of a chain step: one vocabulary from the Lua reply that begins it to the
row it leaves in the poll log."""

from __future__ import annotations

from enum import StrEnum


class Outcome(StrEnum):
    # Begun: the step holds its slot (claimed in Redis) and polls it.
    DUE = "due"
    # Recorded in the poll log (these four are the `outcome` column's values).
    OK = "ok"
    FAILED = "failed"
    SKIPPED = "skipped"
    MISSED = "missed"
    # Recorded as missed: a step of a replaced chain claimed this slot and may have died
    # holding it.
    FOREIGN = "foreign"
    # Dropped, nothing recorded, the chain not advanced by this step.
    STALE = "stale"  # its token was retired or replaced
    MOVED = "moved"  # its chain is already past this slot (a late copy)
    DUPLICATE = "duplicate"  # another copy of this very step holds the slot
    RETIRED = "retired"  # its gateway is stopped, disabled or deleted: the chain ends here
    UNKNOWN = "unknown"  # its gateway was never read here and the database is down
    # Nothing recorded, the chain moved to the slot in progress: the interval changed
    # since the step was sent, so its slot is not on the gateway's grid any more.
    REALIGNED = "realigned"
    # Nothing recorded, the step goes on unchanged to its gateway's site: the gateway moved
    # to another site since the step was sent (a worker polls only the sites it reaches).
    FORWARDED = "forwarded"

    @property
    def recorded(self) -> bool:
        """Whether a step that ends so writes its own poll-log row."""
        return self in RECORDED


RECORDED = frozenset({Outcome.OK, Outcome.FAILED, Outcome.SKIPPED, Outcome.MISSED})


class PollKind(StrEnum):
    """The poll log's `kind`: a chain's slot, a poll an operator asked for, or recovery's
    probe of a gateway its failures disabled (outside slot accounting, like manual)."""

    SCHEDULED = "scheduled"
    MANUAL = "manual"
    PROBE = "probe"
