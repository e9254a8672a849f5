"""Sites: the networks gateways live on. A worker polls only the sites it can reach
(`POLLING_SITES`), and each site's polls travel on a queue of their own, so a gateway is
never polled from a network that cannot see it. Which queue a site's is, the Celery side
decides (`workers/queues.py`); here only names and who serves what."""

from __future__ import annotations

import re
from collections.abc import Iterable

DEFAULT_SITE = "default"
#: A site name: lower case, digits, `_` and `-`, not starting with either (it becomes part
#: of a queue name and a Prometheus label).
SITE_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]*")


def site_problem(name: object) -> str | None:
    """Why `name` is not a site name (None when it is one)."""
    if not isinstance(name, str):
        return f"expected a string, got {name!r}"
    if not SITE_PATTERN.fullmatch(name):
        return f"{name!r} is not a site name ([a-z0-9][a-z0-9_-]*)"
    return None


def parse_sites(text: str) -> tuple[str, ...]:
    """`east, west` -> ('east', 'west'): a comma-separated list (POLLING_SITES), each a
    site name; ValueError naming the first bad one, or an empty list."""
    names = tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    if not names:
        raise ValueError("names no site")
    for name in names:
        if why := site_problem(name):
            raise ValueError(why)
    return names


def sites_of(gateway_sites: Iterable[str]) -> list[str]:
    """The sites to look at, sorted with `default` first: those given, or `default` alone
    when there are none (a fresh installation still has its one site)."""
    found = set(gateway_sites) or {DEFAULT_SITE}
    return sorted(found, key=lambda s: (s != DEFAULT_SITE, s))
