"""Warm pool bookkeeping (issue 29 item 1): claims from many processes at once,
one session per member ever, refill and re-roll plans."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path
from typing import Any

import pytest

from dockyard.config.pools import Pool
from dockyard.contract import SESSION_ID
from dockyard.sessions.e2b import SANDBOX_ID
from dockyard.sessions.pool import PoolStore, digest, new_member_id

IMAGE = "dockyard/core:1"


def _pool(**fields: Any) -> Pool:
    return Pool.model_validate({"min": 3, **fields})


class _SlowLister(PoolStore):
    """Lists free members, then waits: every process sees the same list before any
    claims, so only the exclusive claim file can keep two from taking one member."""

    def free(self, pool: Pool, image_ref: str) -> list[Any]:
        found = super().free(pool, image_ref)
        time.sleep(0.3)
        return found


def _claimer(root: str, start: Any, results: Any, index: int) -> None:
    start.wait(10)
    claim = _SlowLister(Path(root)).claim(_pool(), IMAGE, f"s{index}", "acme")
    results.put((index, claim.member.member if claim else None))


def test_claims_from_ten_processes_at_once_never_share_a_member(tmp_path: Path) -> None:
    store = PoolStore(tmp_path)
    made = {store.add(_pool(), new_member_id(), IMAGE).member for _ in range(6)}
    context = multiprocessing.get_context("fork")
    start, results = context.Event(), context.Queue()
    workers = [
        context.Process(target=_claimer, args=(str(tmp_path), start, results, i)) for i in range(10)
    ]
    for worker in workers:
        worker.start()
    start.set()
    got = dict(results.get(timeout=30) for _ in workers)
    for worker in workers:
        worker.join(10)
    taken = [member for member in got.values() if member is not None]
    assert sorted(taken) == sorted(made)  # every member once, none twice
    assert sum(member is None for member in got.values()) == 4  # the rest fall back to cold
    for index, member in got.items():
        if member is not None:
            assert store.claim_of(member) == {
                "session": f"s{index}",
                "tenant": "acme",
                "claimedAt": store.claim_of(member)["claimedAt"],  # type: ignore[index]
            }
    assert store.free(_pool(), IMAGE) == []


def test_a_member_serves_one_session_ever(tmp_path: Path) -> None:
    store = PoolStore(tmp_path)
    member = store.add(_pool(), new_member_id(), IMAGE)
    first = store.claim(_pool(), IMAGE, "one", None)
    assert first is not None
    assert first.member == member
    assert store.claim(_pool(), IMAGE, "two", None) is None
    # The record coming back (a crash, a copy) does not make it claimable again.
    store.forget(member.member)
    with pytest.raises(ValueError, match="claimed once"):
        store.add(_pool(), member.member, IMAGE)
    assert store.claim(_pool(), IMAGE, "two", None) is None
    assert store.claim_of(member.member)["session"] == "one"  # type: ignore[index]


def test_claims_match_backend_variant_profile_settings_and_image(tmp_path: Path) -> None:
    store = PoolStore(tmp_path)
    python = _pool(variant="python")
    store.add(python, new_member_id(), IMAGE)
    assert store.claim(_pool(), IMAGE, "s", None) is None  # core wanted, python ready
    assert store.claim(_pool(backend="codex", variant="python"), IMAGE, "s", None) is None
    assert store.claim(python, "dockyard/core:2", "s", None) is None  # another image
    assert store.claim(_pool(variant="python", min=4), IMAGE, "s", None) is None  # changed
    assert store.claim(python, IMAGE, "s", None) is not None


def test_refill_tops_up_to_min_within_max_and_rerolls_changed_members(tmp_path: Path) -> None:
    store = PoolStore(tmp_path)
    pool = _pool(min=3, max=4)
    assert store.plan([pool], IMAGE).create == {pool.label: 3}
    kept = store.add(pool, new_member_id(), IMAGE)
    with store.creating(pool, new_member_id()):
        # ready 1, being made 1: two more reach min (3) and stay within max (4)
        assert store.plan([pool], IMAGE).create == {pool.label: 2}
    tight = _pool(min=3, max=3)
    with store.creating(tight, new_member_id()), store.creating(tight, new_member_id()):
        # its ready members are of other settings (none); 2 being made, max 3: one more
        assert store.plan([tight], IMAGE).create == {tight.label: 1}
        ready = store.add(tight, new_member_id(), IMAGE)
        assert store.plan([tight], IMAGE).create == {}  # 1 ready + 2 being made = max
    assert store.plan([pool], IMAGE).reroll == [ready]  # made with other settings
    store.forget(ready.member)
    assert store.plan([pool], IMAGE).reroll == []
    # A new image re-rolls the unclaimed member and makes three fresh ones.
    plan = store.plan([pool], "dockyard/core:2")
    assert (plan.reroll, plan.create) == ([kept], {pool.label: 3})
    # A pool dropped from the settings re-rolls its members; a claimed member is a
    # session now and is never re-rolled.
    other = store.add(_pool(variant="go"), new_member_id(), IMAGE)
    assert store.plan([pool], IMAGE).reroll == [other]
    assert store.claim(_pool(variant="go"), IMAGE, "s", None) is not None
    assert store.plan([pool], IMAGE).reroll == []


def test_member_names_follow_the_session_grammar(tmp_path: Path) -> None:
    store = PoolStore(tmp_path)
    names = {new_member_id() for _ in range(50)}
    assert len(names) == 50
    assert all(SESSION_ID.fullmatch(name) for name in names)
    assert all(SANDBOX_ID.fullmatch(name) for name in names)  # the E2B face's ids too
    for bad in ("../x", "pool-", "s1", "s" + "0" * 19 + "/", "S" + "0" * 20, "s" + "0" * 21):
        with pytest.raises(ValueError, match="allowed: s and 20 lower-case hex digits"):
            store.add(_pool(), bad, IMAGE)
        with pytest.raises(ValueError, match="allowed: s and 20"):
            store.held(bad)
    store.members_dir.mkdir(parents=True)
    (store.members_dir / "s0123456789abcdef0123.json").write_text("{not json")
    assert store.members() == []
    assert digest(_pool(), IMAGE) != digest(_pool(min=4), IMAGE)
