"""Warm pools behind the E2B face (issue 29 item 1, issue 30): members made ahead through
the sessions service, hidden until claimed, claimed by creates that match, refilled and
re-rolled; against a recording fake of the service (the engine proof is
tests/api/test_pools_on_engine.py)."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from dockyard.config import ConfigError
from dockyard.config.pools import Pool
from dockyard.errors import Failed, InvalidInput
from dockyard.sessions import Sessions, audit, e2b, registry, warm
from dockyard.sessions.registry import NamesTaken, SessionNotFound
from dockyard.sessions.settings import paths

from .test_e2b import FakeSessions, Where


@pytest.fixture(autouse=True)
def engine(monkeypatch: pytest.MonkeyPatch) -> dict[str, dict[str, Any]]:
    """The engine's container states as the refill reads them: every member this test's
    fake made runs, unless a test says otherwise."""
    states: dict[str, dict[str, Any]] = {}

    class _Running(dict[str, dict[str, Any]]):
        def get(self, name: str, default: Any = None) -> Any:
            return states.get(name, {"status": "running"})

    monkeypatch.setattr(warm, "engine_states", lambda host: _Running())
    return states


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
        # another tenant; another variant; a tenant's create where only an untenanted
        # pool has the variant
        e2b.create(sessions, {"templateID": "base"}, "other"),
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


def test_a_claim_delivers_the_creates_environment_variables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """envVars are the sandbox's secrets: into the running member as files (one root exec,
    engine-tested in test_pools_on_engine), their names in the record; a failed delivery
    destroys the member (nothing half-bound is handed out) and the create goes on cold."""
    delivered: list[tuple[str, dict[str, str]]] = []
    monkeypatch.setattr(
        warm,
        "deliver_secrets",
        lambda sessions, record, env: delivered.append((record.session_id, env)),
    )
    sessions = _sessions(tmp_path, [{"tenant": "acme", "min": 2}])
    made = warm.refill(sessions).made
    sandbox = e2b.create(sessions, {"templateID": "base", "envVars": {"A": "1"}}, "acme")
    assert sandbox.sandboxId in made
    assert delivered == [(sandbox.sandboxId, {"A": "1"})]
    record = sessions.registry.find(sandbox.sandboxId, "acme")
    assert record.request["secrets"] == sorted(["A", e2b.TOKEN_SECRET])

    def broken(sessions: Any, record: Any, env: Any) -> None:
        raise Failed("secrets not delivered (tar exited 2)")

    monkeypatch.setattr(warm, "deliver_secrets", broken)
    cold = e2b.create(sessions, {"templateID": "base", "envVars": {"B": "2"}}, "acme")
    (other,) = [m for m in made if m != sandbox.sandboxId]
    assert (other, "acme") in sessions.destroyed
    assert cold.sandboxId not in made
    assert sessions.created[-1] == (
        sessions.registry.find(cold.sandboxId, "acme").request,
        {"B": "2", e2b.TOKEN_SECRET: cold.envdAccessToken},
    )
    assert {r.session_id for r in sessions.registry.all()} == {sandbox.sandboxId, cold.sandboxId}


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

    def broken(request: dict[str, Any], secrets: dict[str, str], **_: Any) -> None:
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


def test_a_claim_is_the_sessions_create_in_the_audit_trail(tmp_path: Path) -> None:
    sessions = _sessions(tmp_path, [{"tenant": "acme", "min": 1}])
    (member,) = warm.refill(sessions).made
    e2b.create(sessions, {"templateID": "base"}, "acme")
    (line,) = [e for e in audit.read(sessions.where.audit_log) if e["action"] == "create"]
    assert (line["session"], line["tenant"], line["result"]) == (member, "acme", "ok")
    assert line["detail"] == "claimed from warm pool acme/claude-core-standard"


def test_a_refused_member_backs_its_pool_off(tmp_path: Path) -> None:
    """A pool whose members cannot be made (a quota, the engine) is tried once per wait,
    the wait doubling; a member made resets it."""
    sessions = _sessions(tmp_path, [{"min": 3}])
    tries: list[str] = []
    real = sessions.create

    def refused(request: dict[str, Any], secrets: dict[str, str], **kw: Any) -> None:
        tries.append(request["sessionId"])
        raise RuntimeError("quota: environments 0 of 0")

    sessions.create = refused  # type: ignore[method-assign]
    backoff = warm.Backoff()
    assert len(warm.refill(sessions, backoff=backoff).failed) == 1
    assert warm.refill(sessions, backoff=backoff).failed == []  # waiting: no attempt
    assert len(tries) == 1
    first = backoff._until["claude-core-standard"]
    warm.Backoff.FIRST_S = 0.0
    try:
        backoff._until["claude-core-standard"] = (first[0], 0.0)
        warm.refill(sessions, backoff=backoff)
        assert backoff._until["claude-core-standard"][0] == 2  # the wait doubled
        sessions.create = real  # type: ignore[method-assign]
        backoff._until["claude-core-standard"] = (2, 0.0)
        assert len(warm.refill(sessions, backoff=backoff).made) == 3
        assert "claude-core-standard" not in backoff._until
    finally:
        warm.Backoff.FIRST_S = 5.0


def test_a_stop_ends_the_refill_before_its_next_member(tmp_path: Path) -> None:
    sessions = _sessions(tmp_path, [{"min": 5}])
    stop = threading.Event()
    real = sessions.create

    def then_stop(request: dict[str, Any], secrets: dict[str, str], **kw: Any) -> None:
        real(request, secrets)
        stop.set()

    sessions.create = then_stop  # type: ignore[method-assign]
    assert len(warm.refill(sessions, stop=stop).made) == 1


def test_what_a_killed_refill_left_is_cleared(tmp_path: Path) -> None:
    """A refill killed while making a member leaves its marker (counted against max
    forever) and maybe the member's session: the next refill destroys and forgets both."""
    sessions = _sessions(tmp_path, [{"min": 1}])
    store = warm.store(sessions)
    pool = Pool.model_validate({"min": 1})
    half = "s" + "a" * 20
    with store.creating(pool, half):
        sessions.create({"sessionId": half, "cwd": str(tmp_path), "labels": {}, "secrets": []}, {})
        marker = store.creating_dir / half
        data = json.loads(marker.read_text())
    marker.write_text(json.dumps({**data, "pid": 2**22 + 7}))  # a process that is gone
    assert store.being_made(pool) == 0
    done = warm.refill(sessions)
    assert half in done.rerolled
    assert [d for d, _ in sessions.destroyed] == [half]
    assert not marker.exists()
    assert len(done.made) == 1


