"""The detail page's stats bars, audit history and actions (pause/resume, backup now) over
the seeded sessions (tests/browser/conftest.py: acme has a1 and a2, blue has b1), with
the engine replaced by fakes of the service layer's calls (no engine is asked): the
session's engine state, ``Sessions.workspace(...).stats()``, ``Sessions.pause``/``resume``
and the backup verb. What the page shows and which service call each form makes, with
which tenant scope, and that every action needs the login's CSRF token."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from dockyard import backup
from dockyard.api import dashboard
from dockyard.sessions import audit, backups
from dockyard.sessions import pause as pausing
from dockyard.sessions import snapshots as snapshotting
from tests.browser.conftest import Served, as_missing, log_in, seed, shoot
from tests.browser.test_dashboard_browser import accessible
from tests.browser.test_dashboard_http import _client, csrf_of
from tests.browser.test_dashboard_http import log_in as http_log_in

GIB = 1024**3


def stats_of(status: str = "running") -> dict[str, Any]:
    """What Workspace.stats answers (dockyard.sessions.dataplane), for a running session."""
    return {
        "status": status,
        "health": "healthy",
        "startedAt": "2026-01-01T00:00:01Z",
        "createdAt": "2026-01-01T00:00:00.000Z",
        "ageSeconds": 60.0,
        "memory": {"used": GIB, "limit": 4 * GIB, "percent": 25.0},
        "cpu": {"percent": 12.5, "onlineCpus": 2},
        "pids": 7,
        "disk": {"total": 10 * GIB, "used": 9 * GIB, "available": GIB, "percent": 90.0},
    }


@dataclass
class Engine:
    """The fakes' state: each session's container status, and the calls made."""

    status: dict[str, str] = field(default_factory=dict)
    calls: list[tuple[str, str, str | None]] = field(default_factory=list)
    restored: list[tuple[str, str | None, str, bool]] = field(default_factory=list)


class FakeClient:
    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True


class FakeWorkspace:
    def __init__(self, engine: Engine, session: str) -> None:
        self.engine, self.session, self.client = engine, session, FakeClient()

    def stats(self) -> dict[str, Any]:
        return stats_of(self.engine.status[self.session])


@pytest.fixture
def engine(served: Served, monkeypatch: pytest.MonkeyPatch) -> Engine:
    """The service layer's engine calls replaced: every session running, pause/resume
    and backup recorded (and audited, as the real verbs are), a backup repository in the
    host settings."""
    fake = Engine({"a1": "running", "a2": "running", "b1": "running"})
    sessions = served.sessions

    # Each seeded session's container gets an id of its own (the seed gives one to all).
    ids = {}
    for record in sessions.registry.all():
        manifest = json.loads(Path(record.manifest_path).read_text())
        manifest["container"]["id"] = ids[record.session_id] = record.session_id.encode().hex()
        Path(record.manifest_path).write_text(json.dumps(manifest))

    def engine_state(container_id: str, _host: str) -> dict[str, Any]:
        session = next((s for s, i in ids.items() if i == container_id), None)
        if session is None:  # seeded by a test after this fixture: not on the engine
            return {"status": "missing", "health": None}
        return {"status": fake.status[session], "health": "healthy"}

    def workspace(session: str, tenant: str | None = None, limits: Any = None) -> FakeWorkspace:
        sessions.registry.find(session, tenant)  # another tenant's: not found
        fake.calls.append(("stats", session, tenant))
        return FakeWorkspace(fake, session)

    def move(verb: str, source: str, target: str) -> Any:
        def act(session: str, tenant: str | None = None) -> pausing.State:
            record = sessions.registry.find(session, tenant)
            fake.calls.append((verb, session, tenant))
            with audit.recorded(
                sessions.where.audit_log, verb, session=session, tenant=record.tenant
            ):
                assert fake.status[session] == source
                fake.status[session] = target
            return pausing.State(session, target, True)

        return act

    def run_backup(given: Any, who: backups.Target, reason: str = "manual") -> Any:
        assert given is sessions
        fake.calls.append(("backup", who.session, who.tenant))
        with audit.recorded(
            sessions.where.audit_log, "backup", session=who.session, tenant=who.tenant
        ) as entry:
            entry["detail"] = f"{reason}: snapshot 0123abcd, 3 files, 42 bytes"
        return None

    kept = [
        backup.Snapshot("0123abcd" * 8, "0123abcd", "2026-01-01T01:00:00Z", ["manual"]),
        backup.Snapshot("4567ef01" * 8, "4567ef01", "2026-01-01T02:00:00Z", ["destroy"]),
    ]

    def list_backups(who: backups.Target) -> list[backup.Snapshot]:
        return kept if who.tenant == "acme" else []

    def restore(
        given: Any, who: backups.Target, snapshot: str, into: Any, force: bool = False
    ) -> Any:
        assert given is sessions
        assert into is None
        fake.restored.append((who.session, who.tenant, snapshot, force))
        return None

    def engine_snapshots(tenant: str | None = None) -> list[snapshotting.Snapshot]:
        taken = [
            snapshotting.Snapshot("before-upgrade", "acme", "a1", "snapshot", "i", "sha256:1"),
            snapshotting.Snapshot("blue-one", "blue", "b1", "snapshot", "i", "sha256:2"),
            snapshotting.Snapshot("other-a2", "acme", "a2", "snapshot", "i", "sha256:3"),
        ]
        return [s for s in taken if tenant is None or s.tenant == tenant]

    settings = sessions.where.config_file
    assert settings is not None
    settings.write_text(
        json.dumps(
            {
                "healthcheck": {"interval": "5s"},
                "backup": {"repository": "s3:https://s3.example.test/backups"},
            }
        )
    )
    monkeypatch.setattr(dashboard.detail, "engine_state", engine_state)
    monkeypatch.setattr(sessions, "workspace", workspace)
    monkeypatch.setattr(sessions, "pause", move("pause", "running", "paused"))
    monkeypatch.setattr(sessions, "resume", move("resume", "paused", "running"))
    monkeypatch.setattr(backups, "run_backup", run_backup)
    monkeypatch.setattr(backups, "snapshots", list_backups)
    monkeypatch.setattr(backups, "restore", restore)
    monkeypatch.setattr(sessions, "snapshots", engine_snapshots)
    return fake


@pytest.fixture
def acme(served: Served) -> Iterator[httpx.Client]:
    with _client(served) as client:
        assert http_log_in(client, served.keys["acme"]).status_code == 303
        yield client


def test_detail_shows_memory_and_disk_against_their_limits(
    engine: Engine, acme: httpx.Client
) -> None:
    # The page comes at once and its script loads the stats (the engine samples ~2 s).
    later = acme.get("/sessions/a1")
    assert later.status_code == 200, later.text
    assert "Reading the stats from the engine" in later.text
    assert 'data-stats="/sessions/a1/stats"' in later.text
    assert 'href="/sessions/a1?stats=now"' in later.text
    assert "<meter" not in later.text
    assert engine.calls == []
    fragment = acme.get("/sessions/a1/stats")
    assert fragment.status_code == 200, fragment.text
    inline = acme.get("/sessions/a1?stats=now")
    assert inline.status_code == 200, inline.text
    for text in (fragment.text, inline.text):
        check_bars(text)
    # Through the service layer's workspace, in the key's tenant.
    assert engine.calls == [("stats", "a1", "acme"), ("stats", "a1", "acme")]
    # Another tenant's session: not found, as a missing one; the engine is not asked.
    assert acme.get("/sessions/b1/stats?tenant=blue").status_code == 404
    assert acme.get("/sessions/nope/stats").status_code == 404
    assert len(engine.calls) == 2


def check_bars(text: str) -> None:
    assert f'<meter id="memory-bar" min="0" max="{4 * GIB}" value="{GIB}"' in text
    assert "1.0 GiB of 4.0 GiB (25%)" in text
    assert f'<meter id="disk-bar" min="0" max="{10 * GIB}" value="{9 * GIB}"' in text
    assert "9.0 GiB of 10.0 GiB (90%)" in text
    assert "12.5% (of 2 CPUs" in text


def test_pause_resume_and_backup_need_the_token_and_act_in_the_tenant(
    served: Served, engine: Engine, acme: httpx.Client
) -> None:
    token = csrf_of(acme, "/sessions/a1")
    for path in ("/sessions/a1/pause", "/sessions/a1/resume", "/sessions/a1/backup"):
        for csrf in ({}, {"csrf": ""}, {"csrf": token[:-1] + ("A" if token[-1] != "A" else "B")}):
            refused = acme.post(path, data=csrf)
            assert refused.status_code == 403, (path, csrf, refused.text)
            assert "token is missing or wrong" in refused.text
    assert [c for c in engine.calls if c[0] != "stats"] == []
    assert engine.status["a1"] == "running"

    page = acme.get("/sessions/a1").text
    assert 'action="/sessions/a1/pause"' in page
    assert 'action="/sessions/a1/resume"' not in page  # only where available
    paused = acme.post("/sessions/a1/pause", data={"csrf": token})
    assert paused.status_code == 303
    assert paused.headers["location"] == "/sessions/a1?done=paused"
    assert engine.status["a1"] == "paused"
    page = acme.get(paused.headers["location"]).text
    assert "Session a1 paused." in page
    assert 'action="/sessions/a1/resume"' in page
    assert 'action="/sessions/a1/pause"' not in page
    assert acme.post("/sessions/a1/resume", data={"csrf": token}).status_code == 303
    assert engine.status["a1"] == "running"

    backed = acme.post("/sessions/a1/backup", data={"csrf": token})
    assert backed.headers["location"] == "/sessions/a1?done=backed-up"
    assert "Session a1 backed up." in acme.get(backed.headers["location"]).text
    assert [c for c in engine.calls if c[0] != "stats"] == [
        ("pause", "a1", "acme"),
        ("resume", "a1", "acme"),
        ("backup", "a1", "acme"),
    ]
    # Another tenant's session: not found, word for word a missing one; nothing called.
    for verb in ("pause", "resume", "backup"):
        other = acme.post(f"/sessions/b1/{verb}?tenant=blue", data={"csrf": token})
        missing = acme.post(f"/sessions/nope/{verb}", data={"csrf": token})
        assert other.status_code == missing.status_code == 404, verb
        assert as_missing(other.text, "b1") == missing.text
    assert engine.status["b1"] == "running"
    assert len([c for c in engine.calls if c[0] != "stats"]) == 3


def test_audit_history_lists_the_sessions_actions_newest_first(
    served: Served, engine: Engine, acme: httpx.Client
) -> None:
    token = csrf_of(acme, "/sessions/a1")
    acme.post("/sessions/a1/pause", data={"csrf": token})
    acme.post("/sessions/a1/resume", data={"csrf": token})
    acme.post("/sessions/a1/backup", data={"csrf": token})
    acme.post("/sessions/a2/pause", data={"csrf": token})
    # Another tenant's line for a session of the same name is not a1's history.
    audit.append(
        served.sessions.where.audit_log,
        {"action": "destroy", "actor": "x", "session": "a1", "tenant": "blue", "result": "ok"},
    )
    text = acme.get("/sessions/a1").text
    history = text.split('id="h-audit"', 1)[1].split("</table>", 1)[0]
    actions = [
        cell.split("</td>", 1)[0]
        for cell in history.split("<tr><td>")[1:]
        for cell in [cell.split("</td><td>", 2)[2]]
    ]
    # Newest first (a request's own line is written when it ends, so it may follow the
    # next request's action: only the actions' order and the count are fixed).
    assert [a for a in actions if a != "api"] == ["backup", "resume", "pause"], actions
    assert actions.count("api") == 3, actions
    assert "snapshot 0123abcd" in history
    assert "POST /sessions/a1/backup 303" in history
    assert "GET /sessions/a1" not in history  # page views are left out
    assert "destroy" not in history  # blue's a1
    assert "/sessions/a2/pause" not in history
    key_id = served.keys["acme"].split("_")[1]
    assert f"<code>key:{key_id}</code>" in history
    # An untenanted session of the same name (an admin's) has none of acme's a1 lines.
    seed(served.sessions, None, "a1")
    with _client(served) as admin:
        http_log_in(admin, served.keys["admin"])
        page = admin.get("/sessions/a1")
        assert page.status_code == 200, page.text
        own = page.text.split('id="h-audit"', 1)[1].split("</section>", 1)[0]
        assert "Nothing in the audit trail for this session yet." in own, own


def test_no_pause_or_backup_where_unavailable(
    served: Served, engine: Engine, acme: httpx.Client
) -> None:
    engine.status["a1"] = "exited"
    settings = served.sessions.where.config_file
    assert settings is not None
    settings.write_text(json.dumps({"healthcheck": {"interval": "5s"}}))
    text = acme.get("/sessions/a1").text
    for verb in ("pause", "resume", "backup"):
        assert f'action="/sessions/a1/{verb}"' not in text, verb
    assert "the host settings have no backup repository" in text
    stats = acme.get("/sessions/a1/stats").text
    assert "No stats: the container is exited, not running." in stats
    assert not [c for c in engine.calls if c[0] == "stats"]


def test_detail_in_the_browser_is_accessible_and_pauses(
    page: Any, served: Served, engine: Engine
) -> None:
    log_in(page, served.url, served.keys["acme"])
    page.goto(served.url + "/sessions/a1")
    memory = page.get_by_label("Memory (against its limit)")  # loaded by the page's script
    memory.wait_for()
    assert memory.evaluate("m => m.tagName") == "METER"
    assert memory.get_attribute("value") == str(GIB)
    assert page.get_by_label("Workspace disk (against its size)").get_attribute("max") == str(
        10 * GIB
    )
    accessible(page)
    shoot(page, "detail-stats")
    # From the keyboard: Tab reaches the button (the page's order), Enter pauses.
    pause = page.get_by_role("button", name="Pause (freeze its processes, memory kept)")
    page.get_by_role("button", name="Refresh (recreate the container, keep the workspace)").focus()
    page.keyboard.press("Tab")
    assert pause.evaluate("b => b === document.activeElement")
    page.keyboard.press("Enter")
    page.wait_for_url(served.url + "/sessions/a1?done=paused")
    assert page.get_by_role("status").filter(has_text="Session a1 paused.").is_visible()
    assert page.get_by_role("button", name="Resume").is_visible()
    newest = page.locator("table.audit tbody tr").evaluate_all(
        "rows => rows.slice(0, 2).map(r => r.cells[2].textContent)"
    )
    assert "pause" in newest, newest
    accessible(page)
    shoot(page, "detail-paused")


def test_backups_and_snapshots_listed_and_a_restore_needs_its_confirmation_and_token(
    served: Served, engine: Engine, acme: httpx.Client
) -> None:
    # Loaded after the page (listing snapshots can take seconds); or in it with ?kept=now.
    assert "Listing the session's backups and snapshots" in acme.get("/sessions/a1").text
    text = acme.get("/sessions/a1/kept").text
    assert text.split('id="h-backups"', 1)[1] in acme.get("/sessions/a1?kept=now").text
    assert acme.get("/sessions/b1/kept?tenant=blue").status_code == 404
    listed = text.split('id="h-backups"', 1)[1].split("</section>", 1)[0]
    # Newest first, each with its restore link.
    assert listed.index("4567ef01") < listed.index("0123abcd")
    assert 'href="/sessions/a1/restore?snapshot=' + "0123abcd" * 8 + '"' in listed
    taken = text.split('id="h-snapshots"', 1)[1].split("</section>", 1)[0]
    assert "before-upgrade" in taken
    assert "dockyard fork a1 --snapshot before-upgrade --as NEW-SESSION --tenant acme" in taken
    assert "blue-one" not in taken  # another tenant's
    assert "other-a2" not in taken  # another session's
    # The confirmation names the session and the backup.
    confirm = acme.get("/sessions/a1/restore", params={"snapshot": "0123abcd"})
    assert "Restore session <code>a1</code> from backup <code>0123abcd</code>?" in confirm.text
    not_an_id = acme.get("/sessions/a1/restore", params={"snapshot": "../x"})
    assert not_an_id.status_code == 422
    assert "snapshot: &#39;../x&#39; is not a backup id" in not_an_id.text
    # Without a login: the pages send to the login page, the parts their script loads 401.
    with _client(served) as stranger:
        assert stranger.get("/sessions/a1/restore?snapshot=latest").headers["location"] == "/login"
        for part in ("kept", "stats", "logs"):
            assert stranger.get(f"/sessions/a1/{part}").status_code == 401, part
    token = csrf_of(acme, "/sessions/a1")
    asked = {"confirm": "a1", "snapshot": "0123abcd"}
    assert acme.post("/sessions/a1/restore", data=asked).status_code == 403
    wrong = acme.post("/sessions/a1/restore", data={**asked, "csrf": token, "confirm": "a2"})
    assert wrong.status_code == 422
    assert "confirm: not the session&#39;s name (allowed: &#39;a1&#39;" in wrong.text
    bad = acme.post("/sessions/a1/restore", data={**asked, "csrf": token, "snapshot": "../x"})
    assert bad.status_code == 422
    assert "snapshot: &#39;../x&#39; is not a backup id" in bad.text
    assert engine.restored == []
    done = acme.post("/sessions/a1/restore", data={**asked, "csrf": token, "force": "yes"})
    assert done.status_code == 303
    assert done.headers["location"] == "/sessions/a1?done=restored"
    assert "Session a1 restored from its backup." in acme.get(done.headers["location"]).text
    assert engine.restored == [("a1", "acme", "0123abcd", True)]
    # Another tenant's session: not found, like a missing one; nothing restored.
    other = acme.post(
        "/sessions/b1/restore?tenant=blue", data={**asked, "csrf": token, "confirm": "b1"}
    )
    missing = acme.post("/sessions/nope/restore", data={**asked, "csrf": token, "confirm": "nope"})
    assert other.status_code == missing.status_code == 404
    assert acme.get("/sessions/b1/restore", params={"snapshot": "latest"}).status_code == 404
    assert engine.restored == [("a1", "acme", "0123abcd", True)]


def test_restore_from_the_browser(page: Any, served: Served, engine: Engine) -> None:
    log_in(page, served.url, served.keys["acme"])
    page.goto(served.url + "/sessions/a1")
    page.get_by_role("link", name="Restore a1 from backup 4567ef01…").click()
    assert "Restore session a1 from backup" in page.locator("h1").inner_text()
    accessible(page)
    shoot(page, "restore-confirm")
    page.get_by_role("button", name="Restore a1 from " + "4567ef01" * 8).click()
    page.wait_for_url(served.url + "/sessions/a1?done=restored")
    assert page.get_by_role("status").filter(has_text="Session a1 restored").is_visible()
    assert engine.restored == [("a1", "acme", "4567ef01" * 8, False)]
