"""The gateway repository: gateways and their points as configured, and the state flags
(polling, enabled, disable reason, chain token mirror) kept beside them."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, Table, bindparam, delete, func, insert, select, update
from sqlalchemy.orm import Session

from .gateways import Gateway, Point
from .models import GatewayRow, PointRow, utcnow
from .transports import transport_of


@dataclass(frozen=True)
class StoredGateway:
    """A configured gateway as a poll needs it: its id, config and state flags."""

    id: int
    config: Gateway
    enabled: bool
    polling: bool
    disabled_reason: str | None
    polling_since: datetime | None

    @property
    def active(self) -> bool:
        """Should have a live chain: enabled, and started by an operator."""
        return self.enabled and self.polling


# -- configuration ---------------------------------------------------------------------------


def import_gateways(session: Session, gateways: Sequence[Gateway]) -> tuple[int, int]:
    """Upsert gateways by name, replacing each one's points, in a few Core statements (an
    import of 10,000 gateways is a stream of these batches in one transaction). An
    auto-disabled gateway stays disabled (only `pollctl start --gateway` re-enables it).
    Returns (created, updated)."""
    if not gateways:
        return 0, 0
    table: Table = GatewayRow.__table__  # type: ignore[assignment]
    points: Table = PointRow.__table__  # type: ignore[assignment]
    existing = {
        name: (gateway_id, reason)
        for gateway_id, name, reason in session.execute(
            select(table.c.id, table.c.name, table.c.disabled_reason).where(
                table.c.name.in_([g.name for g in gateways])
            )
        )
    }
    now = utcnow()
    new = [g for g in gateways if g.name not in existing]
    ids = {name: gateway_id for name, (gateway_id, _) in existing.items()}
    if new:
        created = session.execute(
            insert(table).returning(table.c.id, table.c.name),
            [
                {
                    **_settings(g, enabled=g.enabled),
                    "name": g.name,
                    "polling": False,
                    "consecutive_failures": 0,
                    "slot_conflicts": 0,
                    "created_at": now,
                    "updated_at": now,
                }
                for g in new
            ],
        )
        ids |= {name: gateway_id for gateway_id, name in created}
    old = [g for g in gateways if g.name in existing]
    if old:
        session.execute(
            update(table).where(table.c.id == bindparam("gid")),
            [
                {
                    **_settings(g, enabled=g.enabled and existing[g.name][1] is None),
                    "gid": existing[g.name][0],
                    "updated_at": now,
                }
                for g in old
            ],
        )
        if off := [ids[g.name] for g in old if not g.enabled]:
            # The operator's `enabled: false` overrides a failure's disable: never probed.
            session.execute(
                update(table)
                .where(table.c.id.in_(off))
                .values(next_probe_at=None, probe_delay_s=None)
            )
        session.execute(delete(points).where(points.c.gateway_id.in_([ids[g.name] for g in old])))
    session.execute(
        insert(points),
        [{"gateway_id": ids[g.name], **_point_row(p)} for g in gateways for p in g.points],
    )
    return len(new), len(old)


def _settings(gateway: Gateway, *, enabled: bool) -> dict[str, object]:
    return {
        "host": gateway.host,
        "port": gateway.port,
        "device_id": gateway.device_id,
        "interval_s": gateway.interval,
        "timeout_s": gateway.timeout,
        "enabled": enabled,
        "site": gateway.site,
        "transport": gateway.transport.kind,
        "transport_options": gateway.transport.as_json() or None,
        "single_register_write": gateway.single_register_write,
        "multiple_coil_write": gateway.multiple_coil_write,
    }


def _point_row(point: Point) -> dict[str, object]:
    return {
        "name": point.name,
        "register": point.register,
        "address": point.address,
        "type": point.type,
        "word_order": point.order,
        "count": point.count,
        "scale": point.scale,
        "offset": point.offset,
        "unit": point.unit,
        "device_id": point.device_id,
        "min": point.min,
        "max": point.max,
        "flatline": point.flatline,
    }


def load_gateways_by_id(session: Session, ids: Sequence[int]) -> list[StoredGateway]:
    return _load(session, GatewayRow.__table__.c.id.in_(list(ids)))


def load_gateways(session: Session, names: Iterable[str] | None = None) -> list[StoredGateway]:
    condition = None if names is None else GatewayRow.__table__.c.name.in_(list(names))
    return _load(session, condition)


_GATEWAY_COLUMNS = (
    "id", "name", "host", "port", "device_id", "interval_s", "timeout_s",
    "enabled", "polling", "disabled_reason", "polling_since", "site",
    "transport", "transport_options",
    "single_register_write", "multiple_coil_write",
)  # fmt: skip
#: In the order of Point's fields, after the gateway id.
_POINT_COLUMNS = (
    "gateway_id", "name", "register", "address", "type", "word_order",
    "count", "scale", "offset", "unit", "device_id", "min", "max", "flatline",
)  # fmt: skip


def _load(session: Session, condition: ColumnElement[bool] | None) -> list[StoredGateway]:
    """Gateways with their points, by name, in two Core queries: ORM objects for ten
    thousand gateways and their points cost seconds, and nothing here changes them."""
    g, p = GatewayRow.__table__, PointRow.__table__
    gateways = select(*(g.c[name] for name in _GATEWAY_COLUMNS)).order_by(g.c.name)
    points = (
        select(*(p.c[name] for name in _POINT_COLUMNS))
        .join(g, p.c.gateway_id == g.c.id)
        .order_by(p.c.gateway_id, p.c.id)
    )
    if condition is not None:
        gateways, points = gateways.where(condition), points.where(condition)
    by_gateway: dict[int, list[Point]] = defaultdict(list)
    for gateway_id, *fields in session.execute(points):
        by_gateway[gateway_id].append(Point(*fields))
    return [
        StoredGateway(
            row.id,
            Gateway(
                name=row.name,
                host=row.host,
                interval=row.interval_s,
                points=tuple(by_gateway[row.id]),
                port=row.port,
                device_id=row.device_id,
                timeout=row.timeout_s,
                enabled=row.enabled,
                site=row.site,
                transport=transport_of(row.transport, row.transport_options),
                single_register_write=row.single_register_write,
                multiple_coil_write=row.multiple_coil_write,
            ),
            row.enabled,
            row.polling,
            row.disabled_reason,
            row.polling_since,
        )
        for row in session.execute(gateways)
    ]


def delete_gateway(session: Session, name: str) -> bool:
    result = session.execute(delete(GatewayRow).where(GatewayRow.name == name))
    return bool(getattr(result, "rowcount", 0))


def fleet_summary(session: Session) -> tuple[int, datetime | None]:
    """How many gateways there are, and when any gateway row last changed."""
    count, newest = session.execute(
        select(func.count(GatewayRow.id), func.max(GatewayRow.updated_at))
    ).one()
    return int(count), newest


def set_polling_many(session: Session, gateway_ids: Sequence[int], *, on: bool) -> None:
    """Mark gateways as polling (stamping `polling_since` on those that were not) or
    stopped, their token mirror cleared, in a few statements."""
    table = GatewayRow.__table__
    for first in range(0, len(gateway_ids), 1000):
        part = list(gateway_ids[first : first + 1000])
        if on:
            session.execute(
                update(table)  # type: ignore[arg-type]
                .where(table.c.id.in_(part), table.c.polling.is_(False))
                .values(polling_since=utcnow())
            )
        session.execute(
            update(table)  # type: ignore[arg-type]
            .where(table.c.id.in_(part))
            .values(polling=on, chain_token=None)
        )


def set_polling_since(session: Session, stamps: Sequence[tuple[int, datetime]]) -> None:
    """Move gateways' `polling_since` (a paced start: polling begins at the first slot)."""
    if stamps:
        table = GatewayRow.__table__
        session.execute(
            update(table)  # type: ignore[arg-type]
            .where(table.c.id == bindparam("gid"))
            .values(polling_since=bindparam("at"), updated_at=table.c.updated_at),
            [{"gid": gateway_id, "at": at} for gateway_id, at in stamps],
        )