def test_a_member_id_is_never_a_new_sessions(tmp_path: Path) -> None:
    """Creating a session with a member's id (learnt from an event, say) would converge the
    member's stack with another request behind the pool's back: refused, nothing reaches
    the engine, the member stays free."""
    state = tmp_path / "state"
    settings = tmp_path / "settings.yaml"
    settings.write_text(json.dumps({"pools": [{"min": 1}]}), encoding="utf-8")
    where = paths({"DOCKYARD_STATE_DIR": str(state), "DOCKYARD_CONFIG": str(settings)})
    engine = _Recording()
    sessions = Sessions(where, engine)
    member = "s" + "b" * 20
    warm.store(sessions).add(Pool.model_validate({"min": 1}), member, "x", "t" * 24)
    request = {
        "sessionId": member,
        "cwd": str(tmp_path),
        "container": {"image": "ghcr.io/acme/dockyard-core:1.2"},
    }
    with pytest.raises(NamesTaken, match="taken by this host's warm pool"):
        sessions.create(request)
    assert engine.calls == []
    (line,) = audit.read(where.audit_log)
    assert (line["action"], line["result"]) == ("create", "error")


class _Recording:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def up(self, plan: Any, secrets: Any, progress: Any) -> dict[str, Any]:
        self.calls.append(f"up {plan.stack_name}")
        raise AssertionError("reached the engine")

    def destroy(self, plan: Any, progress: Any) -> None:
        self.calls.append(f"destroy {plan.stack_name}")


def test_stopped_members_are_rerolled(tmp_path: Path, engine: dict[str, Any]) -> None:
    """The idle monitor stops idle environments, members included: a claim must never
    hand out a stopped one, so the refill replaces it."""
    sessions = _sessions(tmp_path, [{"min": 2}])
    first = warm.refill(sessions).made
    record = registry.read(warm.store(sessions).held(first[0]))
    engine[record.environment_id] = {"status": "exited"}
    done = warm.refill(sessions)
    assert done.rerolled == [first[0]]
    assert len(done.made) == 1
    assert e2b.create(sessions, {"templateID": "base"}, None).sandboxId != first[0]


