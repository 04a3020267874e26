"""The API's fixtures: a key store on SQLite and on PostgreSQL (parametrized), and the app
in-process over httpx's ASGI transport on a state directory of its own.

PostgreSQL comes from ``$DOCKYARD_TEST_POSTGRES_URL`` (.ci/run starts Debian's server and
sets it); without it the PostgreSQL cases FAIL under CI and are skipped elsewhere.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text

from dockyard.api.app import create_app
from dockyard.api.context import Limits
from dockyard.api.store import KeyStore, default_url
from dockyard.sessions import Sessions, driver
from dockyard.sessions.settings import paths

POSTGRES_VARIABLE = "DOCKYARD_TEST_POSTGRES_URL"
STORES = ("sqlite", "postgres")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def postgres_url() -> str:
    url = os.environ.get(POSTGRES_VARIABLE)
    if not url:
        if os.environ.get("CI"):
            pytest.fail(f"${POSTGRES_VARIABLE} is not set: .ci/run starts PostgreSQL and sets it")
        pytest.skip(f"${POSTGRES_VARIABLE} is not set (no PostgreSQL to test against)")
    return url


def fresh_postgres(url: str) -> str:
    """The database emptied of the store's tables, so the migrations run from nothing."""
    engine = create_engine(url)
    with engine.begin() as connection:
        connection.execute(
            text(
                "DROP TABLE IF EXISTS dashboard_logins, webhook_deliveries, webhooks, "
                "event_sources, events, api_keys, alembic_version"
            )
        )
    engine.dispose()
    return url


@pytest.fixture(params=STORES)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return default_url(tmp_path / "state")
    return fresh_postgres(postgres_url())


@pytest.fixture
def store(store_url: str) -> Iterator[KeyStore]:
    opened = KeyStore(store_url)
    try:
        yield opened
    finally:
        opened.close()


@dataclass
class Api:
    client: httpx.AsyncClient
    store: KeyStore
    sessions: Sessions
    state: Path
    env: dict[str, str]

    def key(self, tenant: str | None = None, admin: bool = False) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.store.create(tenant, admin).key}"}


def state_env(base: Path) -> dict[str, str]:
    state = base / "state"
    state.mkdir(parents=True, exist_ok=True)
    settings = base / "settings.yaml"
    if not settings.exists():
        settings.write_text(json.dumps({"healthcheck": {"interval": "5s"}}))
    return {"HOME": str(base), "DOCKYARD_STATE_DIR": str(state), "DOCKYARD_CONFIG": str(settings)}


@pytest.fixture
def limits() -> Limits:
    return Limits()


@pytest.fixture
async def api(tmp_path: Path, store: KeyStore, limits: Limits) -> AsyncIterator[Api]:
    env = state_env(tmp_path)
    where = paths(env)
    # The host's image as `dockyard image build` records it (creates are not run here).
    (where.state / "image.json").write_text(json.dumps({"imageRef": "dockyard-core:test"}))
    sessions = Sessions(where, driver.load(where, "dockyard.sessions.driver:PulumiDriver"))
    app = create_app(sessions, store, limits)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
        yield Api(client, store, sessions, where.state, env)
