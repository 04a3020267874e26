"""What the list benchmark's shortcuts must not change (issue 27): a key revoked in this
process is refused at once and one revoked elsewhere within the key cache's bound
(principal.KEY_CACHE_S); concurrent lists share a read yet each sees every create and
destroy done before it was asked, and only its own tenant's sessions."""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import UTC, datetime
from typing import Any

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


REVOKE = "UPDATE api_keys SET revoked_at = :now WHERE id = :id"


def _elsewhere(store_url: str, statement: str, key_id: str) -> None:
    """Another process's change to a key: plain SQL this process's ORM never sees."""
    elsewhere = create_engine(store_url)
    try:
        with elsewhere.begin() as connection:
            values = {"now": datetime.now(UTC), "id": key_id}
            connection.execute(
                text(statement), {k: v for k, v in values.items() if f":{k}" in statement}
            )
    finally:
        elsewhere.dispose()


def _with_key_cache(api: Api, monkeypatch: pytest.MonkeyPatch, bound: float) -> Any:
    """The app under test, its key cache trusting keys for ``bound`` seconds."""
    app = api.client._transport.app  # type: ignore[attr-defined]
    monkeypatch.setattr(app.state, "keys", KeyCache(bound))
    return app


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
    _with_key_cache(api, monkeypatch, bound)
    issued = api.store.create("acme")
    headers = {"Authorization": f"Bearer {issued.key}"}
    assert await _codes(api, headers, 1) == [200]
    _elsewhere(store_url, REVOKE, issued.info.id)
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


async def test_the_server_confirms_trusted_keys_in_one_read_and_drops_what_is_gone(
    api: Api, store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    bound = 0.4
    app = _with_key_cache(api, monkeypatch, bound)
    reads: list[str] = []
    authenticate = api.store.authenticate

    def counted(presented: str) -> object:
        reads.append(presented)
        return authenticate(presented)

    monkeypatch.setattr(api.store, "authenticate", counted)
    first, second, third = (api.store.create("acme") for _ in range(3))
    keys = {k.info.id: {"Authorization": f"Bearer {k.key}"} for k in (first, second, third)}
    watching = asyncio.create_task(watch_revocations(app, app.state.context))
    try:
        # Five bounds long, one request of each key every tenth of one: each key is read
        # once, never again at its expiry (the server confirmed them meanwhile).
        end = time.monotonic() + 5 * bound
        while time.monotonic() < end:
            for headers in keys.values():
                assert await _codes(api, headers, 1) == [200]
            await asyncio.sleep(bound / 10)
        assert len(reads) == 3, len(reads)
        # Another process revokes one key and deletes another's row: both are refused
        # within the bound, and the third is still trusted without a read.
        _elsewhere(store_url, REVOKE, first.info.id)
        _elsewhere(store_url, "DELETE FROM api_keys WHERE id = :id", second.info.id)
        await asyncio.sleep(bound + 0.2)
        assert await _codes(api, keys[first.info.id], 1) == [401]
        assert await _codes(api, keys[second.info.id], 1) == [401]
        before = len(reads)
        assert await _codes(api, keys[third.info.id], 1) == [200]
        assert len(reads) == before
    finally:
        watching.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watching


def test_a_confirmation_extends_trust_only_to_what_it_found_live() -> None:
    clock = [100.0]
    cache = KeyCache(2.0)

    class Info:
        def __init__(self, key_id: str) -> None:
            self.id = key_id

    a, b = cache.slot("dk_a_x"), cache.slot("dk_b_x")

    def at(moment: float, slot: bytes = a) -> object:
        clock[0] = moment
        return cache.get(slot)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(time, "monotonic", lambda: clock[0])
        info_a, info_b = Info("a"), Info("b")
        cache.put(a, info_a, KeyCache.generation, 100.0)  # type: ignore[arg-type]
        cache.put(b, info_b, KeyCache.generation, 100.0)  # type: ignore[arg-type]
        assert at(101.9) is info_a
        assert at(102.0) is None  # no confirmation: the bound from its read
        cache.put(a, info_a, KeyCache.generation, 102.0)  # type: ignore[arg-type]
        cache.put(b, info_b, KeyCache.generation, 102.0)  # type: ignore[arg-type]
        asked = cache.trusted()
        assert asked == {a: "a", b: "b"}
        cache.confirm(asked, {"a"}, 103.0)  # b gone from the store (revoked or deleted)
        assert at(103.1, b) is None
        assert at(104.9) is info_a  # trusted from the confirmation's start
        assert at(105.0) is None
        # A read begun before a confirmation and put after it asked: not confirmed by it.
        cache.put(a, info_a, KeyCache.generation, 105.0)  # type: ignore[arg-type]
        cache.confirm({}, {"a"}, 105.5)
        assert at(106.9) is info_a
        assert at(107.0) is None
        # However often confirmed, read again after KEY_CACHE_MAX_AGE_S.
        cache.put(a, info_a, KeyCache.generation, 107.0)  # type: ignore[arg-type]
        for second in range(108, 168):
            cache.confirm(cache.trusted(), {"a"}, float(second))
        assert KEY_CACHE_MAX_AGE_S == 60.0
        assert at(166.9) is info_a
        assert at(167.0) is None
