"""The status page and its live feed against a running fleet (real worker, beat, `pollctl
api`, simulated devices): `/ws` delivers a subscribed gateway's polls and stops on
unsubscribe; Debian's chromium, driven by Playwright, sees the tiles go GREY -> GREEN after
`pollctl start`, one RED while its device is down, and GREEN again once it is back,
re-enabled by recovery's probe with no human. Screenshots go to the test's tmp
directory; with POLLCTL_UPDATE_SCREENSHOT=1 the red one also replaces
docs/status-page.png (the README's)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from sqlalchemy import select
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from polling.gatewayfile import parse_gateways
from polling.live import WATCH_REFRESH_S
from polling.models import GatewayRow
from polling.repository import import_gateways
from polling.simulator import Simulator
from tests.fleet import fleet
from tests.processes import ROOT, ApiProcess, Beat, Worker
from tests.test_e2e import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.long]

TOKEN = "page-s3cret"
INTERVAL = 1.0
CHROMIUM = "/usr/bin/chromium"
POINTS = [
    {"name": "temp", "address": 0, "type": "float32", "unit": "°C"},
    {"name": "status", "address": 13, "type": "uint16"},
]


class Fleet:
    def __init__(self, document: dict, env: dict[str, str], api: ApiProcess) -> None:
        self.document, self.env, self.api = document, env, api

    def cli(self, *args: str) -> None:
        subprocess.run(
            [sys.executable, "-m", "cli", *args],
            cwd=ROOT,
            env={**self.env, "PYTHONPATH": str(ROOT)},
            check=True,
            capture_output=True,
            timeout=60,
        )

    @property
    def ws_url(self) -> str:
        return self.api.url.replace("http", "ws") + "/ws"


@pytest.fixture
def running(runtime, env, simulate, free_ports, tmp_path) -> Iterator[tuple[Fleet, dict]]:
    """Three gateways at 1 s, each on a device of its own (so one can be stopped), a worker,
    beat and the API with a token; RED after 3 intervals without a success, disabled after
    6 failures, and probed for recovery 2 s later (then 4 s)."""
    ports = free_ports(3)
    document = fleet(ports, [INTERVAL] * 3, POINTS)
    devices = {g["name"]: simulate({"gateways": [g]}) for g in document["gateways"]}
    with runtime.sessions() as session, session.begin():
        import_gateways(session, parse_gateways(document))
    env = {
        **env,
        "POLLING_API_TOKEN": TOKEN,
        "POLLING_FAILURE_THRESHOLD": "6",
        "POLLING_RECOVERY_FIRST": "2",
        "POLLING_RECOVERY_MAX": "4",
        "POLLING_DIAGNOSTICS_SECONDS": "2",  # alerts are judged at the end of diagnostics
        "POLLING_COLOUR_RED_INTERVALS": "3",
        "POLLING_HEALTH_WINDOW": "10",
    }
    procs = [
        ApiProcess(env, tmp_path / "api.log", free_ports(1)[0]),
        Worker(env, tmp_path / "worker.log"),
        Beat(env, tmp_path / "beat.log"),
    ]
    try:
        procs[0].wait_ready()  # type: ignore[attr-defined]
        procs[1].wait_ready()  # type: ignore[attr-defined]
        yield Fleet(document, env, procs[0]), devices  # type: ignore[arg-type]
    finally:
        for proc in reversed(procs):
            proc.stop()


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_ws_delivers_a_subscribed_gateways_polls_until_unsubscribed(running):
    fleet_, _ = running
    with pytest.raises(InvalidStatus) as refused:
        connect(fleet_.ws_url, additional_headers={"Authorization": "Bearer no"}, open_timeout=5)
    assert refused.value.response.status_code == 403
    fleet_.cli("start")
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with connect(fleet_.ws_url, additional_headers=headers, open_timeout=5) as ws:
        ws.send(json.dumps({"op": "subscribe", "topics": ["gateways.gw0"]}))
        assert json.loads(ws.recv(timeout=5))["op"] == "subscribed"
        asked = time.monotonic()
        # Within one interval of the worker seeing the subscription (at most a second).
        frame = json.loads(ws.recv(timeout=INTERVAL + WATCH_REFRESH_S + 1))
        waited = time.monotonic() - asked
        assert frame["topic"] == "gateways.gw0", frame
        poll = frame["data"]
        assert (poll["gateway"], poll["outcome"]) == ("gw0", "ok")
        assert {(r["point"], r["unit"]) for r in poll["readings"]} == {
            ("temp", "°C"),
            ("status", None),
        }
        assert poll["lateness_ms"] is not None and poll["duration_ms"] is not None
        print(f"first poll {waited:.2f} s after subscribing")

        ws.send(json.dumps({"op": "unsubscribe", "topics": ["gateways.gw0"]}))
        while (reply := json.loads(ws.recv(timeout=5))).get("op") != "subscribed":
            pass  # polls relayed before the unsubscribe was read
        assert reply["topics"] == []
        # Nothing but heartbeats for three intervals (the default heartbeat is 15 s).
        with pytest.raises(TimeoutError):
            ws.recv(timeout=3 * INTERVAL)


def tile_colours(page) -> dict[str, str]:
    return page.eval_on_selector_all(
        ".tile", "els => Object.fromEntries(els.map(e => [e.dataset.name, e.dataset.colour]))"
    )


def wait_colours(page, wanted: dict[str, str], timeout_s: float) -> None:
    """Until the page's tiles show `wanted` (the page refreshes itself: no reload)."""
    script = "w => Object.entries(w).every(([n, c]) => "
    script += "document.querySelector(`.tile[data-name='${n}']`)?.dataset.colour === c)"
    try:
        page.wait_for_function(script, arg=wanted, timeout=timeout_s * 1000)
    except Exception as exc:
        raise AssertionError(f"tiles {tile_colours(page)}, wanted {wanted}") from exc


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_the_page_shows_tiles_turn_green_red_and_green_again(running, runtime, tmp_path):
    from playwright.sync_api import sync_playwright

    fleet_, devices = running
    shots = tmp_path / "screenshots"
    shots.mkdir()
    names = ["gw0", "gw1", "gw2"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 520})
            page.goto(fleet_.api.url + "/")
            page.fill("#token", TOKEN)  # the login prompt: the API wants a token
            page.click("#login-form button")
            wait_colours(page, dict.fromkeys(names, "grey"), 15)
            page.wait_for_selector("#live.on", timeout=10_000)
            page.screenshot(path=shots / "1-grey.png")

            fleet_.cli("start")
            wait_colours(page, dict.fromkeys(names, "green"), 20)
            page.wait_for_selector(".tile[data-name='gw0'] .outcome-ok", timeout=10_000)
            page.screenshot(path=shots / "2-green.png")

            devices["gw1"].stop()
            wait_colours(page, {"gw0": "green", "gw1": "red", "gw2": "green"}, 20)
            page.screenshot(path=shots / "3-red.png")
            if os.environ.get("POLLCTL_UPDATE_SCREENSHOT"):  # the README's, when asked
                shutil.copy(shots / "3-red.png", ROOT / "docs" / "status-page.png")

            def disabled() -> bool:
                with runtime.sessions() as session:
                    return not session.scalar(
                        select(GatewayRow.enabled).where(GatewayRow.name == "gw1")
                    )

            wait_until(disabled, 30, "gw1 disabled by its failures")
            # Its alert in the alerts view, acknowledged there.
            page.goto(fleet_.api.url + "/#/alerts")
            row = "tr:has(a[href='#/gateway/gw1'])"
            page.wait_for_selector(f"{row} button[data-ack]", timeout=20_000)
            page.once("dialog", lambda dialog: dialog.accept("on site"))
            page.click(f"{row} button[data-ack]")
            page.wait_for_selector(f"{row} td:text-is('acked')", timeout=10_000)
            page.screenshot(path=shots / "3-alerts.png")
            page.goto(fleet_.api.url + "/#/")
            gw1 = next(g for g in fleet_.document["gateways"] if g["name"] == "gw1")
            devices["gw1"] = Simulator(parse_gateways({"gateways": [gw1]})).start()
            try:
                # No human: recovery's probe finds the device back and re-enables gw1.
                wait_colours(page, dict.fromkeys(names, "green"), 20)
                page.screenshot(path=shots / "4-green-again.png")

                page.click(".tile[data-name='gw1']")  # its page: points, poll log, missed
                try:
                    page.wait_for_selector("#polls .outcome-failed", timeout=10_000)
                except Exception as exc:
                    page.screenshot(path=shots / "failed.png", full_page=True)
                    raise AssertionError(page.inner_text("main")[:3000]) from exc
                page.screenshot(path=shots / "5-gateway.png", full_page=True)
            finally:
                devices["gw1"].stop()
        finally:
            browser.close()
    assert sorted(f.name for f in shots.iterdir()) == [
        "1-grey.png",
        "2-green.png",
        "3-alerts.png",
        "3-red.png",
        "4-green-again.png",
        "5-gateway.png",
    ]
    assert (shots / "3-red.png").stat().st_size > 10_000
