"""A key's last use is bookkeeping (issue 27's list benchmark): when the store cannot write
it — SQLite's ``database is locked`` when 200 keys are first used at once, each check
writing its key's ``last_used_at`` — the check still answers (the write is logged and
tried again at the key's next check); before, the request answered 500."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import event

from dockyard.api.store import KeyStore, default_url


@pytest.fixture
def impatient(tmp_path: Path) -> Iterator[tuple[KeyStore, str]]:
    """A SQLite store whose connections wait 50 ms for a lock, not SQLite's 5 s."""
    url = default_url(tmp_path / "state")
    store = KeyStore(url)
    store.engine.dispose()
    event.listen(
        store.engine,
        "connect",
        lambda connection, _record: connection.execute("PRAGMA busy_timeout = 50"),
    )
    try:
        yield store, url.removeprefix("sqlite:///")
    finally:
        store.close()


def test_a_last_use_the_store_cannot_write_does_not_fail_the_check(
    impatient: tuple[KeyStore, str], caplog: pytest.LogCaptureFixture
) -> None:
    store, path = impatient
    issued = store.create("acme")
    # Another writer holds the write lock: reads go on, the last-use write is refused.
    holder = sqlite3.connect(path, isolation_level=None)
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
