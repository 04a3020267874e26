"""The server's shutdown (the app's lifespan) writes the audit lines still queued, for a
bounded time (dockyard.sessions.audit.flush_all), and says so when they could not be."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from dockyard.api.app import create_app
from dockyard.api.store import KeyStore, default_url
from dockyard.sessions import Sessions, audit, driver
from dockyard.sessions.settings import paths

from .conftest import state_env

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("written", [True, False])
async def test_shutdown_flushes_the_audit_lines_with_a_bound(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    written: bool,
) -> None:
    where = paths(state_env(tmp_path))
    (where.state / "image.json").write_text(json.dumps({"imageRef": "dockyard-core:test"}))
    sessions = Sessions(where, driver.load(where, "dockyard.sessions.driver:PulumiDriver"))
    store = KeyStore(default_url(tmp_path / "state"))
    calls: list[float] = []

    def flush_all(timeout: float) -> bool:
        calls.append(timeout)
        return written

    monkeypatch.setattr(audit, "flush_all", flush_all)
    try:
        app = create_app(sessions, store)
        with caplog.at_level(logging.WARNING, logger="dockyard.api"):
            async with app.router.lifespan_context(app):
                assert calls == []
    finally:
        store.close()
    assert calls == [audit.EXIT_FLUSH_S]
    assert ("audit lines still queued" in caplog.text) is not written
