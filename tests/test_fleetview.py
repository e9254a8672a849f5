"""What the status page's JSON holds, on SQLite and PostgreSQL: each gateway's colour from
its stored state, tiles filtered by colour and name and paged, newest values with units,
sparklines averaged per bucket by the database, and a gateway's poll log and missed slots."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select, update

from polling.fleetview import JudgedCache, gateway_detail, judge_fleet, tile_page
from polling.gatewayfile import parse_gateways
from polling.models import GatewayRow, PollLog, Reading
from polling.repository import import_gateways
from polling.schedule import ms_to_dt
from polling.settings import Settings
from polling.timefmt import iso_z
from tests.fleet import fleet

POINTS = [
    {"name": "label", "address": 40, "type": "string", "count": 2},
    {"name": "temp", "address": 0, "type": "float32", "unit": "°C"},
    {"name": "status", "address": 13, "type": "uint16"},
]
RULES = Settings().colour_rules


def test_tiles_are_judged_filtered_paged_and_carry_values_and_sparklines(runtime):
    now = ms_to_dt(1_796_000_000_000)  # a whole minute
    document = fleet([1502, 1503, 1504, 1505], [10, 10, 10, 10], POINTS)
    with runtime.sessions() as session, session.begin():
        import_gateways(session, parse_gateways(document))
        ids = dict(session.execute(select(GatewayRow.name, GatewayRow.id)).all())
        # gw0 polls well; gw1 was disabled by failures; gw2 polls but its last success is
        # an hour old; gw3 is stopped.
        started = {"polling": True, "polling_since": now - timedelta(hours=2)}
        session.execute(
            update(GatewayRow).where(GatewayRow.name.in_(["gw0", "gw1", "gw2"])).values(**started)
        )
        for name, values in {
            "gw0": {"last_ok_at": now - timedelta(seconds=5)},
            "gw1": {"enabled": False, "probe_delay_s": 60.0, "next_probe_at": now},
            "gw2": {"last_ok_at": now - timedelta(hours=1), "site": "east"},
        }.items():
            session.execute(update(GatewayRow).where(GatewayRow.name == name).values(**values))
        gw0 = ids["gw0"]
        for minute in range(10):  # two readings a minute: 20 + minute, 21 + minute
            for second, offset in ((0, 0.0), (30, 1.0)):
                slot = now - timedelta(minutes=10 - minute, seconds=-second)
                session.add(Reading(gateway_id=gw0, point="temp", slot_at=slot, read_at=slot,
                                    value=20 + minute + offset, unit="°C"))  # fmt: skip
                session.add(Reading(gateway_id=gw0, point="label", slot_at=slot, read_at=slot,
                                    text="ok"))  # fmt: skip
                session.add(PollLog(gateway_id=gw0, slot_at=slot, outcome="ok", started_at=slot
                                    + timedelta(milliseconds=7), duration_ms=12.5))  # fmt: skip
        session.add(
            PollLog(
                gateway_id=gw0,
                slot_at=now - timedelta(minutes=30),
                last_slot_at=now - timedelta(minutes=20),
                slots=61,
                outcome="missed",
                error="no worker",
            )
        )

    with runtime.sessions() as session:
        colours = {j.row.name: j.colour.value for j in judge_fleet(session, now, 300, RULES)}
        assert colours == {"gw0": "green", "gw1": "red", "gw2": "red", "gw3": "grey"}

        fleet_ = judge_fleet(session, now, 300, RULES)
        page = tile_page(session, fleet_, now, colour="red")
        assert [t["name"] for t in page["gateways"]] == ["gw1", "gw2"]
        assert page["total"] == 2
        assert page["counts"] == {"grey": 1, "red": 2, "yellow": 0, "green": 1}
        assert page["gateways"][0]["next_probe_at"] is not None
        assert [t["site"] for t in page["gateways"]] == ["default", "east"]

        page = tile_page(session, fleet_, now, name_like="GW", offset=1, limit=2)
        assert [t["name"] for t in page["gateways"]] == ["gw1", "gw2"] and page["total"] == 4
        assert tile_page(session, fleet_, now, name_like="w0")["total"] == 1

        (tile,) = tile_page(session, fleet_, now, name_like="gw0")["gateways"]
        assert tile["colour"] == "green" and tile["last_outcome"] == "ok"
        assert tile["success_rate"] == 1.0 and tile["site"] == "default"
        assert [(v["point"], v["value"], v["unit"]) for v in tile["values"]] == [
            ("label", "ok", None),
            ("temp", 30.0, "°C"),
        ]
        # The first numeric point, two readings a 2-minute bucket: means of 4 values.
        assert tile["spark"]["point"] == "temp"
        series = tile["spark"]["series"]
        assert [v for _, v in series] == [21.0, 23.0, 25.0, 27.0, 29.0]
        assert series[0][0] == int((now - timedelta(minutes=10)).timestamp() * 1000)

        judged = next(j for j in judge_fleet(session, now, 300, RULES) if j.row.name == "gw0")
        detail = gateway_detail(session, judged, now)
    assert [p["name"] for p in detail["points"]] == ["label", "temp", "status"]
    temp = detail["points"][1]
    assert (temp["value"], temp["unit"], len(temp["series"])) == (30.0, "°C", 10)
    assert detail["points"][0]["series"] == []  # a string has no sparkline
    newest = detail["polls"][0]
    assert (newest["outcome"], newest["lateness_ms"], newest["duration_ms"]) == ("ok", 7, 12.5)
    assert detail["missed_slots"] == [
        {
            "slot_at": iso_z(now - timedelta(minutes=30)),
            "last_slot_at": iso_z(now - timedelta(minutes=20)),
            "slots": 61,
            "why": "no worker",
        }
    ]


def test_the_fleets_judgement_is_reused_longer_the_more_it_costs():
    clock = [0.0]
    cache = JudgedCache(ttl_s=1.0, monotonic=lambda: clock[0])
    computed: list[float] = []

    def compute(cost: float):
        def run() -> list:
            clock[0] += cost
            computed.append(cost)
            return [len(computed)]

        return run

    assert cache.get(compute(0.01)) == [1]  # cheap: kept for the 1 s floor
    clock[0] = 0.9
    assert cache.get(compute(0.01)) == [1]
    clock[0] = 1.0
    assert cache.get(compute(0.5)) == [2]  # took 0.5 s: kept 2.5 s from its start
    clock[0] = 3.4
    assert cache.get(compute(0.5)) == [2]
    clock[0] = 3.5
    assert cache.get(compute(0.01)) == [3]
