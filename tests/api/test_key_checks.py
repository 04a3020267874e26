"""Key checks in groups (issue 27's list benchmark): keys that miss the key cache at the
same time (200 applications' keys expiring together every ``KEY_CACHE_S``, or first used
together) are checked by one store query, not one transaction each queued on the store's
lock; a key's last use that cannot be written (SQLite's ``database is locked``) never turns
a live key's request into an error; and no check is answered by a read that began before
it arrived, so a revocation is never missed by joining an older read."""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import sqlite3
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, event, text

from dockyard.api import store as store_module
from dockyard.api.principal import KeyCache
from dockyard.api.store import Checked, IssuedKey, KeyInfo, KeyStore, default_url
from dockyard.api.store.models import ApiKey
from tests.api.conftest import Api

pytestmark = pytest.mark.anyio


class _Ctx:
    """What :meth:`KeyCache.check` uses of the server's context: the store and its pool."""

    def __init__(self, store: Any) -> None:
        self.store = store

    async def call(self, function: Any, *args: Any) -> Any:
        return await asyncio.to_thread(function, *args)


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class _Counted:
    """A real store whose group checks are counted."""

    def __init__(self, store: KeyStore) -> None:
        self.store = store
        self.groups: list[int] = []

    def checked(self, presented: Sequence[str]) -> Checked:
        self.groups.append(len(presented))
        return self.store.checked(presented)

    def record_use(self, key_ids: Sequence[str], now: datetime) -> None:
        self.store.record_use(key_ids, now)


def _issued(store: KeyStore, count: int, tenant: str) -> list[IssuedKey]:
    """``count`` keys as ``KeyStore.create`` makes them, written in one transaction (a
    transaction each costs seconds for 200 on a busy disk)."""
    made = [
        (secrets.token_hex(6), secrets.token_urlsafe(32), datetime.now(UTC)) for _ in range(count)
    ]
    rows = [
        ApiKey(
            id=key_id,
            tenant=tenant,
            admin=False,
            secret_sha256=hashlib.sha256(secret.encode()).hexdigest(),
            created_at=now,
            last_used_at=None,
            revoked_at=None,
        )
        for key_id, secret, now in made
    ]
    with store._session() as session:
        session.add_all(rows)
    return [
        IssuedKey(KeyInfo.of(row), f"{store_module.KEY_PREFIX}{key_id}_{secret}")
        for row, (key_id, secret, _) in zip(rows, made, strict=True)
    ]


def _statements(store: KeyStore) -> list[str]:
    seen: list[str] = []
    event.listen(
        store.engine,
        "before_cursor_execute",
        lambda _c, _cur, statement, *_rest: seen.append(statement.split()[0].upper()),
    )
    return seen


def _revoke_elsewhere(url: str, key_id: str) -> None:
    """Another process's revocation: plain SQL this process's ORM never sees."""
    elsewhere = create_engine(url)
    try:
        with elsewhere.begin() as connection:
            connection.execute(
                text("UPDATE api_keys SET revoked_at = :now WHERE id = :id"),
                {"now": datetime.now(UTC), "id": key_id},
            )
    finally:
        elsewhere.dispose()


def test_many_keys_are_checked_by_one_read_and_one_write(store: KeyStore) -> None:
    issued = _issued(store, 30, "acme")
    assert store.authenticate(issued[0].key) is not None  # made as create makes them
    revoked = store.create("blue")
    store.revoke(revoked.info.id)
    wrong = issued[0].key[:-1] + ("A" if issued[0].key[-1] != "A" else "B")
    unknown = "dk_000000000000_" + "x" * 43
    presented = [i.key for i in issued] + [revoked.key, wrong, unknown, "not a key", ""]
    seen = _statements(store)
    answers = store.authenticate_many(presented)
    assert [a.id if a else None for a in answers] == [i.info.id for i in issued] + [None] * 5
    assert {a.tenant for a in answers if a} == {"acme"}
    assert seen.count("SELECT") == 1  # one query for every key
    assert seen.count("UPDATE") == 1  # their first use, written at once
    used = {k.id: k.last_used_at for k in store.list("acme")}
    assert all(used[i.info.id] is not None for i in issued)
    seen.clear()
    assert [a.id if a else None for a in store.authenticate_many(presented[:30])] == [
        i.info.id for i in issued
    ]
    assert seen.count("UPDATE") == 0  # used within the step: nothing to write


