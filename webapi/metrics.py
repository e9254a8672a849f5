"""`/metrics`: Prometheus families read at scrape time from shared state (Redis counters
every worker adds to, heartbeats, queues, chains; gateway rows), so they are right with
any number of worker processes and hosts and whichever API process is scraped."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from sqlalchemy import Row, func, select

from polling import counters, heartbeat
from polling.alerts.delivery import read_counts as alert_counts
from polling.healthview import RANK
from polling.models import GatewayRow
from polling.queueview import QueueInspector
from polling.runtime import Runtime
from polling.sites import DEFAULT_SITE
from polling.status import live_chains
from workers.queues import queue_site

from . import views

PREFIX = "pollctl"


class FleetCollector(Collector):
    def __init__(self, rt: Runtime, queues: QueueInspector) -> None:
        self.rt = rt
        self.queues = queues

    def collect(self) -> Iterator[Metric]:
        rt = self.rt
        with rt.sessions() as session:
            rows = session.execute(
                select(
                    GatewayRow.id,
                    GatewayRow.name,
                    GatewayRow.enabled,
                    GatewayRow.polling,
                    GatewayRow.disabled_reason,
                    GatewayRow.site,
                )
            ).all()
            conflicts = session.scalar(
                select(func.coalesce(func.sum(GatewayRow.slot_conflicts), 0))
            )
        names = {gateway_id: name for gateway_id, name, *_ in rows}
        yield from self._polls(names)
        yield from self._gateways(rows)
        yield from self._queues()
        yield from self._chains()
        yield from self._buffer(int(conflicts or 0))
        yield from self._processes()
        yield from self._health()
        yield from self._alerts()

    def _polls(self, names: dict[int, str]) -> Iterator[Metric]:
        fleet = counters.read_counters(self.rt.redis, self.rt.keys)
        yield from _fleet_polls(fleet)
        # Without per-gateway series the families stay, empty (HELP and TYPE only).
        names = names if self.rt.settings.metrics_per_gateway else {}
        polls = CounterMetricFamily(
            f"{PREFIX}_polls",
            "Scheduled slots recorded, by gateway and outcome (ok, failed, skipped, missed)",
            labels=["gateway", "outcome"],
        )
        missed = 0
        for (gateway_id, outcome), n in sorted(fleet.polls.items()):
            if outcome == "missed":
                missed += n
            if gateway_id in names:  # a deleted gateway's counts go with it
                polls.add_metric([names[gateway_id], outcome], n)
        yield polls
        yield CounterMetricFamily(
            f"{PREFIX}_missed_slots", "Slots that passed without a poll, fleet-wide", value=missed
        )
        shed = CounterMetricFamily(
            f"{PREFIX}_polls_shed",
            "Scheduled slots shed under overload: recorded as skipped, not polled, because "
            "the worker began them later than the late limit after their slot",
            labels=["gateway"],
        )
        for gateway_id, n in sorted(fleet.shed.items()):
            if gateway_id in names:
                shed.add_metric([names[gateway_id]], n)
        yield shed
        for name, histogram, text in (
            ("poll_duration_seconds", fleet.duration, "Time a poll took (ok and failed polls)"),
            ("poll_lateness_seconds", fleet.lateness, "How late a poll started after its slot"),
        ):
            yield HistogramMetricFamily(
                f"{PREFIX}_{name}",
                text,
                buckets=[(bound, float(n)) for bound, n in histogram.buckets],
                sum_value=histogram.total,
            )
        dropped = CounterMetricFamily(
            f"{PREFIX}_steps_dropped",
            "Chain steps dropped by a guard: stale (token retired), claimed (a copy held the "
            "slot), moved (the chain was past the slot)",
            labels=["guard"],
        )
        for guard, n in fleet.dropped.items():
            dropped.add_metric([guard], n)
        yield dropped
        last_ok = GaugeMetricFamily(
            f"{PREFIX}_gateway_last_ok_timestamp_seconds",
            "Slot of each gateway's newest ok poll (Unix time)",
            labels=["gateway"],
        )
        for gateway_id, ms in sorted(fleet.last_ok.items()):
            if gateway_id in names:
                last_ok.add_metric([names[gateway_id]], ms / 1000)
        yield last_ok

    def _gateways(
        self, rows: Sequence[Row[tuple[int, str, bool, bool, str | None, str]]]
    ) -> Iterator[Metric]:
        per_site: dict[str, dict[str, int]] = {DEFAULT_SITE: _states()}
        for _, _, enabled, polling, reason, site in rows:
            states = per_site.setdefault(site, _states())
            if not enabled:
                states["auto_disabled" if reason else "disabled"] += 1
            else:
                states["polling" if polling else "stopped"] += 1
        family = GaugeMetricFamily(
            f"{PREFIX}_gateways",
            "Gateways by state and site: polling, stopped (pollctl stop), disabled (by the "
            "operator), auto_disabled (by failures)",
            labels=["state", "site"],
        )
        for site, states in sorted(per_site.items()):
            for state, n in states.items():
                family.add_metric([state, site], n)
        yield family

    def _queues(self) -> Iterator[Metric]:
        now = self.rt.clock()
        workers = heartbeat.live_workers(self.rt.redis, self.rt.keys)
        # `site` names the site whose polling queue it is (empty: no site's).
        labels = ["queue", "site"]
        depth = GaugeMetricFamily(
            f"{PREFIX}_queue_depth", "Messages waiting in each queue", labels=labels
        )
        age = GaugeMetricFamily(
            f"{PREFIX}_queue_oldest_age_seconds",
            "How long the oldest waiting message of each queue has been due (0 when empty)",
            labels=labels,
        )
        consumers = GaugeMetricFamily(
            f"{PREFIX}_queue_consumers", "Live workers consuming each queue", labels=labels
        )
        for q in self.queues.queues(now):
            values = [q.name, queue_site(q.name) or ""]
            depth.add_metric(values, q.waiting)
            age.add_metric(values, q.oldest_age or 0.0)
            consumers.add_metric(values, views.consumers(workers, q.name))
        yield depth
        yield age
        yield consumers
        unacked = self.queues.unacked(now)
        yield GaugeMetricFamily(
            f"{PREFIX}_unacked_messages",
            "Messages workers hold unacknowledged (ETA polls wait here)",
            value=unacked.count,
        )

    def _chains(self) -> Iterator[Metric]:
        chains, overdue = live_chains(self.rt)
        family = GaugeMetricFamily(
            f"{PREFIX}_chains", "Poll chains in Redis: live, and of those overdue", labels=["state"]
        )
        family.add_metric(["live"], len(chains))
        family.add_metric(["overdue"], len(overdue))
        yield family

    def _buffer(self, conflicts: int) -> Iterator[Metric]:
        buffer = self.rt.buffer
        yield GaugeMetricFamily(
            f"{PREFIX}_buffered_records",
            "Poll records waiting in Redis for the database",
            value=buffer.pending(),
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_dead_letters",
            "Records the database refused, kept aside (pollctl buffer show)",
            value=buffer.dead_count(),
        )
        yield CounterMetricFamily(
            f"{PREFIX}_records_lost",
            "Poll records dropped because the buffer was full",
            value=buffer.lost().count,
        )
        yield CounterMetricFamily(
            f"{PREFIX}_slot_conflicts",
            "Poll records the database's unique key refused (a second poll of a slot)",
            value=conflicts,
        )

    def _processes(self) -> Iterator[Metric]:
        rt = self.rt
        skew = GaugeMetricFamily(
            f"{PREFIX}_clock_skew_seconds",
            "Each worker's and beat's clock minus Redis's, from its heartbeat",
            labels=["process", "host", "role"],
        )
        for role, infos in (
            ("worker", heartbeat.live_workers(rt.redis, rt.keys)),
            ("beat", heartbeat.live_beats(rt.redis, rt.keys)),
        ):
            for info in infos:
                if info.skew_ms is not None:
                    skew.add_metric([info.name, info.host, role], info.skew_ms / 1000)
        yield skew

    def _health(self) -> Iterator[Metric]:
        fleet = views.health(self.rt)
        family = GaugeMetricFamily(
            f"{PREFIX}_health",
            "Health per component from the newest diagnostics run: 0 healthy, 1 degraded, "
            "2 critical",
            labels=["component"],
        )
        for name, component in fleet.components.items():
            family.add_metric([name], RANK[component.health])
        yield family
        if fleet.ran_at is not None:
            yield GaugeMetricFamily(
                f"{PREFIX}_diagnostics_last_run_timestamp_seconds",
                "When the newest diagnostics run ran (Unix time)",
                value=fleet.ran_at.timestamp(),
            )

    def _alerts(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            f"{PREFIX}_alert_notifications",
            "Alert notifications per channel (scheme and host of its apprise URL) and "
            "outcome (ok, failed)",
            labels=["channel", "outcome"],
        )
        for (channel, outcome), n in sorted(alert_counts(self.rt.redis, self.rt.keys).items()):
            family.add_metric([channel, outcome], n)
        yield family


def _states() -> dict[str, int]:
    return dict.fromkeys(("polling", "stopped", "disabled", "auto_disabled"), 0)


def _fleet_polls(fleet: counters.FleetCounters) -> Iterator[Metric]:
    """The per-gateway counts summed over every gateway ever counted: deleted ones too, so
    the fleet's counters never go down (Prometheus would read a drop as a reset)."""
    by_outcome: dict[str, int] = {}
    for (_, outcome), n in fleet.polls.items():
        by_outcome[outcome] = by_outcome.get(outcome, 0) + n
    polls = CounterMetricFamily(
        f"{PREFIX}_fleet_polls",
        "Scheduled slots recorded over the fleet, by outcome (ok, failed, skipped, missed)",
        labels=["outcome"],
    )
    for outcome, n in sorted(by_outcome.items()):
        polls.add_metric([outcome], n)
    yield polls
    yield CounterMetricFamily(
        f"{PREFIX}_fleet_polls_shed",
        "Scheduled slots shed under overload over the fleet (see pollctl_polls_shed_total)",
        value=sum(fleet.shed.values()),
    )
