"""The dashboard on the real engine: ``dockyard serve`` in a process of its own with the
harness driver (where the Pulumi CLI would run), driven in headless Chromium. A session
created from the form turns healthy in the table without a reload, its detail shows its
log tail and a line the session writes appears in it live, the other tenant never sees it, and it is destroyed after the confirmation
names it. Everything the test creates carries the run's tenants and is swept."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import pytest

from dockyard.api.store import default_url
from dockyard.sessions import Sessions
from dockyard.sessions.settings import paths
from dockyard.sessions.stats_history import StatsHistory, sample_round
from tests.browser.conftest import log_in, shoot
from tests.harness.sessions import HarnessDriver
from tests.support.engine import RUN_ID, remove_volume
from tests.support.harness_home import Home, destroy_all, make_home

pytestmark = [pytest.mark.docker, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
DOCKYARD = Path(sys.executable).with_name("dockyard")


@dataclass
class Server:
    url: str
    project: Path
    tenant: str
    other: str
    keys: dict[str, str]
    home: Home


def _selector(tenant: str, session: str | None = None) -> dict[str, list[str]]:
    labels = [f"dockyard.stack={tenant}"]
    if session:
        labels.append(f"dockyard.session={session}")
    return {"label": labels}


def _leftovers(client: docker.DockerClient, tenant: str, session: str) -> list[str]:
    selector = _selector(tenant, session)
    return [
        *(f"container {c.name}" for c in client.containers.list(all=True, filters=selector)),
        *(f"network {n.name}" for n in client.networks.list(filters=selector)),
        *(f"volume {v.name}" for v in client.volumes.list(filters=selector)),
    ]


def _sweep(client: docker.DockerClient, tenants: tuple[str, ...]) -> None:
    for tenant in tenants:
        for container in client.containers.list(all=True, filters=_selector(tenant)):
            container.remove(force=True, v=True)
        for network in client.networks.list(filters=_selector(tenant)):
            network.remove()
        for volume in client.volumes.list(filters=_selector(tenant)):
            remove_volume(volume)


@pytest.fixture(scope="module")
def server(
    docker_client: docker.DockerClient,
    core_image: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Server]:
    assert DOCKYARD.is_file(), f"the dockyard console script is not installed at {DOCKYARD}"
    base = tmp_path_factory.mktemp("dashboard")
    home = make_home(base, core_image, {"healthcheck": {"interval": "2s"}})
    state, project = home.state, home.project
    store = default_url(state)
    env = home.env()
    tenants = (f"d{RUN_ID[:6]}", f"e{RUN_ID[:6]}")
    keys = {}
    for tenant in tenants:
        made = subprocess.run(
            [str(DOCKYARD), "keys", "create", "--tenant", tenant, "--json", "--key-store", store],
            env=env,
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        assert made.returncode == 0, made.stderr
        keys[tenant] = json.loads(made.stdout)["key"]
    log = base / "server.log"
    process = subprocess.Popen(
        [str(DOCKYARD), "serve", "--port", "0", "--key-store", store],
        env=env,
        stdout=subprocess.PIPE,
        stderr=log.open("w"),
        text=True,
    )
    try:
        line = process.stdout.readline() if process.stdout else ""
        assert line.startswith("dockyard: listening on http://127.0.0.1:"), (line, log.read_text())
        yield Server(line.split(" on ", 1)[1].strip(), project, *tenants, keys, home)
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        print(log.read_text())
        _sweep(docker_client, tenants)


def test_create_watch_ready_open_and_destroy_from_the_browser(
    browser: Any, server: Server, docker_client: docker.DockerClient
) -> None:
    owner = browser.new_context(viewport={"width": 1280, "height": 800})
    other = browser.new_context()
    try:
        page = owner.new_page()
        page.set_default_timeout(30_000)
        log_in(page, server.url, server.keys[server.tenant])
        page.get_by_role("link", name="New session").click()
        page.get_by_label("Session id").fill("d1")
        page.get_by_label("Project directory (cwd)").fill(str(server.project))
        page.get_by_label("Ports").fill("3000")
        page.get_by_role("button", name="Create session").click()
        page.wait_for_url(server.url + "/sessions/d1", timeout=240_000)
        (container,) = docker_client.containers.list(
            all=True, filters=_selector(server.tenant, "d1")
        )
        assert container.labels["dockyard.tenant"] == server.tenant
        assert page.locator("h1").inner_text().startswith("Session d1")

        # The table turns the session healthy by itself: the page is never reloaded.
        page.get_by_role("link", name="Sessions").click()
        page.wait_for_url(server.url + "/")
        page.evaluate("window.notReloaded = true")
        page.wait_for_selector('tr[data-session="d1"] .health-healthy', timeout=120_000)
        assert page.evaluate("window.notReloaded") is True
        assert page.locator('tr[data-session="d1"] .status-running').count() == 1

        # The other tenant's key never sees it.
        stranger = other.new_page()
        log_in(stranger, server.url, server.keys[server.other])
        assert stranger.locator('tr[data-session="d1"]').count() == 0
        stranger.goto(server.url + "/sessions/d1")
        assert stranger.locator("h1").inner_text() == "Not found"

        # Its detail: the log tail the engine holds, then live: a line the session writes
        # to its output appears without a reload, as text (its markup is not HTML).
        page.get_by_role("link", name="d1", exact=True).click()
        page.wait_for_url(server.url + "/sessions/d1")
        logs = container.logs(tail=5).decode("utf-8", "replace").strip().splitlines()
        if logs:
            assert logs[-1].strip() in page.get_by_label("Log tail text").inner_text()
        page.wait_for_selector("#logs-mode:has-text('live')")
        page.evaluate("window.notReloaded = true")
        marker = f"live-line-{RUN_ID[:8]}"
        written = time.time()
        wrote = container.exec_run(
            ["sh", "-c", 'printf "%s <b>bold</b>\\n" "$1" > /proc/1/fd/1', "sh", marker]
        )
        assert wrote.exit_code == 0, wrote.output
        shown = _changed(
            page,
            f"document.getElementById('logs').textContent.includes('{marker} <b>bold</b>')",
            written,
        )
        assert page.evaluate("window.notReloaded") is True
        assert page.locator("#logs b").count() == 0
        print(f"dashboard live log line: written -> shown in {shown:.3f} s")
        # Its stats from the engine (the service layer's workspace), loaded after the page.
        memory = page.get_by_label("Memory (against its limit)")
        memory.wait_for(timeout=30_000)
        assert memory.evaluate("m => m.tagName") == "METER"
        assert int(memory.get_attribute("value") or 0) > 0
        shoot(page, "detail-live")
        # Pause and resume act on the engine's container.
        page.get_by_role("button", name="Pause (freeze its processes, memory kept)").click()
        page.wait_for_url("**done=paused")
        container.reload()
        assert container.status == "paused"
        page.get_by_role("button", name="Resume").click()
        page.wait_for_url("**done=resumed")
        container.reload()
        assert container.status == "running"

        page.get_by_role("link", name="Destroy…").click()
        assert "Destroy session d1?" in page.locator("h1").inner_text()
        page.get_by_role("button", name="Destroy d1").click()
        page.wait_for_url("**/?destroyed=d1", timeout=240_000)
        assert page.get_by_role("status").first.inner_text() == "Session d1 destroyed."
        assert page.locator('tr[data-session="d1"]').count() == 0
        assert _leftovers(docker_client, server.tenant, "d1") == []
    finally:
        owner.close()
        other.close()


def _changed(page: Any, condition: str, since: float) -> float:
    """Seconds from ``since`` (wall clock) until ``condition`` (a JS expression) first holds
    in the page, checked on every animation frame; the page is never reloaded meanwhile."""
    handle = page.wait_for_function(f"() => ({condition}) && Date.now()", polling="raf")
    return float(handle.json_value()) / 1000 - since


def test_the_table_and_the_detail_follow_the_service_live(browser: Any, server: Server) -> None:
    """The service layer (as the CLI would) creates, pauses, resumes and destroys a session
    while the pages are open: each change reaches the DOM from the event stream."""
    where = paths(
        {"DOCKYARD_STATE_DIR": str(server.home.state), "DOCKYARD_CONFIG": str(server.home.settings)}
    )
    api = Sessions(where, HarnessDriver(where))
    context = browser.new_context()
    delays: dict[str, float] = {}
    row = "document.querySelector('tr[data-session=\"d2\"]')"
    try:
        page = context.new_page()
        page.set_default_timeout(30_000)
        log_in(page, server.url, server.keys[server.tenant])
        page.evaluate("window.notReloaded = true")
        api.create(
            {
                "sessionId": "d2",
                "cwd": str(server.project),
                "backend": "claude",
                "tenant": server.tenant,
            },
            {},
        )
        delays["create"] = _changed(page, row, time.time())
        # The stats sampler's round on the real engine: d2 runs, so it gets a sample
        # against its limits (the table's bars and the detail's chart read these rings).
        history = StatsHistory()
        assert sample_round(api, history) >= 1
        sample = history.latest(server.tenant, "d2")
        assert sample is not None
        assert sample.memory_used is not None
        assert sample.memory_limit is not None
        assert 0 < sample.memory_used < sample.memory_limit
        assert sample.disk_total
        assert sample.disk_used is not None
        api.pause("d2", server.tenant)
        delays["pause"] = _changed(
            page, f"{row} && {row}.querySelector('.status-paused')", time.time()
        )
        assert page.evaluate("window.notReloaded") is True

        page.goto(server.url + "/sessions/d2")
        page.evaluate("window.notReloaded = true")
        assert page.locator("#facts .status-paused").count() == 1
        api.resume("d2", server.tenant)
        delays["resume (detail)"] = _changed(
            page, "document.querySelector('#facts .status-running')", time.time()
        )
        assert (
            page.get_by_role("button", name="Pause (freeze its processes, memory kept)").count()
            == 1
        )
        assert page.evaluate("window.notReloaded") is True

        page.goto(server.url + "/")
        page.evaluate("window.notReloaded = true")
        page.wait_for_selector('tr[data-session="d2"]')
        api.destroy("d2", server.tenant)
        delays["destroy"] = _changed(page, f"!{row}", time.time())
        assert page.evaluate("window.notReloaded") is True
    finally:
        context.close()
        destroy_all(api, server.tenant)
    # Figures for docs/performance.md (no timed assert: CI machines are shared).
    print(
        "dashboard live delays (service call returned -> DOM changed):",
        {k: f"{v:.3f} s" for k, v in delays.items()},
    )
