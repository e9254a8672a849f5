"""Sites: the gateways file's `site`, queue names, a worker's queues from POLLING_SITES,
batches that never mix sites, the per-site workers check, and a gateway that moves."""

from __future__ import annotations

import dataclasses
import json

import pytest

from polling import heartbeat, pipeline, service
from polling.checks.base import Context
from polling.checks.services import check_workers
from polling.errors import ConfigError
from polling.gatewayfile import load_gateways, parse_gateways
from polling.outcome import Outcome
from polling.repository import import_gateways
from polling.settings import Settings
from polling.sites import parse_sites
from polling.steps import SiteSenders, StepSender
from tests.fleet import fleet
from tests.test_service import Sent
from workers.hooks import consume_sites
from workers.queues import queue_site, served_sites, site_queue, worker_queues

POINTS = [{"name": "v", "address": 0}]


def two_sites(ports: list[int], east: set[int]) -> dict:
    """gw0, gw1, ... on `ports`; those whose index is in `east` on site east."""
    document = fleet(ports, [1.0] * len(ports), POINTS)
    for index in east:
        document["gateways"][index]["site"] = "east"
    return document


# -- the gateways file -------------------------------------------------------------------------


def test_site_defaults_to_default_and_is_kept():
    default, east = parse_gateways(two_sites([502, 503], {1}))
    assert (default.site, east.site) == ("default", "east")


@pytest.mark.parametrize(
    ("site", "message"),
    [
        ("East", "field 'site': 'East' is not a site name ([a-z0-9][a-z0-9_-]*)"),
        ("-east", "field 'site': '-east' is not a site name"),
        ("east.1", "field 'site': 'east.1' is not a site name"),
        ("", "field 'site': '' is not a site name"),
        (7, "field 'site': expected str, got 7"),
    ],
)
def test_a_bad_site_is_one_line_naming_file_gateway_and_field(tmp_path, site, message):
    path = tmp_path / "sites.yaml"
    document = two_sites([502], set())
    document["gateways"][0]["site"] = site
    import yaml

    path.write_text(yaml.safe_dump(document))
    with pytest.raises(ConfigError) as info:
        load_gateways(path)
    [line] = str(info.value).splitlines()
    assert line.startswith(f"{path}: gateway 'gw0': ") and message in line


def test_polling_sites_is_a_list_of_site_names():
    assert parse_sites(" east, west ,east") == ("east", "west")
    assert Settings.from_env({"POLLING_SITES": "default,east"}).site_list == ("default", "east")
    assert Settings.from_env({}).site_list == ("default",)
    with pytest.raises(ConfigError, match="POLLING_SITES='East': 'East' is not a site name"):
        Settings.from_env({"POLLING_SITES": "East"})


# -- queues ------------------------------------------------------------------------------------


def test_queue_names():
    assert site_queue("default") == "polling" and site_queue("east") == "polling.east"
    assert [queue_site(q) for q in ("polling", "polling.east", "scheduling", "polling.")] == [
        "default",
        "east",
        None,
        None,
    ]
    assert served_sites(["polling.east", "scheduling", "polling"]) == ("east", "default")


@pytest.mark.parametrize(
    ("selected", "sites", "consumed"),
    [
        # As deployed today: `-Q polling` and no POLLING_SITES serves `polling` alone.
        (["polling"], ("default",), ["polling"]),
        (["polling"], ("east",), ["polling.east"]),
        (["polling", "scheduling"], ("default", "east"), ["polling", "polling.east", "scheduling"]),
        # Not a polling worker: POLLING_SITES changes nothing.
        (["scheduling", "default"], ("east",), ["scheduling", "default"]),
        # A site queue named on the command line is kept.
        (["polling.west", "polling"], ("east",), ["polling.east", "polling.west"]),
    ],
)
def test_a_worker_consumes_the_queues_of_its_sites(selected, sites, consumed):
    assert worker_queues(selected, sites) == consumed


def test_the_worker_hook_replaces_polling_with_the_site_queues(celery_app):
    """What `celeryd_after_setup` does after `-Q polling,scheduling` was applied."""
    celery_app.amqp.queues.select(["polling", "scheduling"])
    assert consume_sites(celery_app, ("east", "default")) == [
        "polling.east",
        "polling",
        "scheduling",
    ]
    assert list(celery_app.amqp.queues.consume_from) == ["polling.east", "polling", "scheduling"]


# -- batches -----------------------------------------------------------------------------------


def test_batches_never_mix_sites():
    sent: list[tuple[str, list]] = []
    senders = SiteSenders(
        lambda site: StepSender(lambda batch: sent.append((site, batch)), 100, 10, clock=lambda: 0)
    )
    # Same window, two sites: two batches, one per site.
    senders.add(1, "t", 1_000, "default")
    senders.add(2, "t", 1_010, "east")
    senders.put([(3, "t", 1_020), (4, "t", 1_030)], "east")
    senders.add(5, "t", 1_040)
    assert senders.pending() == 5
    assert senders.send_all() == 5
    assert sorted(sent) == [
        ("default", [(1, "t", 1_000), (5, "t", 1_040)]),
        ("east", [(2, "t", 1_010), (3, "t", 1_020), (4, "t", 1_030)]),
    ]
    # After a warm shutdown, a step of a site not seen before leaves at once.
    assert senders.stop() == 0
    senders.add(6, "t", 9_000, "west")
    assert sent[-1] == ("west", [(6, "t", 9_000)])


