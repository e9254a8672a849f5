"""Which site's worker opens which serial port: a serial port exists on one host, so its
gateways belong to a site served by that host's worker alone (polling/transports.py)."""

from __future__ import annotations

from collections import defaultdict

from .. import configcache
from ..sites import DEFAULT_SITE
from .base import CheckResult, Context, healthy


def check_serial_buses(ctx: Context) -> CheckResult:
    """Every serial bus by site and device; a warning for buses on the `default` site,
    which every host's workers serve unless told otherwise."""
    buses: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for target in configcache.fleet(ctx.rt):
        transport = target.config.transport
        if transport.serial:
            buses[target.config.site][transport.option("device")].append(target.config.name)
    if not buses:
        return healthy("serial", "no serial gateways")
    details = {site: {dev: sorted(names) for dev, names in d.items()} for site, d in buses.items()}
    listing = "; ".join(
        f"site {site}: {dev} ({len(names)} gateways)"
        for site, devices in sorted(details.items())
        for dev, names in sorted(devices.items())
    )
    message = f"serial buses, each opened by the worker serving its site: {listing}"
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