def test_a_routed_call_racing_a_destroy_finds_no_sandbox(tmp_path: Path) -> None:
    """The manifest removed under a routed call (the sandbox destroyed meanwhile): the
    call answers not found, never a 500 with a traceback (found by running the SDK's own
    suite against the server)."""
    sessions = _sessions(tmp_path, [])
    sandbox = e2b.create(sessions, {"templateID": "base"}, "acme")
    record = sessions.registry.find(sandbox.sandboxId, "acme")
    with pytest.raises(SessionNotFound, match="not found"):
        e2b.address(record)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"FOO-BAR": "1"}, "envVars: 'FOO-BAR' is not allowed (allowed: an environment variable"),
        ({"a/b": "1"}, "envVars: 'a/b' is not allowed"),
        ({"./" + e2b.TOKEN_SECRET: "1"}, "is not allowed (allowed: an environment variable"),
        ({e2b.TOKEN_SECRET + "\x00x": "1"}, "is not allowed (allowed: an environment variable"),
        ({e2b.TOKEN_SECRET: "1"}, f"envVars.{e2b.TOKEN_SECRET}: set by dockyard"),
        ({f"V{i}": "1" for i in range(64)}, "envVars: at most 63 variables"),
        ({"A": "\ud800"}, "envVars.A: its value is not valid text (allowed: UTF-8)"),
    ],
)
def test_env_names_follow_the_secrets_rule_before_anything_is_claimed(
    tmp_path: Path, env: dict[str, str], expected: str
) -> None:
    """envVars become secret files of a claimed member and names of the session's secrets
    (what destroy re-plans): a name the request model refuses would leave a sandbox nobody
    can destroy. Refused first, naming the key; the member stays free."""
    sessions = _sessions(tmp_path, [{"tenant": "acme", "min": 1}])
    warm.refill(sessions)
    with pytest.raises(InvalidInput) as caught:
        e2b.create(sessions, {"templateID": "base", "envVars": env}, "acme")
    assert any(expected in line for line in caught.value.problems), caught.value.problems
    assert warm.status(sessions)[0]["free"] == 1


def test_a_marker_left_after_its_member_was_recorded_only_goes(tmp_path: Path) -> None:
    """A refill killed between recording a member and removing its marker: the member may
    be claimed by then; the next refill drops the marker and destroys nothing."""
    sessions = _sessions(tmp_path, [{"min": 1}])
    (member,) = warm.refill(sessions).made
    store = warm.store(sessions)
    marker = store.creating_dir / member
    marker.write_text(json.dumps({"pool": "claude-core-standard", "pid": 2**22 + 7, "boot": "x"}))
    claimed = e2b.create(sessions, {"templateID": "base"}, None)
    assert claimed.sandboxId == member
    warm.refill(sessions)
    assert not marker.exists()
    assert member not in [d for d, _ in sessions.destroyed]
    assert sessions.registry.find(member, None).session_id == member


def test_the_cli_lists_and_refills_the_pools(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from types import SimpleNamespace

    from typer.testing import CliRunner

    from dockyard import cli

    sessions = _sessions(tmp_path, [{"tenant": "acme", "min": 2}])
    face = SimpleNamespace(
        pools=lambda: warm.status(sessions),
        refill_pools=lambda progress: warm.refill(sessions, progress),
    )
    monkeypatch.setattr(Sessions, "default", lambda: face)
    made = CliRunner().invoke(cli.app, ["pool", "refill", "--json"])
    assert made.exit_code == 0, made.output
    assert len(json.loads(made.stdout)["made"]) == 2
    listed = CliRunner().invoke(cli.app, ["pool", "ls", "--json"])
    assert json.loads(listed.stdout) == [
        {"pool": "acme/claude-core-standard", "min": 2, "max": 2, "free": 2, "making": 0}
    ]
    table = CliRunner().invoke(cli.app, ["pool", "ls"])
    assert "acme/claude-core-standard" in table.stdout

    def refused(request: dict[str, Any], secrets: dict[str, str], **_: Any) -> None:
        raise RuntimeError("quota: environments 2 of 2")

    sessions.create = refused  # type: ignore[method-assign]
    e2b.create(sessions, {"templateID": "base"}, "acme")
    failed = CliRunner().invoke(cli.app, ["pool", "refill"])
    assert failed.exit_code == 1, failed.output
    said = " ".join(failed.stdout.split())  # the terminal's width folds lines
    assert "not done: acme/claude-core-standard" in said
    assert "quota: environments 2 of 2" in said
