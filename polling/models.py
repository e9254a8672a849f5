"""Database tables: gateways and points (configuration), poll log and readings (record),
diagnostic runs and alerts (what operators act on)."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# SQLite only auto-increments INTEGER PRIMARY KEY.
BigId = BigInteger().with_variant(Integer, "sqlite")


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on every backend (SQLite keeps no zone, so it stores naive UTC)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class GatewayRow(Base):
    __tablename__ = "gateways"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    host: Mapped[str] = mapped_column(String(255))
    port: Mapped[int] = mapped_column(Integer)
    device_id: Mapped[int] = mapped_column(Integer)
    interval_s: Mapped[float] = mapped_column(Float)
    timeout_s: Mapped[float] = mapped_column(Float)
    #: As configured (the YAML file), or cleared by the failure threshold.
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    #: The network it lives on (polling/sites.py): its polls go to that site's queue.
    site: Mapped[str] = mapped_column(String(64), default="default", server_default="default")
    #: tcp, rtu-over-tcp, udp, tls or serial (polling/transports.py), and its options (TLS
    #: paths; a serial line's device and settings); port is 0 for serial.
    transport: Mapped[str] = mapped_column(String(16), default="tcp", server_default="tcp")
    transport_options: Mapped[dict | None] = mapped_column(JSON)
    disabled_reason: Mapped[str | None] = mapped_column(Text)
    #: Writes one holding register per request (function 6), for devices without function 16.
    single_register_write: Mapped[bool] = mapped_column(
        Boolean, default=False, server_default=text("false")
    )
    #: Writes a coil as several coils of one (function 15), for devices without function 5.
    multiple_coil_write: Mapped[bool] = mapped_column(
        Boolean, default=False, server_default=text("false")
    )
    #: The operator's intent: `pollctl start` sets it, `pollctl stop` clears it.
    polling: Mapped[bool] = mapped_column(Boolean, default=False)
    polling_since: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: Mirror of the live chain token in Redis, for audits after Redis loses it.
    chain_token: Mapped[str | None] = mapped_column(String(64))
    consecutive_failures: Mapped[int] = mapped_column(Integer, default=0)
    #: When the newest successful poll finished (kept by the batch write).
    last_ok_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: Set while the failure threshold keeps it disabled: when recovery probes it next
    #: (a circuit breaker's half-open state), and the delay that doubles after each failed
    #: probe. An operator's `enabled: false` or `pollctl stop` clears it: never probed.
    next_probe_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    probe_delay_s: Mapped[float | None] = mapped_column(Float)
    #: Poll records the database's unique key refused because their slot already held a
    #: different record (a second poll of the slot, or a poll of a slot a restart wrote as
    #: missed). The key was the last guard; anything but 0 is a bug to report.
    slot_conflicts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    points: Mapped[list[PointRow]] = relationship(
        back_populates="gateway", cascade="all, delete-orphan", order_by="PointRow.id"
    )


class PointRow(Base):
    __tablename__ = "points"
    __table_args__ = (UniqueConstraint("gateway_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    gateway_id: Mapped[int] = mapped_column(ForeignKey("gateways.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    register: Mapped[str] = mapped_column(String(16))
    address: Mapped[int] = mapped_column(Integer)
    type: Mapped[str] = mapped_column(String(16))
    word_order: Mapped[str] = mapped_column(String(4))
    count: Mapped[int | None] = mapped_column(Integer)
    scale: Mapped[float] = mapped_column(Float, default=1.0)
    offset: Mapped[float] = mapped_column(Float, default=0.0)
    unit: Mapped[str | None] = mapped_column(String(64))
    device_id: Mapped[int | None] = mapped_column(Integer)
    #: Data rules (alerts): a value below `min` or above `max`, or the same for `flatline`
    #: polls in a row.
    min: Mapped[float | None] = mapped_column(Float)
    max: Mapped[float | None] = mapped_column(Float)
    flatline: Mapped[int | None] = mapped_column(Integer)

    gateway: Mapped[GatewayRow] = relationship(back_populates="points")


class PollLog(Base):
    """One row per slot of a gateway (kind 'scheduled') or per manual poll ('manual'); a
    long run of missed slots is one row standing for `slots` of them.

    On PostgreSQL this table and `readings` are partitioned by day of `slot_at`
    (polling/partitions.py, migration 0007): their primary key there is (id, slot_at), as a
    partitioned table's keys must hold its partition key; `id` alone stays unique (one
    sequence), which is all the ORM needs."""

    __tablename__ = "poll_log"
    __table_args__ = (
        UniqueConstraint("gateway_id", "kind", "slot_at", name="uq_poll_log_slot"),
        Index("ix_poll_log_gateway_slot", "gateway_id", "slot_at"),
        # Health windows and retention look at recent slots of the whole fleet.
        Index("ix_poll_log_slot", "slot_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    gateway_id: Mapped[int] = mapped_column(ForeignKey("gateways.id", ondelete="CASCADE"))
    slot_at: Mapped[datetime] = mapped_column(UTCDateTime)
    kind: Mapped[str] = mapped_column(String(16), default="scheduled")
    #: ok | failed | skipped | missed
    outcome: Mapped[str] = mapped_column(String(16))
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    duration_ms: Mapped[float | None] = mapped_column(Float)
    error: Mapped[str | None] = mapped_column(Text)
    #: Slots this row stands for: 1, or a missed range from `slot_at` to `last_slot_at`.
    slots: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    last_slot_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Reading(Base):
    """A decoded value. Keyed by point name, so readings outlive a point's removal."""

    __tablename__ = "readings"
    __table_args__ = (
        UniqueConstraint("gateway_id", "point", "kind", "slot_at", name="uq_readings_slot"),
        Index("ix_readings_gateway_point_slot", "gateway_id", "point", "slot_at"),
        # Retention and `pollctl readings --since` read readings by time.
        Index("ix_readings_slot", "slot_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    gateway_id: Mapped[int] = mapped_column(ForeignKey("gateways.id", ondelete="CASCADE"))
    point: Mapped[str] = mapped_column(String(200))
    slot_at: Mapped[datetime] = mapped_column(UTCDateTime)
    kind: Mapped[str] = mapped_column(String(16), default="scheduled")
    read_at: Mapped[datetime] = mapped_column(UTCDateTime)
    #: Numeric value (bools as 0/1); NULL for strings.
    value: Mapped[float | None] = mapped_column(Float)
    #: Strings, and integers a double cannot hold exactly.
    text: Mapped[str | None] = mapped_column(Text)
    unit: Mapped[str | None] = mapped_column(String(64))


class DiagnosticRun(Base):
    """What a diagnostics run found and repaired (the beat task's record of its fixes)."""

    __tablename__ = "diagnostic_runs"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    ran_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    #: healthy | degraded | critical
    health: Mapped[str] = mapped_column(String(16))
    #: The checks that were not healthy: component -> message.
    findings: Mapped[dict] = mapped_column(JSON)
    #: Repairs applied: component -> list of actions.
    repairs: Mapped[dict] = mapped_column(JSON)
    #: Every check: component -> {"status", "message"}; None on a reconcile's record of its
    #: repairs (the health API answers from the newest run that has them).
    checks: Mapped[dict | None] = mapped_column(JSON(none_as_null=True), nullable=True)


class AlertRow(Base):
    """An alert: one finding of a rule about a subject, from NEW through ACKED to RESOLVED.
    At most one open (new or acked) alert per (rule, subject): the partial unique index."""

    __tablename__ = "alerts"
    __table_args__ = (
        Index(
            "uq_alerts_open",
            "rule",
            "subject",
            unique=True,
            postgresql_where=text("state <> 'resolved'"),
            sqlite_where=text("state <> 'resolved'"),
        ),
        Index("ix_alerts_state", "state"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    rule: Mapped[str] = mapped_column(String(64))
    #: What it is about: a gateway's name, `gateway/point`, `queue:NAME`, `fleet`, ...
    subject: Mapped[str] = mapped_column(String(500))
    #: The gateway it concerns, if any (colour: RED while a critical one is open).
    gateway_id: Mapped[int | None] = mapped_column(
        ForeignKey("gateways.id", ondelete="SET NULL"), index=True
    )
    #: warning | critical
    severity: Mapped[str] = mapped_column(String(16))
    #: new | acked | resolved
    state: Mapped[str] = mapped_column(String(16), default="new")
    message: Mapped[str] = mapped_column(Text)
    first_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_at: Mapped[datetime] = mapped_column(UTCDateTime)
    #: When a notification last went out to at least one channel (None: never yet).
    notified_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    acked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    ack_note: Mapped[str | None] = mapped_column(Text)
    ack_by: Mapped[str | None] = mapped_column(String(200))


class RequestPlanRow(Base):
    """The request plan a gateway's refusals taught (polling/learnedplan.py): one row per
    gateway that ever refused a read with exception 2, shared by every worker."""

    __tablename__ = "request_plans"

    gateway_id: Mapped[int] = mapped_column(
        ForeignKey("gateways.id", ondelete="CASCADE"), primary_key=True
    )
    #: A digest of the points and planning limits the plan was learnt for: a plan whose
    #: basis no longer matches the configuration is ignored (the full plan is used).
    basis: Mapped[str] = mapped_column(String(40))
    #: The learnt requests, [device, register, address, count] each; NULL: the full plan.
    spans: Mapped[list | None] = mapped_column(JSON(none_as_null=True), nullable=True)
    #: Names of the points no device answers (refused alone): not read, not failed.
    unavailable: Mapped[list] = mapped_column(JSON)
    learned_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: When the full plan is tried again (a device's map may have been fixed).
    retry_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    #: What the learning changed and when: [[time ISO, text], ...], the newest last.
    events: Mapped[list] = mapped_column(JSON)


class WriteRow(Base):
    """One `pollctl write`: who, when, what it read before and after, and how it ended."""

    __tablename__ = "writes"
    __table_args__ = (Index("ix_writes_gateway_at", "gateway", "at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    #: The OS user who ran the command.
    user: Mapped[str] = mapped_column(String(200))
    #: Names, not ids: the record outlives the gateway's configuration.
    gateway: Mapped[str] = mapped_column(String(200))
    point: Mapped[str] = mapped_column(String(200))
    #: Values as the point shows them (text); old: before the write, None if unread.
    old: Mapped[str | None] = mapped_column(Text)
    new: Mapped[str] = mapped_column(Text)
    read_back: Mapped[str | None] = mapped_column(Text)
    #: ok | mismatch | failed | busy
    outcome: Mapped[str] = mapped_column(String(16))
    error: Mapped[str | None] = mapped_column(Text)
