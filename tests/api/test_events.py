"""Events (issue 27 item 3): audit lines of the service layer and of the host scripts become
stored events served as SSE, on SQLite and PostgreSQL stores (the real server on loopback).

Lines are written by the writers the service layer and the host scripts use
(:func:`dockyard.sessions.audit.recorded`, :func:`dockyard.host.audit_trail.audit`), so
the server reads exactly what they write; which verbs write which lines is their own
tests' business."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session

from dockyard.api.events import EVENT_TYPES, EventStore, Line, Tail, events_of, frame, rows_of
from dockyard.api.events_settings import EventSettings
from dockyard.api.store import KeyStore
from dockyard.api.store.models import Event, WebhookDelivery
from dockyard.api.webhooks import WebhookStore
from dockyard.contract import LABEL_SESSION, LABEL_STACK, LABEL_TENANT
from dockyard.host import audit_trail
from dockyard.sessions import audit
from tests.api.test_events_support import Server, SseReader, running_server


@pytest.fixture
def server(tmp_path: Path, store: KeyStore) -> Iterator[Server]:
    with running_server(tmp_path, store) as running:
        yield running


def verb(server: Server, action: str, session: str, tenant: str | None, **fields: str) -> None:
    """A line as the service layer writes it around a verb."""
    time.sleep(0.003)
    with audit.recorded(server.audit_log, action, session=session, tenant=tenant) as entry:
        entry.update(fields)


def host_line(server: Server, action: str, session: str, tenant: str | None, **kw: str) -> None:
    """A line as a host script writes it (labels of the environment's container). Lines of
    the two trails are merged by their time, which has milliseconds: the pause keeps two
    lines of different trails out of the same millisecond, where their order is unknown."""
    time.sleep(0.003)
    labels = {LABEL_SESSION: session, LABEL_STACK: f"{tenant}.{session}"}
    if tenant:
        labels[LABEL_TENANT] = tenant
    audit_trail.audit(action, actor="host:test", labels=labels, log=str(server.host_log), **kw)


def refuse(server: Server, session: str, detail: str) -> None:
    """A create that raised, as the service layer records a quota refusal."""
    try:
        with audit.recorded(server.audit_log, "create", session=session, tenant="acme") as entry:
            entry["detail"] = detail
            raise RuntimeError(detail)
    except RuntimeError:
        pass


def stream(server: Server, headers: dict[str, str], query: str = "") -> SseReader:
    return SseReader(f"{server.url}/api/events{query}", headers)


def test_the_events_of_one_session_arrive_in_order_with_growing_ids(server: Server) -> None:
    acme = server.key("acme")
    with stream(server, acme, "?session=s1") as reader:
        verb(server, "create", "s1", "acme")
        verb(server, "create", "s2", "acme")  # another session: filtered out
        verb(server, "refresh", "s1", "acme")
        host_line(server, "health-refresh", "s1", "acme", detail="workspace disk 93%")
        host_line(server, "idle-stop", "s1", "acme", detail="idle")
        host_line(server, "backup", "s1", "acme", detail="scheduled: snapshot 1a2b")
        verb(server, "api", "s1", "acme")  # a request line: no event
        verb(server, "destroy", "s1", "acme")
        got = reader.take(7)
        assert reader.quiet(0.5) == []
    assert [e.type for e in got] == [
        "session.created",
        "session.refreshed",
        "session.unhealthy",
        "session.refreshed",
        "session.stopped",
        "backup.done",
        "session.destroyed",
    ]
    ids = [e.id for e in got]
    assert ids == sorted(ids)
    assert len(set(ids)) == 7
    assert {e.data["session"] for e in got} == {"s1"}
    assert [e.data["source"] for e in got] == ["sessions"] * 2 + ["host"] * 4 + ["sessions"]
    assert got[2].data["detail"] == "workspace disk 93%"
    assert all(e.data["id"] == e.id and e.data["type"] == e.type for e in got)


def test_ready_follows_created_once_the_engine_says_so(tmp_path: Path, store: KeyStore) -> None:
    """``session.ready`` comes from the engine's answer (a fake one here; the engine test
    has the real one): after created, when the probe first says ready; never for a
    session whose container is gone."""
    answers = {"s0": ["ready"], "s1": ["waiting", "waiting", "ready"], "s2": ["gone"]}
    asked: list[str] = []

    def probe(session: str, tenant: str | None) -> str:
        asked.append(session)
        assert tenant == "acme"
        return answers[session].pop(0) if len(answers[session]) > 1 else answers[session][0]

    with running_server(tmp_path, store, probe) as server:
        acme = server.key("acme")
        with stream(server, acme) as reader:
            # A create of long ago (a trail read from its start holds them): not watched.
            audit_trail.append(
                server.audit_log,
                {
                    "time": "2026-01-01T00:00:00.000Z",
                    "action": "create",
                    "result": "ok",
                    "session": "s0",
                    "tenant": "acme",
                },
            )
            verb(server, "create", "s1", "acme")
            verb(server, "create", "s2", "acme")
            assert reader.next().data["session"] == "s0"
            got = reader.take(3)
            assert reader.quiet(0.5) == []
    assert [(e.type, e.data["session"]) for e in got] == [
        ("session.created", "s1"),
        ("session.created", "s2"),
        ("session.ready", "s1"),
    ]
    assert got[2].data["source"] == "engine"
    assert asked.count("s1") == 3
    assert asked.count("s2") == 1
    assert "s0" not in asked


def test_a_stream_resumes_after_last_event_id_with_nothing_missed_or_repeated(
    server: Server,
) -> None:
    acme = server.key("acme")
    with stream(server, acme) as reader:
        for session in ("r1", "r2", "r3"):
            verb(server, "create", session, "acme")
        first = reader.take(3)
    # Written while no one listens.
    verb(server, "destroy", "r1", "acme")
    verb(server, "destroy", "r2", "acme")
    with stream(server, {**acme, "Last-Event-ID": str(first[1].id)}) as resumed:
        again = resumed.take(3)
        assert resumed.quiet(0.5) == []
    assert [(e.type, e.data["session"]) for e in again] == [
        ("session.created", "r3"),
        ("session.destroyed", "r1"),
        ("session.destroyed", "r2"),
    ]
    assert again[0].id == first[2].id
    # ?after= does the same for clients that cannot set headers; 0 replays everything.
    with stream(server, acme, "?after=0") as replay:
        assert [e.id for e in replay.take(5)] == [e.id for e in first] + [e.id for e in again[1:]]


def test_a_tenant_sees_only_its_own_events_and_an_admin_filters_by_tenant(
    server: Server,
) -> None:
    acme, globex, admin = server.key("acme"), server.key("globex"), server.key(admin=True)
    with (
        stream(server, acme, "?tenant=globex") as acme_reader,  # asking for another's: own
        stream(server, globex) as globex_reader,
        stream(server, admin) as admin_reader,
        stream(server, admin, "?tenant=acme") as admin_acme,
    ):
        verb(server, "create", "shared-name", "globex")
        verb(server, "create", "shared-name", "acme")
        verb(server, "create", "untenanted", None)
        host_line(server, "idle-stop", "shared-name", "globex")
        assert [e.data["tenant"] for e in acme_reader.take(1)] == ["acme"]
        assert [e.data["tenant"] for e in globex_reader.take(2)] == ["globex", "globex"]
        assert [e.data["tenant"] for e in admin_reader.take(4)] == [
            "globex",
            "acme",
            None,
            "globex",
        ]
        assert [e.data["tenant"] for e in admin_acme.take(1)] == ["acme"]
        for reader in (acme_reader, globex_reader, admin_reader, admin_acme):
            assert reader.quiet(0.3) == []
    # Without a key: no stream at all.
    assert httpx.get(f"{server.url}/api/events", timeout=5).status_code == 401


def test_a_newline_in_a_value_does_not_forge_an_event(server: Server) -> None:
    acme = server.key("acme")
    forged = 'x\n\nid: 999\nevent: session.destroyed\ndata: {"tenant":"globex"}\n\n'
    with stream(server, acme) as reader:
        verb(server, "create", forged, "acme", detail="a\rb\u2028c")
        host_line(server, "backup", "s9", "acme", result="error", detail=f"failed\n{forged}")
        verb(server, "create", "after", "acme")
        got = reader.take(3)
        assert reader.quiet(0.5) == []
    assert [e.type for e in got] == ["session.created", "backup.failed", "session.created"]
    assert got[0].data["session"] == forged
    assert got[1].data["detail"] == f"failed\n{forged}"
    assert got[2].id == got[1].id + 1 == got[0].id + 2
    events = [line for line in reader.raw if line.startswith("event:")]
    data = [line for line in reader.raw if line.startswith("data:")]
    assert len(events) == len(data) == 3
    assert not any(line.startswith("id: 999") for line in reader.raw)


def test_a_key_holds_a_bounded_number_of_streams(server: Server) -> None:
    acme, other = server.key("acme"), server.key("acme")
    readers = [stream(server, acme).__enter__() for _ in range(4)]  # fast_settings: 4
    try:
        with httpx.stream("GET", f"{server.url}/api/events", headers=acme, timeout=10) as refused:
            assert refused.status_code == 429  # (a stream's body would never end: not read)
            refused.read()
        assert "at most 4" in refused.json()["error"]["problems"][0]
        assert "retry-after" in refused.headers
        with stream(server, other):  # another key has its own
            pass
        readers.pop().__exit__()
        deadline = time.monotonic() + 30
        while True:  # the server lets go of a stream when it notices the client left
            with stream(server, acme) as again:
                if again.status == 200:
                    break
            assert time.monotonic() < deadline, again.raw
            time.sleep(0.1)
    finally:
        for reader in readers:
            reader.__exit__()


def test_bad_filters_and_resume_ids_are_refused_with_what_is_allowed(server: Server) -> None:
    acme = server.key("acme")
    bad_type = httpx.get(f"{server.url}/api/events?types=session.exploded", headers=acme)
    assert bad_type.status_code == 422
    assert "session.created" in bad_type.json()["error"]["problems"][0]
    bad_id = httpx.get(f"{server.url}/api/events", headers={**acme, "Last-Event-ID": "x"})
    assert bad_id.status_code == 422
    assert "Last-Event-ID" in bad_id.json()["error"]["problems"][0]
    with stream(server, acme, "?types=quota.refused") as reader:
        verb(server, "create", "q1", "acme")
        refuse(server, "q2", "quota: tenant acme allows environments 2; 2 in use")
        (event,) = reader.take(1)
    assert (event.type, event.data["session"]) == ("quota.refused", "q2")


# --- units: the mapping, the framing, the tail ------------------------------------------------


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ({"action": "create", "result": "ok"}, ["session.created"]),
        ({"action": "create", "result": "error", "detail": "quota: x"}, ["quota.refused"]),
        ({"action": "create", "result": "error", "detail": "DriverError"}, ["session.failed"]),
        ({"action": "refresh", "result": "ok"}, ["session.refreshed"]),
        ({"action": "destroy", "result": "ok"}, ["session.destroyed"]),
        ({"action": "destroy", "result": "error"}, ["session.failed"]),
        (
            {"action": "health-refresh", "result": "ok"},
            ["session.unhealthy", "session.refreshed"],
        ),
        (
            {"action": "health-restart", "result": "ok"},
            ["session.unhealthy", "session.restarted"],
        ),
        ({"action": "idle-stop", "result": "ok"}, ["session.stopped"]),
        ({"action": "pause", "result": "ok"}, ["session.paused"]),
        ({"action": "resume", "result": "ok", "detail": "already running"}, ["session.resumed"]),
        ({"action": "pause", "result": "error"}, ["session.failed"]),
        ({"action": "idle-poweroff", "result": "ok"}, ["host.poweroff"]),
        ({"action": "backup", "result": "ok"}, ["backup.done"]),
        ({"action": "backup", "result": "error"}, ["backup.failed"]),
        ({"action": "backup-check", "result": "ok"}, []),
        ({"action": "restore", "result": "ok"}, ["backup.restored"]),
        ({"action": "api", "result": "ok"}, []),
        ({"action": "attach", "result": "ok"}, []),
        ({"action": ["create"], "result": "ok"}, []),
    ],
)
def test_audit_lines_map_to_events(entry: dict[str, object], expected: list[str]) -> None:
    kinds = [kind for kind, _ in events_of(entry)]
    assert kinds == expected
    assert set(kinds) <= set(EVENT_TYPES)


def test_a_frame_is_one_data_line_whatever_the_values() -> None:
    hostile = {
        "action": "create",
        "result": "ok",
        "session": "a\nid: 7\n\ndata: x\r\rb\u2028\u2029\x85",
        "tenant": {"nested": "\n"},
        "time": 12,
    }
    (row,) = rows_of(Line(json.dumps(hostile).encode(), "sessions"), datetime.now(UTC))
    row.id = 41
    text = frame(row)
    assert text.endswith("\n\n")
    assert text.count("\n") == 4
    assert "\r" not in text
    assert text.isascii()
    assert json.loads(text.splitlines()[2].removeprefix("data: "))["session"] == hostile["session"]
    assert rows_of(Line(b"not json", "host"), datetime.now(UTC)) == []
    assert rows_of(Line(b"[1, 2]", "host"), datetime.now(UTC)) == []


def test_the_tail_follows_rotation_and_waits_for_whole_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "audit.jsonl"
    tail = Tail(log, "host", None, 0)
    assert tail.read()[0] == []
    audit_trail.append(log, {"action": "create", "result": "ok", "session": "a"})
    lines, inode, offset = tail.read()
    tail.advance(inode, offset)
    assert [json.loads(line.raw)["session"] for line in lines] == ["a"]
    with open(log, "ab") as handle:
        handle.write(b'{"action": "create", "session": "half')  # being written
    assert tail.read()[0] == []
    with open(log, "ab") as handle:
        handle.write(b'"}\n')
    lines, inode, offset = tail.read()
    tail.advance(inode, offset)
    assert [json.loads(line.raw)["session"] for line in lines] == ["half"]
    # A line lands, then the trail rotates before the next read: both are read once.
    audit_trail.append(log, {"action": "create", "result": "ok", "session": "b"})
    monkeypatch.setattr(audit_trail, "MAX_BYTES", 0)
    audit_trail.append(log, {"action": "create", "result": "ok", "session": "c"})
    lines, inode, offset = tail.read()
    tail.advance(inode, offset)
    assert [json.loads(line.raw)["session"] for line in lines] == ["b", "c"]
    assert tail.read()[0] == []


def test_old_events_are_pruned_unless_a_webhook_still_owes_them(store: KeyStore) -> None:
    events = EventStore(store.engine)
    hooks = WebhookStore(store.engine)
    hook = hooks.create("acme", "http://127.0.0.1:9/", [], "test", 20)
    tail = Tail(Path("/nonexistent/audit.jsonl"), "sessions", None, 0)
    lines = [
        Line(
            json.dumps(
                {"action": "create", "result": "ok", "session": s, "tenant": "acme"}
            ).encode(),
            "sessions",
        )
        for s in ("old-delivered", "old-owed", "new")
    ]
    stored = {row.session: row.id for row in events.ingest([(tail, lines, 1, 0)])}
    assert hooks.fan_out() == 3
    long_ago = datetime.now(UTC) - timedelta(days=40)
    with Session(store.engine) as session, session.begin():
        session.execute(
            update(Event)
            .where(Event.session.in_(["old-delivered", "old-owed"]))
            .values(stored_at=long_ago)
        )
        session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.event_id == stored["old-delivered"])
            .values(state="delivered", updated_at=long_ago)
        )
    assert events.prune(30 * 86400) == 1
    left = events.after(0, tenant="acme", every_tenant=False)
    assert [row.session for row in left] == ["old-owed", "new"]
    assert [d.event_id for d, _ in hooks.deliveries(hook.id, 10)] == [
        stored["new"],
        stored["old-owed"],
    ]


def test_lines_without_events_cost_no_store_write_until_their_positions_are_due(
    tmp_path: Path, store: KeyStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request's own ``api`` line is no event: polls reading only such lines write
    nothing (a commit per poll cost a twentieth of the server under load); their positions
    go with the next event or after POSITIONS_EVERY_S, and a restarted hub reading those
    lines again stores nothing twice."""
    from dockyard.api import events_hub

    trail = tmp_path / "audit.jsonl"
    settings = EventSettings(audit_logs=((trail, "sessions"),))
    events = EventStore(store.engine)

    def request_line(n: int) -> None:
        audit_trail.append(trail, {"action": "api", "result": "ok", "detail": f"GET / {n}"})

    hub = events_hub.EventHub(events, settings, probe=lambda _s, _t: "gone")
    request_line(0)
    assert hub.poll() == []  # the first poll writes the positions
    monkeypatch.setattr(events_hub, "POSITIONS_EVERY_S", 3600.0)  # however slow this runs
    written = events.position(hub.tails[0])
    assert written[1] == trail.stat().st_size
    for n in range(1, 5):
        request_line(n)
        assert hub.poll() == []
    assert events.position(hub.tails[0]) == written  # nothing written for them
    verb_line = {"action": "create", "result": "ok", "session": "s1", "tenant": "acme"}
    audit_trail.append(trail, verb_line)
    assert [e.session for e in hub.poll()] == ["s1"]
    assert events.position(hub.tails[0])[1] == trail.stat().st_size  # with the event
    request_line(5)
    monkeypatch.setattr(events_hub, "POSITIONS_EVERY_S", 0.0)
    assert hub.poll() == []
    assert events.position(hub.tails[0])[1] == trail.stat().st_size  # due: written
    # A restart after lines whose positions were not written: read again, nothing stored.
    monkeypatch.setattr(events_hub, "POSITIONS_EVERY_S", 3600.0)  # not due again
    request_line(6)
    audit_trail.append(trail, {**verb_line, "session": "s2"})
    request_line(7)
    assert [e.session for e in hub.poll()] == ["s2"]
    request_line(8)
    assert hub.poll() == []
    again = events_hub.EventHub(events, settings, probe=lambda _s, _t: "gone")
    assert again.poll() == []
    with Session(store.engine) as session:
        stored = session.query(Event.session).filter(Event.session.in_(["s1", "s2"])).all()
    assert sorted(s for (s,) in stored) == ["s1", "s2"]
