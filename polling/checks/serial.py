"""Which site's worker opens which serial port: a serial port exists on one host, so its
gateways belong to a site served by that host's worker alone (polling/transports.py)."""

from __future__ import annotations

from collections import defaultdict

from .. import configcache, heartbeat
from ..plan import PollTarget
from ..sites import DEFAULT_SITE
from ..transports import SERIAL_DEFAULTS
from .base import CheckResult, Context, healthy

#: What makes a line: every gateway on one device must open it alike.
LINE_SETTINGS = ("baudrate", "parity", "stopbits", "bytesize")


def check_serial_buses(ctx: Context) -> CheckResult:
    """Every serial bus by site and device, with the live workers serving its site; an
    error when gateways of one bus disagree on its line settings; a warning when workers
    of more than one host serve a site with a bus, or for a bus on the `default` site,
    which every host's workers serve unless told otherwise."""
    buses: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    lines: dict[tuple[str, str], list[PollTarget]] = defaultdict(list)
    for target in configcache.fleet(ctx.rt):
        transport = target.config.transport
        if transport.serial:
            device = transport.option("device")
            buses[target.config.site][device].append(target.config.name)
            lines[target.config.site, device].append(target)
    if not buses:
        return healthy("serial", "no serial gateways")
    for (site, device), targets in sorted(lines.items()):
        if conflict := _settings_conflict(targets):
            return CheckResult(
                "serial",
                "error",
                f"serial bus {device} on site {site}: its gateways disagree on the line "
                f"settings: {conflict}",
                {"site": site, "device": device},
                ["give every gateway on one serial port the same baudrate, parity, stopbits "
                 "and bytesize: they share one line"],
            )  # fmt: skip
    details = {site: {dev: sorted(names) for dev, names in d.items()} for site, d in buses.items()}
    serving = heartbeat.serving(heartbeat.live_workers(ctx.rt.redis, ctx.rt.keys))
    listing = "; ".join(
        f"site {site} ({', '.join(sorted(serving.get(site, []))) or 'no live worker'}): "
        f"{dev} ({len(names)} gateways)"
        for site, devices in sorted(details.items())
        for dev, names in sorted(devices.items())
    )
    message = f"serial buses, each opened by the worker serving its site: {listing}"
    for site in sorted(buses):
        hosts = sorted({name.split("@", 1)[-1] for name in serving.get(site, [])})
        if len(hosts) > 1:
            return CheckResult(
                "serial",
                "warning",
                f"site {site} has a serial bus but is served by workers on {len(hosts)} hosts "
                f"({', '.join(hosts)}): its port is on one of them. {message}",
                {"buses": details, "hosts": hosts},
                [f"serve site {site} (POLLING_SITES) from the host with its serial ports only"],
            )
    if DEFAULT_SITE not in buses:
        return healthy("serial", message, buses=details)
    return CheckResult(
        "serial",
        "warning",
        message,
        {"buses": details},
        [
            f"put serial gateways on a site of their own (`site:` in the gateways file) that "
            f"only the host with the port serves (POLLING_SITES); on '{DEFAULT_SITE}' any "
            "worker may take their polls and find no such device"
        ],
    )


def _settings_conflict(targets: list[PollTarget]) -> str | None:
    """`line1, line3 at 9600 baud, ...; line2 at 19200 baud, ...` when the gateways of one
    line would open it with different settings; None when they agree."""
    by_settings: dict[tuple, list[str]] = defaultdict(list)
    for target in targets:
        transport = target.config.transport
        key = tuple(transport.option(k, SERIAL_DEFAULTS.get(k)) for k in LINE_SETTINGS)
        by_settings[key].append(target.config.name)
    if len(by_settings) < 2:
        return None
    groups = sorted((sorted(names), settings) for settings, names in by_settings.items())
    return "; ".join(
        f"{', '.join(names)} at {baud} baud, parity {parity}, {stop} stop bits, {size} data bits"
        for names, (baud, parity, stop, size) in groups
    )
