"""Learnt request plans that outgrew their gateway's interval: a plan split into many
requests has a larger poll budget (timeout x (requests + 1), polling/plan.py), and once
that passes the interval a device that answers slowly can run one poll into the next."""

from __future__ import annotations

from .. import configcache
from ..plan import full_plan, poll_budget
from .base import CheckResult, Context, healthy


def check_learnt_plans(ctx: Context) -> CheckResult:
    """A warning for each gateway whose learnt plan made its poll budget exceed its
    interval (its full plan's budget did not)."""
    settings = ctx.rt.settings
    grown = []
    for target in configcache.fleet(ctx.rt):
        if target.learned is None or target.learned.basis != target.basis:
            continue
        config = target.config
        full = full_plan(config, settings)
        if target.budget > config.interval >= poll_budget(config, len(full)):
            grown.append(
                f"{config.name} ({len(target.requests)} requests, budget {target.budget:.1f} s, "
                f"interval {config.interval:g} s)"
            )
    if not grown:
        return healthy("plans", "no learnt request plan outgrew its gateway's interval")
    return CheckResult(
        "plans",
        "warning",
        f"{len(grown)} learnt request plans outgrew their interval: {'; '.join(grown[:5])}",
        {"gateways": grown},
        [
            "remove the points no device answers from the gateways file (they split the "
            "reads), or lower the gateway's `timeout`; `pollctl explain --gateway NAME` shows "
            "the plan"
        ],
    )
