"""A key's last use is written at most once a minute (api.store.LAST_USED_STEP): a write
on every request serialised all requests on the store's write lock (issue 27's list
benchmark). It is still written on first use and again once the step has passed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from dockyard.api import store as store_module
from dockyard.api.store import KeyStore


def _last_used(store: KeyStore, key_id: str) -> datetime | None:
    (info,) = [k for k in store.list() if k.id == key_id]
    return info.last_used_at


def test_last_use_is_written_at_most_once_a_step(
    store: KeyStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [datetime(2026, 12, 7, 0, 0, tzinfo=UTC)]
    monkeypatch.setattr(store_module, "_now", lambda: clock[0])
    issued = store.create("acme")
    assert _last_used(store, issued.info.id) is None
    assert store.authenticate(issued.key) is not None
    first = clock[0]
    assert _last_used(store, issued.info.id) == first
    clock[0] = first + store_module.LAST_USED_STEP - timedelta(seconds=1)
    assert store.authenticate(issued.key) is not None
    assert _last_used(store, issued.info.id) == first  # within the step: not written
    clock[0] = first + store_module.LAST_USED_STEP
    assert store.authenticate(issued.key) is not None
    assert _last_used(store, issued.info.id) == clock[0]
    clock[0] = first  # a clock set back: written again, never left in the future
    assert store.authenticate(issued.key) is not None
    assert _last_used(store, issued.info.id) == first
