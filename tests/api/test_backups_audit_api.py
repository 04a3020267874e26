"""Backups, restore and the audit trail over HTTP, in-process: the handlers call the service
layer's verbs (:mod:`dockyard.sessions.backups`: target, run_backup, snapshots, restore;
:func:`dockyard.sessions.audit.read`) with only the restic engine faked, so the tenant
scoping, the service's own audit lines and the error kinds are the real ones. Another
tenant's session answers exactly like a missing one; a tenant key reads only its tenant's
audit lines. The real engine: tests/integration/test_backup_on_engine.py (the same verbs
through the CLI)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from dockyard import backup
from dockyard.api.store import default_url
from dockyard.sessions import audit
from dockyard.sessions import backups as backup_sessions
from tests.api.conftest import Api
from tests.api.test_app import _record


def _registered(api: Api, session: str, tenant: str) -> None:
    """A tenant's session as a create registers it: its request names the tenant."""
    _record(api, session, tenant)
    record = api.sessions.registry.find(session, tenant)
    api.sessions.registry.save(
        dataclasses.replace(record, request={**record.request, "tenant": tenant})
    )


pytestmark = pytest.mark.anyio


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    # The key store is not under test here: SQLite only (test_app runs both stores).
    return default_url(tmp_path / "state")


class FakeEngine:
    """restic as dockyard.backup.Backups answers it, over dicts: workspaces by (stack,
    session), snapshots by repository. ``calls`` records what reached it."""

    def __init__(self, workspaces: set[tuple[str, str]]) -> None:
        self.workspaces = workspaces
        self.repos: dict[tuple[str, str], list[backup.Snapshot]] = {}
        self.calls: list[tuple[Any, ...]] = []
        self.fail: Exception | None = None

    def __call__(self, _settings: Any, _progress: Any) -> FakeEngine:
        return self

    def workspace(self, session: str, stack: str | None = None) -> Any:
        if (stack, session) not in self.workspaces:
            raise backup.NotFound(f"no workspace volume of session {session} of stack {stack}")
        return backup.Repo(str(stack), session)  # stands for the Workspace: its names

    def backup(self, workspace: backup.Repo, reason: str) -> backup.BackupResult:
        self.calls.append(("backup", workspace.stack, workspace.session, reason))
        if self.fail:
            raise self.fail
        taken = self.repos.setdefault((workspace.stack, workspace.session), [])
        snapshot = f"{len(taken) + 1:08d}" + "f" * 56
        taken.append(backup.Snapshot(snapshot, snapshot[:8], "2026-12-06T22:00:00Z", [reason]))
        return backup.BackupResult(
            workspace.session, workspace.stack, snapshot, reason, 3, 300, 100, 0.5
        )

    def snapshots(self, repo: backup.Repo) -> list[backup.Snapshot]:
        self.calls.append(("snapshots", repo.stack, repo.session))
        return list(self.repos.get((repo.stack, repo.session), []))

    def restore(
        self, source: backup.Repo, into: backup.Repo, snapshot: str, force: bool = False
    ) -> backup.RestoreResult:
        self.calls.append(("restore", source.stack, source.session, into.session, force))
        found = [
            s
            for s in self.repos.get((source.stack, source.session), [])
            if snapshot == "latest" or s.id.startswith(snapshot)
        ]
        if not found:
            raise backup.NotFound(
                f"session {source.session}: no snapshot {snapshot!r} in its repository"
            )
        return backup.RestoreResult(
            into.session, into.stack, f"{source.stack}/{source.session}", found[-1].id, 3, 300, 0.2
        )


