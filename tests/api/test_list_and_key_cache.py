"""What the list benchmark's shortcuts must not change (issue 27): a key revoked in this
process is refused at once and one revoked elsewhere within the key cache's bound
(principal.KEY_CACHE_S); concurrent lists share a read yet each sees every create and
destroy done before it was asked, and only its own tenant's sessions."""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import UTC, datetime

import pytest
from sqlalchemy import create_engine, text

from dockyard.api.principal import KEY_CACHE_MAX_AGE_S, KeyCache, watch_revocations
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


def _revoke_elsewhere(store_url: str, key_id: str) -> None:
    """Another process's revocation: a plain SQL write this process's ORM never sees."""
    elsewhere = create_engine(store_url)
    try:
        with elsewhere.begin() as connection:
            connection.execute(
                text("UPDATE api_keys SET revoked_at = :now WHERE id = :id"),
                {"now": datetime.now(UTC), "id": key_id},
            )
    finally:
        elsewhere.dispose()


async def test_the_servers_count_of_revocations_keeps_keys_without_a_read_each(
    api: Api, store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    bound = 0.4
    app = api.client._transport.app  # type: ignore[attr-defined]  # the app under test
    monkeypatch.setattr(app.state, "keys", KeyCache(bound))
    reads: list[str] = []
    authenticate = api.store.authenticate

    def counted(presented: str) -> object:
        reads.append(presented)
        return authenticate(presented)

    monkeypatch.setattr(api.store, "authenticate", counted)
    issued, other = api.store.create("acme"), api.store.create("acme")
    headers = {"Authorization": f"Bearer {issued.key}"}
    watching = asyncio.create_task(watch_revocations(app, app.state.context))
    try:
        assert await _codes(api, headers, 1) == [200]
        # Five bounds long, one request every tenth of one: the key is read when first
        # seen and once more when the first count sets the baseline, never per expiry.
        end = time.monotonic() + 5 * bound
        while time.monotonic() < end:
            assert await _codes(api, headers, 1) == [200]
            await asyncio.sleep(bound / 10)
        assert len(reads) <= 2, len(reads)
        # Another process revokes ANOTHER key: the count moved, every entry is read again
        # (this one is still live)...
        _revoke_elsewhere(store_url, other.info.id)
        await asyncio.sleep(bound + 0.2)
        before = len(reads)
        assert await _codes(api, headers, 1) == [200]
        assert len(reads) == before + 1
        # ...and this one, revoked elsewhere, is refused within the bound.
        _revoke_elsewhere(store_url, issued.info.id)
        await asyncio.sleep(bound + 0.2)
        assert await _codes(api, headers, 1) == [401]
    finally:
        watching.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watching


def test_confirmations_extend_trust_only_from_an_unchanged_count() -> None:
    clock = [100.0]
    cache = KeyCache(2.0)
    info = object()
    slot = cache.slot("dk_x_y")

    def at(moment: float) -> object:
        clock[0] = moment
        return cache.get(slot)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(time, "monotonic", lambda: clock[0])
        cache.put(slot, info, KeyCache.generation, 100.0)  # type: ignore[arg-type]
        assert at(101.9) is info
        assert at(102.0) is None  # no confirmation: the bound from its read
        cache.put(slot, info, KeyCache.generation, 102.0)  # type: ignore[arg-type]
        cache.confirm(3, 102.5)  # the first count: a baseline, every entry goes
        assert at(102.6) is None
        cache.put(slot, info, KeyCache.generation, 102.6)  # type: ignore[arg-type]
        cache.confirm(3, 103.5)
        cache.confirm(3, 105.0)
        assert at(106.9) is info  # trusted from the latest unchanged count's start
        assert at(107.0) is None
        cache.put(slot, info, KeyCache.generation, 107.0)  # type: ignore[arg-type]
        for second in range(108, 168):
            cache.confirm(3, float(second))
        assert at(166.9) is info
        assert KEY_CACHE_MAX_AGE_S == 60.0
        assert at(167.0) is None  # KEY_CACHE_MAX_AGE_S from its read, however confirmed
        started, generation = 167.0, KeyCache.generation
        cache.confirm(4, 167.5)  # a revocation elsewhere: the count moved
        cache.put(slot, info, generation, started)  # type: ignore[arg-type]  # raced it
        assert at(167.6) is None
        cache.confirm(4, 168.0)
        assert at(168.1) is None  # the raced read was not kept