def test_a_last_use_the_store_cannot_write_does_not_fail_the_check(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = default_url(tmp_path / "state")
    store = KeyStore(url)
    try:
        issued = store.create("acme")
        store.engine.dispose()  # new connections wait 50 ms for a lock, not SQLite's 5 s
        event.listen(
            store.engine,
            "connect",
            lambda connection, _record: connection.execute("PRAGMA busy_timeout = 50"),
        )
        # Another writer holds the write lock (200 first uses at once did): reads go on,
        # the last-use write answers "database is locked".
        holder = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
        try:
            holder.execute("BEGIN IMMEDIATE")
            info = store.authenticate(issued.key)
            assert info is not None
            assert info.id == issued.info.id
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        assert "database is locked" in caplog.text
        assert issued.info.id in caplog.text
        assert store.list("acme")[0].last_used_at is None  # not written this time...
        assert store.authenticate(issued.key) is not None
        assert store.list("acme")[0].last_used_at is not None  # ...but at the next check
    finally:
        store.close()


async def test_keys_missing_the_cache_at_once_share_a_few_reads(
    store: KeyStore, store_url: str
) -> None:
    issued = _issued(store, 200, "acme")
    counted = _Counted(store)
    ctx = _Ctx(counted)
    clock = _Clock()
    cache = KeyCache(2.0, clock)

    async def check_all() -> list[str | None]:
        answers = await asyncio.gather(*(cache.check(ctx, i.key) for i in issued))  # type: ignore[arg-type]
        return [a.id if a else None for a in answers]

    assert await check_all() == [i.info.id for i in issued]
    assert len(counted.groups) <= 3, counted.groups  # first uses: not 200 reads
    assert sum(counted.groups) == 200
    assert await check_all() == [i.info.id for i in issued]
    assert len(counted.groups) <= 3  # from the cache
    # All expire together; one was revoked elsewhere meanwhile: refused once they expire.
    _revoke_elsewhere(store_url, issued[7].info.id)
    clock.now += 2.0
    before = len(counted.groups)
    again = await check_all()
    assert again[7] is None
    assert again[:7] + again[8:] == [i.info.id for i in issued[:7] + issued[8:]]
    assert len(counted.groups) - before <= 3, counted.groups


class _Gated:
    """A store whose read takes what is live when it starts, then waits for a gate."""

    def __init__(self, live: dict[str, KeyInfo]) -> None:
        self.live = live
        self.gate = threading.Event()
        self.started = threading.Event()
        self.reads = 0

    def checked(self, presented: Sequence[str]) -> Checked:
        self.reads += 1
        answers = [self.live.get(p) for p in presented]
        self.started.set()
        assert self.gate.wait(30), "the test never opened the gate"
        return Checked(answers, [], datetime.now(UTC))


def _info(key_id: str = "0123456789ab") -> KeyInfo:
    return KeyInfo(
        id=key_id,
        tenant="acme",
        admin=False,
        created_at=datetime.now(UTC),
        last_used_at=None,
        revoked_at=None,
    )


async def test_a_check_never_joins_a_read_that_began_before_it() -> None:
    info = _info()
    store = _Gated({"dk_key": info})
    ctx = _Ctx(store)
    cache = KeyCache()
    first = asyncio.ensure_future(cache.check(ctx, "dk_key"))  # type: ignore[arg-type]
    assert await asyncio.to_thread(store.started.wait, 30)
    # Revoked elsewhere while that read runs (its snapshot still has the key live)...
    del store.live["dk_key"]
    second = asyncio.ensure_future(cache.check(ctx, "dk_key"))  # type: ignore[arg-type]
    await asyncio.sleep(0.05)
    store.gate.set()
    # ...so the check asked after it is answered by a read begun after it: refused.
    assert await first == info
    assert await second is None
    assert store.reads == 2


async def test_a_failed_read_is_every_waiting_checks_error_and_the_next_read_runs() -> None:
    class Broken:
        fail = True

        def checked(self, presented: Sequence[str]) -> Checked:
            if self.fail:
                raise RuntimeError("the store is down")
            return Checked([None for _ in presented], [], datetime.now(UTC))

    broken = Broken()
    ctx = _Ctx(broken)
    cache = KeyCache()
    answers = await asyncio.gather(
        *(cache.check(ctx, f"dk_{n}") for n in range(5)),  # type: ignore[arg-type]
        return_exceptions=True,
    )
    assert all(isinstance(a, RuntimeError) for a in answers), answers
    broken.fail = False
    assert await cache.check(ctx, "dk_0") is None  # type: ignore[arg-type]


async def test_200_keys_listing_at_once_are_checked_in_a_few_reads(api: Api) -> None:
    headers = [{"Authorization": f"Bearer {i.key}"} for i in _issued(api.store, 200, "acme")]
    app = api.client._transport.app  # type: ignore[attr-defined]  # the app under test
    cache: KeyCache = app.state.keys
    started = time.monotonic()
    codes = await asyncio.gather(*(api.client.get("/api/sessions", headers=h) for h in headers))
    assert [c.status_code for c in codes] == [200] * 200, codes[0].text
    assert cache.reads <= 20, (cache.reads, time.monotonic() - started)  # was one a key


class _Live:
    """A store of live keys (``live``) counting its reads; its last-use writes wait for
    ``writes`` to open."""

    def __init__(self, live: dict[str, KeyInfo]) -> None:
        self.live = live
        self.reads = 0
        self.refreshes: list[list[str]] = []
        self.writes = threading.Event()
        self.written: list[str] = []

    def checked(self, presented: Sequence[str]) -> Checked:
        self.reads += 1
        answers = [self.live.get(p) for p in presented]
        due = [a.id for a in answers if a is not None]
        return Checked(answers, due, datetime.now(UTC))

    def refreshed(self, key_ids: Sequence[str]) -> dict[str, KeyInfo]:
        self.refreshes.append(list(key_ids))
        return {i.id: i for i in self.live.values() if i.id in key_ids}

    def record_use(self, key_ids: Sequence[str], now: datetime) -> None:
        assert self.writes.wait(30), "the test never let the write through"
        self.written += key_ids


async def test_keys_in_use_are_read_again_together_and_dropped_once_revoked() -> None:
    infos = {f"dk_{n}": _info(f"{n:012d}") for n in range(4)}
    store = _Live(dict(infos))
    store.writes.set()
    ctx = _Ctx(store)
    clock = _Clock()
    cache = KeyCache(2.0, clock, in_use_s=1.0)
    for key, info in infos.items():
        assert await cache.check(ctx, key) == info  # type: ignore[arg-type]
    clock.now += 0.6
    for key in ("dk_0", "dk_1", "dk_2"):  # dk_3 is not used again
        assert await cache.check(ctx, key) == infos[key]  # type: ignore[arg-type]
    del store.live["dk_2"]  # revoked in the store meanwhile
    clock.now += 0.6  # dk_3 last used 1.2 s ago: no longer in use
    assert await cache.refresh(ctx) is True  # type: ignore[arg-type]
    assert store.refreshes == [["000000000000", "000000000001", "000000000002"]]  # one read
    assert cache.get(cache.slot("dk_2")) is None  # dropped at once, not at its time's end
    clock.now += 1.9  # past the first reads' bound, within the refresh's
    assert cache.get(cache.slot("dk_0")) == infos["dk_0"]
    assert cache.get(cache.slot("dk_1")) == infos["dk_1"]
    assert cache.get(cache.slot("dk_3")) is None  # not in use: not read again, ran out
    # None used in the last second: nothing read.
    assert await cache.refresh(ctx) is False  # type: ignore[arg-type]
    assert len(store.refreshes) == 1


async def test_a_refresh_never_renews_past_a_revocation_in_this_process() -> None:
    info = _info()
    store = _Live({"dk_key": info})
    store.writes.set()
    ctx = _Ctx(store)
    cache = KeyCache(2.0, _Clock())
    assert await cache.check(ctx, "dk_key") == info  # type: ignore[arg-type]
    assert await cache.check(ctx, "dk_key") == info  # type: ignore[arg-type]  # used

    def refreshed(key_ids: Sequence[str]) -> dict[str, KeyInfo]:
        KeyCache.revoked()  # committed while the refresh read ran
        return {info.id: info}

    store.refreshed = refreshed  # type: ignore[method-assign]
    assert await cache.refresh(ctx) is True  # type: ignore[arg-type]
    assert cache.get(cache.slot("dk_key")) is None


async def test_the_refresher_runs_while_keys_are_used_and_stops_when_they_are_not() -> None:
    info = _info()
    store = _Live({"dk_key": info})
    store.writes.set()
    ctx = _Ctx(store)
    clock = _Clock()
    cache = KeyCache(0.2, clock, in_use_s=1.0)  # refreshes every 0.05 s (real time)
    assert await cache.check(ctx, "dk_key") == info  # type: ignore[arg-type]
    assert await cache.check(ctx, "dk_key") == info  # type: ignore[arg-type]
    for _ in range(3000):  # at most 30 s
        if len(store.refreshes) >= 2:
            break
        await asyncio.sleep(0.01)
    assert store.refreshes[:2] == [[info.id], [info.id]]  # again and again while in use
    clock.now += 1.0  # no longer in use: it stops, and the group goes
    for _ in range(3000):
        if not cache._groups:
            break
        await asyncio.sleep(0.01)
    assert not cache._groups
    count = len(store.refreshes)
    await asyncio.sleep(0.3)
    assert len(store.refreshes) == count


async def test_checks_are_answered_before_their_last_use_is_written() -> None:
    infos = {f"dk_{n}": _info(f"{n:012d}") for n in range(3)}
    store = _Live(dict(infos))
    ctx = _Ctx(store)
    cache = KeyCache()
    answers = await asyncio.wait_for(
        asyncio.gather(*(cache.check(ctx, k) for k in infos)),  # type: ignore[arg-type]
        timeout=30,
    )
    assert answers == list(infos.values())
    assert store.written == []  # the write still waits; the answers did not
    store.writes.set()
    for _ in range(300):
        if store.written:
            break
        await asyncio.sleep(0.01)
    assert sorted(store.written) == sorted(i.id for i in infos.values())
