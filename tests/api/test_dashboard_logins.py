"""Dashboard logins live in the API's store (SQLite here; PostgreSQL too where
$DOCKYARD_TEST_POSTGRES_URL is set, as in CI): a restart or a second replica over the
same store keeps them, logout and revocation end them everywhere, expired ones are
removed, and no key can crowd out another's."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from dockyard.api.app import create_app
from dockyard.api.context import Limits
from dockyard.api.dashboard import login as logins
from dockyard.api.store import KeyStore
from dockyard.api.store.models import DashboardLogin
from dockyard.sessions import Sessions, audit, driver
from dockyard.sessions.settings import paths
from tests.api.conftest import state_env

TOKEN = re.compile(r'name="csrf" value="([^"]+)"')


def _rows(store: KeyStore) -> list[DashboardLogin]:
    with store.engine.connect() as connection:
        return list(connection.execute(select(DashboardLogin)))  # type: ignore[arg-type]


def test_a_login_outlives_its_store_object_and_ends_when_closed_expired_or_revoked(
    store: KeyStore, store_url: str
) -> None:
    acme, blue = store.create("acme"), store.create("blue")
    first = logins.Logins(store.engine)
    token = first.open(acme.info.id, "acme", False)
    # Another process (a restart, a replica): a store of its own over the same database.
    other = KeyStore(store_url)
    try:
        again = logins.Logins(other.engine).get(token)
        assert again is not None
        assert (again.key_id, again.tenant, again.admin) == (acme.info.id, "acme", False)
        assert again.csrf == first.get(token).csrf  # type: ignore[union-attr]
        # The token itself is stored nowhere; its digest is the row's key.
        assert token not in repr(_rows(store))
        assert logins.Logins(other.engine).get(token[:-1] + "x") is None
        logins.Logins(other.engine).close(token)
        assert first.get(token) is None
        # A revoked key's login ends (and its row goes).
        token = first.open(blue.info.id, "blue", False)
        other.revoke(blue.info.id)
        assert first.get(token) is None
        assert _rows(store) == []
        # Expired: refused when read, and removed when any login opens.
        gone = logins.Logins(store.engine, ttl=-1)
        stale = gone.open(acme.info.id, "acme", False)
        assert len(_rows(store)) == 1
        assert gone.get(stale) is None
        assert _rows(store) == []
        gone.open(blue.info.id, "blue", False)  # never read again
        fresh = first.open(acme.info.id, "acme", False)
        assert [r.token_sha256 for r in _rows(store)] == [logins._digest(fresh)]
        expires = first.get(fresh).expires  # type: ignore[union-attr]
        assert timedelta(hours=7.9) < expires - logins._now() <= timedelta(hours=8)
    finally:
        other.close()


def test_one_key_cannot_crowd_out_anothers_logins(
    store: KeyStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(logins, "LOGINS_PER_KEY", 3)
    acme, blue = store.create("acme"), store.create("blue")
    kept = logins.Logins(store.engine)
    theirs = kept.open(blue.info.id, "blue", False)
    mine = [kept.open(acme.info.id, "acme", False) for _ in range(5)]
    assert [kept.get(t) is not None for t in mine] == [False, False, True, True, True]
    assert kept.get(theirs) is not None


def _app(base: Path, store: KeyStore, limits: Limits | None = None) -> httpx.AsyncClient:
    where = paths(state_env(base))
    sessions = Sessions(where, driver.load(where, "dockyard.sessions.driver:PulumiDriver"))
    transport = httpx.ASGITransport(
        app=create_app(sessions, store, limits), raise_app_exceptions=False
    )
    return httpx.AsyncClient(transport=transport, base_url="http://dashboard")


@pytest.mark.anyio
async def test_a_second_server_over_the_same_store_keeps_the_login(
    tmp_path: Path, store: KeyStore, store_url: str
) -> None:
    key = store.create("acme").key
    second = KeyStore(store_url)
    try:
        async with _app(tmp_path, store) as one, _app(tmp_path, second) as two:
            form = await one.get("/login")
            match = TOKEN.search(form.text)
            assert match
            logged = await one.post("/login", data={"csrf": match.group(1), "key": key})
            assert logged.status_code == 303
            cookie = one.cookies["dockyard_session"]
            two.cookies.set("dockyard_session", cookie)
            page = await two.get("/")
            assert page.status_code == 200, page.text
            token = TOKEN.search(page.text)
            assert token
            # The same login: its CSRF token works on either server.
            out = await two.post("/logout", data={"csrf": token.group(1)})
            assert out.status_code == 303
            assert (await one.get("/")).headers["location"] == "/login"
            assert json.dumps(_rows(store), default=str).count(cookie) == 0
    finally:
        second.close()


@pytest.mark.anyio
async def test_a_logged_in_viewer_is_charged_against_its_keys_rate_and_is_the_actor(
    tmp_path: Path, store: KeyStore
) -> None:
    issued = store.create("acme")
    # A bucket of 2 that does not refill within the test.
    async with _app(tmp_path, store, Limits(rate=0.001, burst=2)) as client:
        form = await client.get("/login")
        match = TOKEN.search(form.text)
        assert match
        logged = await client.post("/login", data={"csrf": match.group(1), "key": issued.key})
        assert logged.status_code == 303
        pages = [await client.get("/") for _ in range(3)]
    assert [p.status_code for p in pages] == [200, 200, 429], [p.text for p in pages]
    (problem,) = pages[2].json()["error"]["problems"]
    assert problem.startswith(
        f"key {issued.info.id} passed its rate (0.001 requests/s, burst 2): retry in "
    ), problem
    dashboard = [
        e["actor"] for e in audit.read(tmp_path / "state" / "audit.jsonl") if e["action"] == "api"
    ]
    assert dashboard[-3:] == [f"key:{issued.info.id}"] * 3