def reenable(session: Session, gateway_id: int) -> None:
    """Clear an automatic (or configured) disable: the operator's explicit start."""
    row = session.get_one(GatewayRow, gateway_id)
    row.enabled, row.disabled_reason, row.consecutive_failures = True, None, 0
    row.next_probe_at = row.probe_delay_s = None  # the breaker closes
    # The slots it spent disabled were not polled on purpose: a pause, not missed polls.
    row.polling_since = utcnow()


def lock_active(session: Session, gateway_ids: Sequence[int]) -> set[int]:
    """Those of `gateway_ids` that are enabled and polling, their rows locked until the
    transaction ends (PostgreSQL), so a concurrent stop waits for the chains started here and
    then retires them, instead of passing between the check and the start."""
    table = GatewayRow.__table__
    found: set[int] = set()
    for first in range(0, len(gateway_ids), 1000):
        rows = session.execute(
            select(table.c.id)
            .where(table.c.id.in_(list(gateway_ids[first : first + 1000])))
            .where(table.c.enabled, table.c.polling)
            .order_by(table.c.id)  # one lock order for every writer
            .with_for_update()
        )
        found.update(gateway_id for (gateway_id,) in rows)
    return found


def set_chain_tokens(session: Session, tokens: Sequence[tuple[int, str | None]]) -> None:
    """`set_chain_token` for many gateways, in one executemany."""
    if tokens:
        table = GatewayRow.__table__
        session.execute(
            update(table)  # type: ignore[arg-type]
            .where(table.c.id == bindparam("gid"))
            .values(chain_token=bindparam("token"), updated_at=table.c.updated_at),
            [{"gid": gid, "token": token} for gid, token in tokens],
        )


def set_chain_token(session: Session, gateway_id: int, token: str | None) -> None:
    """Mirror the live token (an UPDATE, so a deleted gateway is no error)."""
    session.execute(
        update(GatewayRow)
        .where(GatewayRow.id == gateway_id)
        .values(chain_token=token, updated_at=GatewayRow.updated_at)
    )
