"""Warm pools behind the E2B face (issue 29 item 1, issue 30): members made ahead through
the sessions service, hidden until claimed, claimed by creates that match, refilled and
re-rolled; against a recording fake of the service (the engine proof is
tests/integration/test_pools_on_engine.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from dockyard.config import ConfigError
from dockyard.errors import InvalidInput
from dockyard.sessions import e2b, warm
from dockyard.sessions.registry import SessionNotFound

from .test_e2b import FakeSessions, Where


def _sessions(tmp_path: Path, pools: list[dict[str, Any]], **settings: Any) -> FakeSessions:
    config = tmp_path / "settings.yaml"
    config.write_text(json.dumps({"pools": pools, **settings}), encoding="utf-8")
    return FakeSessions(Where(tmp_path / "state", config))


def _pools(sessions: FakeSessions, pools: list[dict[str, Any]], **settings: Any) -> None:
    assert sessions.where.config_file is not None
    sessions.where.config_file.write_text(
        json.dumps({"pools": pools, **settings}), encoding="utf-8"
    )


def test_refill_makes_hidden_members_and_a_matching_create_claims_one(tmp_path: Path) -> None:
    sessions = _sessions(tmp_path, [{"tenant": "acme", "min": 2}])
    done = warm.refill(sessions)
    assert len(done.made) == 2
    assert not done.failed
    # Made through the service, each with an access token of its own as its only secret.
    tokens = [secrets[e2b.TOKEN_SECRET] for _, secrets in sessions.created]
    assert len(set(tokens)) == 2
    assert all(request["tenant"] == "acme" for request, _ in sessions.created)
    assert [r["secrets"] for r, _ in sessions.created] == [[e2b.TOKEN_SECRET]] * 2
    # Free members are nobody's session yet: no list, lookup or E2B answer shows them.
    assert sessions.registry.all() == []
    with pytest.raises(SessionNotFound):
        sessions.registry.find(done.made[0], "acme")
    assert warm.refill(sessions).made == []  # min reached
    assert warm.status(sessions) == [
        {"pool": "acme/claude-core-standard", "min": 2, "max": 2, "free": 2, "making": 0}
    ]

    sandbox = e2b.create(sessions, {"templateID": "base", "metadata": {"team": "red"}}, "acme")
    assert sandbox.sandboxId in done.made
    assert sandbox.envdAccessToken == tokens[done.made.index(sandbox.sandboxId)]
    assert len(sessions.created) == 2  # no create on the claim's path
    record = sessions.registry.find(sandbox.sandboxId, "acme")
    assert record.request["labels"] == {"team": "red", e2b.TEMPLATE_LABEL: "base"}
    assert e2b.get(sessions, sandbox.sandboxId, "acme").metadata == {"team": "red"}
    assert [r.session_id for r in sessions.registry.all()] == [sandbox.sandboxId]
    # The member's token left the pool with it; the pool tops up again.
    assert warm.store(sessions).token(sandbox.sandboxId) is None
    assert warm.status(sessions)[0]["free"] == 1
    assert len(warm.refill(sessions).made) == 1


def test_creates_that_cannot_claim_are_cold(tmp_path: Path) -> None:
    sessions = _sessions(tmp_path, [{"tenant": "acme", "min": 1}, {"variant": "python", "min": 1}])
    made = warm.refill(sessions).made
    assert len(made) == 2
    cold = [
        # another tenant; environment variables (secrets read at start); another variant
        e2b.create(sessions, {"templateID": "base"}, "other"),
        e2b.create(sessions, {"templateID": "base", "envVars": {"A": "1"}}, "acme"),
        e2b.create(sessions, {"templateID": "node"}, None),
        e2b.create(sessions, {"templateID": "python"}, "acme"),  # the python pool has no tenant
    ]
    assert not {s.sandboxId for s in cold} & set(made)
    assert len(sessions.created) == 2 + len(cold)
    # The untenanted python pool serves an untenanted python create.
    assert e2b.create(sessions, {"templateID": "python"}, None).sandboxId in made
    # A refused create takes nothing.
    with pytest.raises(InvalidInput):
        e2b.create(sessions, {"templateID": "base", "timeout": -1}, "acme")
    assert warm.status(sessions)[0]["free"] == 1


def test_a_member_serves_one_sandbox_and_is_gone_with_it(tmp_path: Path) -> None:
    sessions = _sessions(tmp_path, [{"min": 3}])
    made = set(warm.refill(sessions).made)
    taken = [e2b.create(sessions, {"templateID": "base"}, None).sandboxId for _ in range(4)]
    assert set(taken[:3]) == made
    assert taken[3] not in made
    e2b.kill(sessions, taken[0], None)
    # Refill makes new members; a killed one never comes back.
    fresh = warm.refill(sessions).made
    assert len(fresh) == 3
    assert taken[0] not in fresh


def test_changed_settings_or_image_reroll_free_members_only(tmp_path: Path) -> None:
    sessions = _sessions(tmp_path, [{"min": 2}])
    first = warm.refill(sessions).made
    claimed = e2b.create(sessions, {"templateID": "base"}, None).sandboxId
    free = [m for m in first if m != claimed]
    # A new built image re-rolls the free member, never the claimed one.
    (sessions.where.state / "image.json").write_text(json.dumps({"imageRef": "core:2"}))
    done = warm.refill(sessions)
    assert done.rerolled == free
    assert len(done.made) == 2
    assert [d for d, _ in sessions.destroyed] == free
    assert sessions.registry.find(claimed, None).session_id == claimed
    # Another host setting re-rolls too; dropping the pool removes its members.
    _pools(sessions, [{"min": 2}], limits={"cpus": 2})
    assert len(warm.refill(sessions).rerolled) == 2
    _pools(sessions, [])
    done = warm.refill(sessions)
    assert len(done.rerolled) == 2
    assert done.made == []
    assert warm.store(sessions).members() == []
    assert [r.session_id for r in sessions.registry.all()] == [claimed]


def test_a_failed_member_is_reported_and_leaves_nothing(tmp_path: Path) -> None:
    sessions = _sessions(tmp_path, [{"min": 1}])

    def broken(request: dict[str, Any], secrets: dict[str, str]) -> None:
        raise RuntimeError("engine away")

    sessions.create = broken  # type: ignore[method-assign]
    done = warm.refill(sessions)
    assert done.made == []
    assert len(done.failed) == 1
    assert "engine away" in done.failed[0]
    assert warm.store(sessions).members() == []
    assert not any(warm.store(sessions).creating_dir.iterdir())


def test_an_abandoned_claim_is_removed_by_the_refill(tmp_path: Path) -> None:
    """A process that took a member and died before putting its record back: the member
    is nobody's; once the claim is old the refill destroys it (a live claim, milliseconds
    old, is left alone)."""
    sessions = _sessions(tmp_path, [{"min": 1}])
    (member,) = warm.refill(sessions).made
    store = warm.store(sessions)
    assert store.take(member, "a create that died")
    assert warm.refill(sessions).rerolled == []  # young claim: maybe still in flight
    old = store.claims_dir / member
    past = old.stat().st_mtime - warm.ABANDONED_AFTER_S - 1
    os.utime(old, (past, past))
    done = warm.refill(sessions)
    assert member in done.rerolled
    assert [d for d, _ in sessions.destroyed] == [member]


def test_settings_errors_reach_the_caller_of_a_refill(tmp_path: Path) -> None:
    sessions = _sessions(tmp_path, [{"min": 1, "max": 0}])
    with pytest.raises(ConfigError) as caught:
        warm.refill(sessions)
    assert "pools[0].max: 0 is not allowed" in str(caught.value)