# -- with Redis and the database ---------------------------------------------------------------


def setup(runtime, document) -> Sent:
    with runtime.sessions() as session, session.begin():
        import_gateways(session, parse_gateways(document))
    sent = Sent()
    service.start(runtime, sent)
    return sent


def test_chains_start_on_their_sites_and_successors_keep_them(runtime, free_ports):
    sent = setup(runtime, two_sites(free_ports(3), {1, 2}))
    ids = {g.config.name: g.id for g in service.select_gateways(runtime, None)}
    assert sent.sites == {ids["gw0"]: "default", ids["gw1"]: "east", ids["gw2"]: "east"}
    # The devices are down: each step fails, and its successor goes to its own site.
    result = pipeline.poll_batch(runtime, sent.calls)
    assert {s[0] for s in result.by_site()["east"]} == {ids["gw1"], ids["gw2"]}
    assert [s[0] for s in result.by_site()["default"]] == [ids["gw0"]]


def test_a_step_of_a_gateway_that_moved_is_forwarded_unchanged(runtime, free_ports):
    ports = free_ports(1)
    sent = setup(runtime, two_sites(ports, set()))
    setup(runtime, two_sites(ports, {0}))  # re-imported on site east: the step is queued
    runtime.bump_config()
    result = pipeline.poll_batch(runtime, sent.calls, "default")
    assert result.outcomes == {Outcome.FORWARDED: 1}
    assert result.by_site() == {"east": sent.calls}  # same token, same slot: nothing lost


def publish(runtime, name: str, sites: tuple[str, ...]) -> None:
    info = heartbeat.this_process(name, runtime.settings, runtime.clock(), polls=True, sites=sites)
    heartbeat.publish(runtime.redis, runtime.keys.worker(name), info)


def test_a_site_without_a_live_worker_is_critical_alone(runtime, free_ports):
    setup(runtime, two_sites(free_ports(2), {1}))
    runtime.settings = dataclasses.replace(runtime.settings, canary_timeout=0.5)
    publish(runtime, "w-default@h", ("default",))
    answered: list[str] = []

    def canary(nonce: str, ttl: float, site: str) -> None:  # the default site's worker answers
        answered.append(site)
        if site == "default":
            runtime.redis.rpush(runtime.keys.canary(nonce), "w-default@h")

    results = {r.component: r for r in check_workers(Context(runtime, canary=canary))}
    assert answered == ["default"]  # no canary for a site nobody serves
    assert results["workers"].status == "healthy"
    assert "site default: served by w-default@h" in results["workers"].message
    assert results["workers:east"].status == "error"
    assert "no gateway of site east is being polled" in results["workers:east"].message
    assert results["workers:east"].details["site"] == "east"

    # A worker of site east that heartbeats but does not consume: its canary never returns.
    publish(runtime, "w-east@h", ("east",))
    results = {r.component: r for r in check_workers(Context(runtime, canary=canary))}
    assert results["workers"].status == "healthy"
    assert results["workers:east"].status == "error"
    assert "canary" in results["workers:east"].message


def test_status_shows_and_filters_sites(runtime, env, gateways_file, free_ports):
    from click.testing import CliRunner

    from cli import main

    def pollctl(*args: str) -> str:
        result = CliRunner().invoke(main, list(args), env=env)
        assert result.exit_code == 0, result.output
        return result.stdout

    pollctl("gateway", "import", str(gateways_file(two_sites(free_ports(3), {1, 2}))))
    pollctl("start")
    publish(runtime, "w-east@h", ("east",))
    listed = json.loads(pollctl("status", "--json", "--site", "east"))
    assert [(s["name"], s["site"], s["polling"]) for s in listed] == [
        ("gw1", "east", "yes"),
        ("gw2", "east", "yes"),
    ]
    shown = pollctl("status").splitlines()
    assert shown[0].split()[:3] == ["gateway", "site", "colour"]
    assert any(
        line.startswith("gw0 ") and " default " in line and "waiting" in line for line in shown
    )
    assert "site default: 1 gateways (1 active), NO WORKER" in shown[-2]
    assert shown[-1].startswith("site east: 2 gateways (2 active), served by w-east@h; last")


def test_status_of_an_unknown_site_is_one_line_naming_the_known_ones(
    runtime, env, gateways_file, free_ports
):
    # A typo'd --site showed an empty table and exit 0, as if the site had no gateways.
    from click.testing import CliRunner

    from cli import main

    CliRunner().invoke(
        main, ["gateway", "import", str(gateways_file(two_sites(free_ports(2), {1})))], env=env
    )
    result = CliRunner().invoke(main, ["status", "--site", "east", "--site", "eats"], env=env)
    assert result.exit_code == 1, result.output
    assert result.output.strip() == "error: unknown site: eats (known: default, east)"
