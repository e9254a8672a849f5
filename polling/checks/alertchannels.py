"""The alert channels: a URL of POLLING_ALERT_URLS apprise cannot use is left out at every
diagnostics run (polling/alerts/lifecycle.py) and only logged there; this check says so
where an operator looks."""

from __future__ import annotations

from ..alerts.delivery import channels_of
from ..errors import ConfigError
from .base import CheckResult, Context, healthy


def check_alert_channels(ctx: Context) -> CheckResult:
    """A warning naming (masked) each URL of POLLING_ALERT_URLS that is no channel."""
    urls = ctx.rt.settings.alert_url_list
    unusable = []
    for url in urls:
        try:
            channels_of([url])
        except ConfigError as exc:
            unusable.append(str(exc).removeprefix("POLLING_ALERT_URLS: "))
    if not unusable:
        return healthy("alerts", f"{len(urls)} alert channels in POLLING_ALERT_URLS")
    return CheckResult(
        "alerts",
        "warning",
        f"{len(unusable)} of {len(urls)} POLLING_ALERT_URLS left out: {'; '.join(unusable)}",
        {"unusable": unusable},
        ["fix the URL (apprise's URL forms), then `pollctl alerts test`"],
    )
