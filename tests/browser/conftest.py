"""The dashboard's fixtures: headless Chromium driven by Playwright for Python (Debian's
``chromium``, never a downloaded browser), and the app served by uvicorn on loopback in a
thread, over a state directory seeded with sessions of two tenants (their records and
manifests as the service layer writes them; no engine is asked to create anything).

Under CI (``CI=true``) a missing browser or Playwright FAILS the tests that need them;
elsewhere they are skipped with the reason."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from dockyard.api.app import create_app
from dockyard.api.store import KeyStore, default_url
from dockyard.sessions import Sessions, driver, registry
from dockyard.sessions.settings import paths

CHROMIUM = os.environ.get("DOCKYARD_TEST_CHROMIUM", "/usr/bin/chromium")
SCREENSHOTS = os.environ.get("DOCKYARD_SCREENSHOTS")
"""A directory: the browser tests save a screenshot of each page there
(`make dashboard-screenshots` sets it to docs/dashboard/)."""


def _missing(what: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{what} (CI installs it: .ci/run, pyproject's test extras)")
    pytest.skip(what)


# Package scope, not session: Playwright's sync API keeps its event loop set as the
# thread's running loop while it is open, and the suite's asyncio tests after this
# package would find it there ("Cannot run the event loop while another loop is running").
@pytest.fixture(scope="package")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("Playwright for Python is not installed (pip install playwright)")
    if not (Path(CHROMIUM).is_file() or shutil.which(CHROMIUM)):
        _missing(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    args = ["--no-sandbox"] if os.geteuid() == 0 else []
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=args, headless=True)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    opened = context.new_page()
    opened.set_default_timeout(15_000)
    try:
        yield opened
    finally:
        context.close()


def shoot(page: Any, name: str) -> None:
    """A full-page screenshot for docs/dashboard.md when DOCKYARD_SCREENSHOTS is set."""
    if SCREENSHOTS:
        Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(SCREENSHOTS) / f"{name}.png"), full_page=True)


def manifest_of(session: str, environment: str, ports: list[tuple[int, int]]) -> dict[str, Any]:
    return {
        "version": 1,
        "environmentId": environment,
        "sessionId": session,
        "backend": "claude",
        "createdAt": "2026-01-01T00:00:00.000Z",
        "cwd": "/srv/app",
        "image": "dockyard-core:test",
        "container": {
            "id": "0" * 64,
            "name": environment,
            "cwd": "/workspace",
            "portMappings": [{"containerPort": c, "hostPort": h} for c, h in ports],
        },
        "requested": {"ports": [c for c, _ in ports], "volumes": [], "env": []},
    }


def seed(sessions: Sessions, tenant: str | None, session: str, **request: Any) -> None:
    """A session as the service layer records it (registry record and manifest)."""
    stack = f"t.{tenant}.{session}" if tenant else f"sessions.{session}"
    environment = f"dockyard-{stack}"
    target = sessions.where.state / "test-manifests" / f"{stack}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(manifest_of(session, environment, [(3000, 41000)])))
    sessions.registry.save(
        registry.Record(
            session_id=session,
            tenant=tenant,
            stack_name=stack,
            cwd="/srv/app",
            manifest_path=str(target),
            host="local",
            request={"sessionId": session, "cwd": "/srv/app", "backend": "claude", **request},
            created_at="2026-01-01T00:00:00.000Z",
        )
    )


@dataclass
class Served:
    url: str
    store: KeyStore
    sessions: Sessions
    keys: dict[str, str] = field(default_factory=dict)
    app: Any = None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    """The app on loopback (uvicorn in a thread) with tenants acme (a1, a2) and blue (b1)."""
    import uvicorn

    state, settings = tmp_path / "state", tmp_path / "settings.yaml"
    state.mkdir()
    settings.write_text(json.dumps({"healthcheck": {"interval": "5s"}}))
    env = {
        "HOME": str(tmp_path),
        "DOCKYARD_STATE_DIR": str(state),
        "DOCKYARD_CONFIG": str(settings),
    }
    where = paths(env)
    (where.state / "image.json").write_text(json.dumps({"imageRef": "dockyard-core:test"}))
    sessions = Sessions(where, driver.load(where, "dockyard.sessions.driver:PulumiDriver"))
    seed(sessions, "acme", "a1")
    seed(sessions, "acme", "a2", variant="python")
    seed(sessions, "blue", "b1")
    store = KeyStore(default_url(state))
    port = free_port()
    app = create_app(sessions, store)
    # No stats sampler thread: the tests feed the rings (app.state.stats_history) themselves.
    app.state.stats_interval_s = 0
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "the dashboard's server did not start in 20 s"
        assert thread.is_alive(), "the dashboard's server stopped at start-up"
        time.sleep(0.05)
    made = Served(f"http://127.0.0.1:{port}", store, sessions, app=app)
    made.keys = {
        "acme": store.create("acme").key,
        "blue": store.create("blue").key,
        "admin": store.create(None, admin=True).key,
    }
    try:
        yield made
    finally:
        # Open event streams end first (a page may still be open: the server would wait
        # for it to disconnect before it stops).
        app.state.events.close()
        server.should_exit = True
        thread.join(timeout=20)
        store.close()


def log_in(page: Any, url: str, key: str) -> None:
    page.goto(url + "/login")
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(url + "/")


def as_missing(text: str, session: str, missing: str = "nope") -> str:
    """``text`` with ``session`` put as ``missing`` wherever it stands as a word of its
    own: what a missing session's page would say. Key ids (hex) and tokens (base64url)
    on the page are random and may hold the id's letters: never touched."""
    return re.sub(rf"(?<![\w-]){re.escape(session)}(?![\w-])", missing, text)
