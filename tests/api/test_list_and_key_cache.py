"""What the list benchmark's shortcuts must not change (issue 27): a key revoked in this
process is refused at once and one revoked elsewhere within the key cache's bound
(principal.KEY_CACHE_S); concurrent lists share a read yet each sees every create and
destroy done before it was asked, and only its own tenant's sessions."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

import pytest
from sqlalchemy import create_engine, text

from dockyard.api.principal import KeyCache
from dockyard.api.sessions import SessionRow, _pages
from tests.api.conftest import Api
from tests.api.test_app import _record

pytestmark = pytest.mark.anyio


async def _codes(api: Api, headers: dict[str, str], times: int = 3) -> list[int]:
    return [
        (await api.client.get("/api/sessions", headers=headers)).status_code for _ in range(times)
    ]


async def test_a_key_revoked_in_this_process_is_refused_at_once(api: Api) -> None:
    issued = api.store.create("acme")
    headers = {"Authorization": f"Bearer {issued.key}"}
    assert await _codes(api, headers) == [200, 200, 200]  # now trusted from the cache
    api.store.revoke(issued.info.id)
    assert await _codes(api, headers) == [401, 401, 401]
    # Through the API as well, by the key itself.
    other = api.store.create("acme")
    mine = {"Authorization": f"Bearer {other.key}"}
    assert await _codes(api, mine) == [200, 200, 200]
    revoked = await api.client.delete(f"/api/keys/{other.info.id}", headers=mine)
    assert revoked.status_code == 200
    assert await _codes(api, mine, 1) == [401]


async def test_a_key_revoked_by_another_process_is_refused_within_the_bound(
    api: Api, store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    bound = 0.3
    app = api.client._transport.app  # type: ignore[attr-defined]  # the app under test
    monkeypatch.setattr(app.state, "keys", KeyCache(bound))
    issued = api.store.create("acme")
    headers = {"Authorization": f"Bearer {issued.key}"}
    assert await _codes(api, headers, 1) == [200]
    # Another process's revocation: a plain SQL write this process's ORM never sees.
    elsewhere = create_engine(store_url)
    try:
        with elsewhere.begin() as connection:
            connection.execute(
                text("UPDATE api_keys SET revoked_at = :now WHERE id = :id"),
                {"now": datetime.now(UTC), "id": issued.info.id},
            )
    finally:
        elsewhere.dispose()
    time.sleep(bound + 0.2)
    assert await _codes(api, headers, 1) == [401]


async def test_a_check_that_raced_a_revocation_is_not_kept() -> None:
    cache = KeyCache()
    info = object()
    slot = cache.slot("dk_x_y")
    generation, started = KeyCache.generation, time.monotonic()
    KeyCache.revoked()  # a revocation committed while that store read ran
    cache.put(slot, info, generation, started)  # type: ignore[arg-type]
    assert cache.get(slot) is None
    cache.put(slot, info, KeyCache.generation, time.monotonic())  # type: ignore[arg-type]
    assert cache.get(slot) is info
    KeyCache.revoked()
    assert cache.get(slot) is None


async def test_concurrent_lists_share_reads_and_see_every_create_and_destroy_before_them(
    api: Api,
) -> None:
    for i in range(3):
        _record(api, f"a{i}", "acme")
    _record(api, "b0", "blue")
    acme, blue = api.key("acme"), api.key("blue")

    async def listed(headers: dict[str, str]) -> list[str]:
        answer = await api.client.get("/api/sessions", headers=headers)
        assert answer.status_code == 200, answer.text
        return [row["sessionId"] for row in answer.json()["items"]]

    before = _pages.runs
    answers = await asyncio.gather(*(listed(h) for h in [acme] * 20 + [blue] * 20))
    assert answers == [["a0", "a1", "a2"]] * 20 + [["b0"]] * 20
    assert _pages.runs - before < 40  # shared (how many depends on the scheduling)
    # A create, then the next list (and every one at once with it) has it...
    _record(api, "a3", "acme")
    again = await asyncio.gather(*(listed(acme) for _ in range(10)))
    assert again == [["a0", "a1", "a2", "a3"]] * 10
    # ...and a destroy.
    api.sessions.registry.remove("acme.a1")
    assert await listed(acme) == ["a0", "a2", "a3"]
    # An answer carries the rows' fields only (never the manifest's path on the server).
    row = (await api.client.get("/api/sessions", headers=blue)).json()["items"][0]
    assert sorted(row) == sorted(SessionRow.model_fields)