@pytest.fixture
def engine(api: Api, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeEngine:
    """acme's s1 and s2, globex's g1; backups configured in the host settings."""
    for session, tenant in (("s1", "acme"), ("s2", "acme"), ("g1", "globex")):
        _registered(api, session, tenant)
    Path(api.env["DOCKYARD_CONFIG"]).write_text(
        json.dumps(
            {
                "healthcheck": {"interval": "5s"},
                "backup": {
                    "repository": "s3:http://127.0.0.1:9/bucket/dockyard",
                    "credentialsDir": str(tmp_path / "credentials"),
                },
            }
        )
    )
    fake = FakeEngine({("acme", "s1"), ("acme", "s2"), ("globex", "g1")})
    monkeypatch.setattr(backup_sessions, "_engine", fake)
    return fake


def lines(api: Api, action: str | None = None) -> list[dict[str, Any]]:
    return [
        e
        for e in audit.read(api.state / "audit.jsonl")
        if action is None or e.get("action") == action
    ]


async def test_backup_list_and_restore_call_the_service_verbs(api: Api, engine: FakeEngine) -> None:
    acme = api.key("acme")
    taken = await api.client.post("/api/sessions/s1/backups", headers=acme)
    assert taken.status_code == 201, taken.text
    assert taken.json()["session"] == "s1"
    assert taken.json()["reason"] == "manual"
    assert engine.calls == [("backup", "acme", "s1", "manual")]
    (line,) = lines(api, "backup")  # written by the service layer's run_backup
    assert (line["session"], line["tenant"], line["result"]) == ("s1", "acme", "ok")
    assert taken.json()["snapshot"] in line["detail"]

    listed = await api.client.get("/api/sessions/s1/backups", headers=acme)
    assert listed.status_code == 200, listed.text
    assert [s["id"] for s in listed.json()] == [taken.json()["snapshot"]]

    snapshot = taken.json()["snapshot"][:8]
    restored = await api.client.post(
        "/api/sessions/s1/restore", headers=acme, json={"snapshot": snapshot, "into": "s2"}
    )
    assert restored.status_code == 200, restored.text
    assert restored.json()["session"] == "s2"
    assert restored.json()["source"] == "acme/s1"
    assert engine.calls[-1] == ("restore", "acme", "s1", "s2", False)
    (line,) = lines(api, "restore")  # on the session written to
    assert (line["session"], line["tenant"], line["result"]) == ("s2", "acme", "ok")

    default = await api.client.post("/api/sessions/s1/restore", headers=acme)
    assert default.status_code == 200, default.text
    assert engine.calls[-1] == ("restore", "acme", "s1", "s1", False)

    requests = [e for e in lines(api, "api") if e["session"] == "s1"]
    assert len(requests) == 4
    assert {e["actor"] for e in requests} == {f"key:{api.store.list()[0].id}"}


ROUTES: list[tuple[str, str, dict[str, Any]]] = [
    ("POST", "/api/sessions/{}/backups", {}),
    ("GET", "/api/sessions/{}/backups", {}),
    ("POST", "/api/sessions/{}/restore", {"json": {"snapshot": "latest"}}),
]


async def test_another_tenant_answers_like_a_missing_session(api: Api, engine: FakeEngine) -> None:
    acme = api.key("acme")
    assert (await api.client.post("/api/sessions/g1/backups", headers=api.key("globex"))).is_success
    engine.calls.clear()
    for method, path, kwargs in ROUTES:
        seen = await api.client.request(method, path.format("g1"), headers=acme, **kwargs)
        missing = await api.client.request(method, path.format("g9"), headers=acme, **kwargs)
        assert seen.status_code == missing.status_code, (method, path, seen.text)
        assert (
            seen.text.replace("g1", "g9").split('"requestId"')[0]
            == (missing.text.split('"requestId"')[0])
        )
        if method == "POST":
            assert seen.status_code == 404, seen.text
        else:
            assert seen.json() == []  # acme's (empty) repository of that name, never globex's
    # Restoring acme's backup into globex's session is refused like into a missing one.
    await api.client.post("/api/sessions/s1/backups", headers=acme)
    into_theirs = await api.client.post(
        "/api/sessions/s1/restore", headers=acme, json={"into": "g1"}
    )
    into_none = await api.client.post("/api/sessions/s1/restore", headers=acme, json={"into": "g9"})
    assert into_theirs.status_code == into_none.status_code == 404, into_theirs.text
    assert into_theirs.json()["error"]["problems"] == [
        p.replace("g9", "g1") for p in into_none.json()["error"]["problems"]
    ]
    assert not [c for c in engine.calls if "globex" in c]


async def test_errors_are_the_service_kinds(api: Api, engine: FakeEngine) -> None:
    acme = api.key("acme")
    extra = await api.client.post("/api/sessions/s1/restore", headers=acme, json={"to": "/etc"})
    assert extra.status_code == 422
    assert extra.json()["error"]["kind"] == "invalid"
    assert not engine.calls
    assert (await api.client.post("/api/sessions/s1/backups", headers=acme)).is_success
    none = await api.client.post("/api/sessions/s1/restore", headers=acme, json={"snapshot": "ab"})
    assert none.status_code == 404
    assert none.json()["error"]["kind"] == "not-found"
    engine.fail = backup.Busy("session s1: another backup holds its lock")
    busy = await api.client.post("/api/sessions/s1/backups", headers=acme)
    assert busy.status_code == 409, busy.text
    assert busy.json()["error"]["kind"] == "conflict"
    engine.fail = backup.StorageError("session s1: the storage cannot be reached")
    down = await api.client.post("/api/sessions/s1/backups", headers=acme)
    assert down.status_code == 502
    assert down.json()["error"]["problems"] == ["session s1: the storage cannot be reached"]
    assert [e["result"] for e in lines(api, "backup")] == ["ok", "error", "error"]
    Path(api.env["DOCKYARD_CONFIG"]).write_text(json.dumps({"healthcheck": {"interval": "5s"}}))
    unset = await api.client.get("/api/sessions/s1/backups", headers=acme)
    assert unset.status_code == 422, unset.text
    assert unset.json()["error"]["problems"] == [backup_sessions.NOT_CONFIGURED]


def _audit_log(api: Api) -> None:
    log = api.state / "audit.jsonl"
    for when, action, session, tenant in (
        ("2026-12-06T10:00:00.000Z", "create", "s1", "acme"),
        ("2026-12-06T11:00:00.000Z", "backup", "s1", "acme"),
        ("2026-12-06T12:00:00.000Z", "create", "g1", "globex"),
        ("2026-12-06T13:00:00.000Z", "create", "u1", None),
        ("2026-12-06T14:00:00.000Z", "destroy", "s1", "acme"),
    ):
        audit.append(
            log,
            {"time": when, "actor": "ci:x", "action": action, "session": session, "tenant": tenant},
        )


async def _read(api: Api, headers: dict[str, str], **params: Any) -> list[tuple[str, str]]:
    response = await api.client.get("/api/audit", headers=headers, params=params)
    assert response.status_code == 200, response.text
    return [(e["action"], e["session"]) for e in response.json() if e["action"] != "api"]


async def test_a_tenant_key_reads_only_its_tenant_audit_lines(api: Api) -> None:
    _audit_log(api)
    acme, admin = api.key("acme"), api.key(admin=True)
    mine = [("create", "s1"), ("backup", "s1"), ("destroy", "s1")]
    assert await _read(api, acme) == mine
    assert await _read(api, acme, tenant="globex") == mine  # a tenant key acts as its own
    assert await _read(api, acme, session="g1") == []
    assert await _read(api, admin, tenant="globex") == [("create", "g1")]
    assert await _read(api, admin) == [*mine[:2], ("create", "g1"), ("create", "u1"), mine[2]]
    requests = [e for e in lines(api, "api") if "/api/audit" in e["detail"]]
    assert len(requests) == 5
    assert requests[0]["tenant"] == "acme"


async def test_audit_filters(api: Api) -> None:
    _audit_log(api)
    admin = api.key(admin=True)
    assert await _read(api, admin, action="create") == [
        ("create", "s1"),
        ("create", "g1"),
        ("create", "u1"),
    ]
    assert await _read(api, admin, session="s1", action="destroy") == [("destroy", "s1")]
    since = await _read(api, admin, since="2026-12-06T12:30:00+00:00", action="create")
    assert since == [("create", "u1")]
    assert await _read(api, admin, action="create", limit=2) == [("create", "g1"), ("create", "u1")]
    for bad in ({"limit": 0}, {"limit": 10_001}, {"since": "yesterday"}, {"since": "2026-12-06"}):
        response = await api.client.get("/api/audit", headers=admin, params=bad)
        assert response.status_code == 422, (bad, response.text)
        (problem,) = response.json()["error"]["problems"]
        assert problem.startswith(f"query.{next(iter(bad))}: "), problem
