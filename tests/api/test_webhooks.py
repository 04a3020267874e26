"""Webhooks (issue 27 item 3): per tenant, signed with HMAC-SHA256 over timestamp and body,
retried with backoff up to a bound, logged; URLs that would reach the host's inside are
refused unless the admin allows the network. The real server on loopback on SQLite and
PostgreSQL stores (tests/api/test_events_support.py: its settings allow 127.0.0.0/8, as an
admin would, so the receiver on loopback can be reached)."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, text

from dockyard.api import webhook_delivery
from dockyard.api.events_settings import networks
from dockyard.api.store import MIGRATIONS, KeyStore, migrate
from dockyard.api.webhook_delivery import (
    ANSWER_MAX,
    answer_kept,
    check_url,
    excerpt,
    signature,
)
from dockyard.api.webhook_store import Only, WebhookStore
from dockyard.errors import InvalidInput
from dockyard.sessions import audit
from tests.api.conftest import Api
from tests.api.test_events_support import Server, receiver, running_server


@pytest.fixture
def server(tmp_path: Path, store: KeyStore) -> Iterator[Server]:
    with running_server(tmp_path, store) as running:
        yield running


def create_line(server: Server, session: str, tenant: str | None) -> None:
    with audit.recorded(server.audit_log, "create", session=session, tenant=tenant):
        pass


def deliveries(server: Server, hook: str, key: dict[str, str], done: int) -> list[dict]:
    """The delivery log once ``done`` deliveries are settled (delivered or failed)."""
    deadline = time.monotonic() + 30
    while True:
        answer = httpx.get(f"{server.url}/api/webhooks/{hook}/deliveries", headers=key)
        assert answer.status_code == 200, answer.text
        log = answer.json()
        if sum(d["state"] != "pending" for d in log) >= done or time.monotonic() > deadline:
            return log
        time.sleep(0.05)


def test_a_delivery_is_signed_and_retried_after_a_500(server: Server) -> None:
    acme = server.key("acme")
    with receiver([500]) as hook_receiver:
        made = httpx.post(
            f"{server.url}/api/webhooks",
            json={"url": hook_receiver.url, "events": ["session.created"]},
            headers=acme,
        )
        assert made.status_code == 201, made.text
        hook = made.json()
        assert hook["secret"].startswith("whsec_")
        assert hook["tenant"] == "acme"
        create_line(server, "w1", "globex")  # another tenant's: never sent here
        create_line(server, "w1", "acme")
        with audit.recorded(server.audit_log, "destroy", session="w1", tenant="acme"):
            pass  # not in the webhook's filter
        hook_receiver.wait_for(2)
        time.sleep(0.5)  # nothing else comes
        got = list(hook_receiver.got)
    assert [code for _, _, code in got] == [500, 200]
    (headers, body, _), (headers2, body2, _) = got
    assert body == body2
    assert headers["dockyard-delivery"] == headers2["dockyard-delivery"]
    event = json.loads(body)
    assert (event["type"], event["session"], event["tenant"]) == ("session.created", "w1", "acme")
    assert headers["dockyard-event"] == "session.created"
    assert headers["dockyard-event-id"] == str(event["id"])
    for sent_headers, sent_body in ((headers, body), (headers2, body2)):
        stamp = sent_headers["dockyard-timestamp"]
        assert abs(int(stamp) - time.time()) < 60
        mac = hmac.new(hook["secret"].encode(), f"{stamp}.".encode() + sent_body, hashlib.sha256)
        assert hmac.compare_digest(sent_headers["dockyard-signature"], f"sha256={mac.hexdigest()}")
        assert signature("whsec_other", stamp, sent_body) != sent_headers["dockyard-signature"]
    (logged,) = deliveries(server, hook["id"], acme, 1)
    assert logged["state"] == "delivered"
    assert logged["attempts"] == 2
    assert logged["lastStatus"] == 200
    assert logged["eventId"] == event["id"]
    assert logged["eventType"] == "session.created"


def test_attempts_are_bounded_and_logged_as_failed(server: Server) -> None:
    acme = server.key("acme")
    with receiver([500] * 10) as hook_receiver:
        made = httpx.post(
            f"{server.url}/api/webhooks", json={"url": hook_receiver.url}, headers=acme
        )
        hook = made.json()
        create_line(server, "w2", "acme")
        (logged,) = deliveries(server, hook["id"], acme, 1)
        time.sleep(0.5)
        attempts = len(hook_receiver.got)
    # fast_settings: 3 attempts, 0.2 s then 0.4 s apart.
    assert attempts == 3
    assert logged["state"] == "failed"
    assert logged["attempts"] == 3
    assert logged["lastStatus"] == 500
    assert logged["lastError"] == "answered 500"


def test_a_slow_receiver_holds_up_no_other_delivery(server: Server) -> None:
    acme, globex = server.key("acme"), server.key("globex")
    hold = threading.Event()
    with receiver(hold=hold) as slow, receiver() as fast:
        hooks = []
        for key, url in ((acme, slow.url), (globex, fast.url)):
            made = httpx.post(f"{server.url}/api/webhooks", json={"url": url}, headers=key)
            assert made.status_code == 201, made.text
            hooks.append(made.json()["id"])
        create_line(server, "x1", "acme")
        create_line(server, "x1", "globex")
        slow.wait_for(1)  # and it does not answer while the test runs
        create_line(server, "x2", "globex")
        fast.wait_for(2)
        # The slow delivery is still under way (its first attempt not settled, not timed
        # out): the fast receiver's second event did not wait for it.
        log = httpx.get(f"{server.url}/api/webhooks/{hooks[0]}/deliveries", headers=acme).json()
        assert [(d["state"], d["attempts"]) for d in log] == [("pending", 0)]
        hold.set()
    # Deliveries run side by side: a receiver orders by Dockyard-Event-Id if it must.
    assert sorted(json.loads(body)["session"] for _, body, _ in fast.got) == ["x1", "x2"]


def test_a_tenant_sees_and_deletes_only_its_own_webhooks(server: Server) -> None:
    acme, globex, admin = server.key("acme"), server.key("globex"), server.key(admin=True)
    url = f"{server.url}/api/webhooks"
    mine = httpx.post(url, json={"url": "http://127.0.0.1:9/a"}, headers=acme).json()
    theirs = httpx.post(
        url, json={"url": "http://127.0.0.1:9/g", "tenant": "acme"}, headers=globex
    ).json()
    assert theirs["tenant"] == "globex"  # a tenant's key acts only as its tenant
    listed = httpx.get(url, headers=acme).json()
    assert [h["id"] for h in listed] == [mine["id"]]
    assert "secret" not in listed[0]
    assert "secret" not in httpx.get(f"{url}/{mine['id']}", headers=acme).json()
    missing = httpx.get(f"{url}/0000000000000000", headers=globex)
    for method, path in (
        ("GET", mine["id"]),
        ("GET", f"{mine['id']}/deliveries"),
        ("DELETE", mine["id"]),
    ):
        answer = httpx.request(method, f"{url}/{path}", headers=globex)
        assert answer.status_code == 404, (method, path, answer.text)
        assert answer.json()["error"]["kind"] == missing.json()["error"]["kind"]
        assert mine["id"] in answer.json()["error"]["problems"][0]
    assert {h["id"] for h in httpx.get(url, headers=admin).json()} == {mine["id"], theirs["id"]}
    assert [h["id"] for h in httpx.get(f"{url}?tenant=globex", headers=admin).json()] == [
        theirs["id"]
    ]
    assert httpx.delete(f"{url}/{mine['id']}", headers=acme).status_code == 204
    assert httpx.get(url, headers=acme).json() == []
    assert httpx.get(url, headers=globex).json()[0]["id"] == theirs["id"]


@pytest.mark.anyio
async def test_without_the_admins_allowance_inward_urls_are_refused(api: Api) -> None:
    """The default settings (no allowed network): loopback, private and metadata addresses
    and other schemes answer 422 with the rule; nothing is stored."""
    acme = api.key("acme")
    for url in (
        "http://127.0.0.1:8080/hook",
        "http://localhost/hook",
        "http://[::1]/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "http://10.0.0.5/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://0.0.0.0/hook",
        "https://user:pw@example.com/hook",
        "ftp://example.com/hook",
        "file:///etc/passwd",
    ):
        answer = await api.client.post("/api/webhooks", json={"url": url}, headers=acme)
        assert answer.status_code == 422, (url, answer.text)
        assert "DOCKYARD_API_WEBHOOK_ALLOW_NETWORKS" in answer.json()["error"]["problems"][0], url
    bad = await api.client.post(
        "/api/webhooks", json={"url": "http://127.0.0.1/", "events": ["nope"]}, headers=acme
    )
    assert bad.status_code == 422
    assert "session.created" in bad.json()["error"]["problems"][0]
    assert (await api.client.get("/api/webhooks", headers=acme)).json() == []


def test_the_url_rule_judges_every_address_a_name_resolves_to() -> None:
    def to(*addresses: str):  # a resolver that answers what the test says
        return lambda host, port: list(addresses)

    public = "93.184.216.34"
    parsed, address = check_url("https://hooks.example/x", (), to(public))
    assert (parsed.host, address) == ("hooks.example", public)
    for inward in ("127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "100.64.0.1", "fd00::1"):
        with pytest.raises(InvalidInput):
            check_url("https://hooks.example/x", (), to(public, inward))  # one is enough
    with pytest.raises(InvalidInput):
        check_url("https://hooks.example/x", (), to("::ffff:169.254.169.254"))
    with pytest.raises(InvalidInput):
        check_url("https://hooks.example/x", (), to())
    allowed = networks("10.1.2.0/24")
    assert check_url("http://hooks.internal/x", allowed, to("10.1.2.3"))[1] == "10.1.2.3"
    with pytest.raises(InvalidInput):
        check_url("http://hooks.internal/x", allowed, to("10.1.3.3"))
    with pytest.raises(InvalidInput):
        networks("10.0.0.0/8, not-a-network")


@contextmanager
def answering(replies: list[tuple[int, bytes]]) -> Iterator[tuple[str, list[dict[str, str]]]]:
    """A receiver on loopback that answers each request with the next (status, body) of
    ``replies`` (then 200 and no body); yields its URL and the headers it got."""
    got: list[dict[str, str]] = []
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with lock:
                code, body = replies.pop(0) if replies else (200, b"")
                got.append({k.lower(): v for k, v in self.headers.items()})
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: Any) -> None:
            return

    http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=http.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{http.server_address[1]}/hook", got
    finally:
        http.shutdown()
        http.server_close()
        thread.join(5)


def test_the_log_answers_what_happened_to_one_event_at_the_endpoint(server: Server) -> None:
    """One row per (webhook, event), found by the event's id or the delivery's id: its
    attempts, the bound on them, the last status, when — and no answer: the receiver on
    loopback is reached only by the admin's allowance, so its body is not kept (review5
    R7); another tenant finds none of it."""
    acme, globex = server.key("acme"), server.key("globex")
    url = f"{server.url}/api/webhooks"
    hostile = b"\x1b[2J\x1b]0;owned\x07\xe2\x80\xaeevil\r\nline" + b"x" * 8000
    with answering([(503, hostile), (200, b"thanks"), (200, b"thanks")]) as (hook_url, got):
        hook = httpx.post(url, json={"url": hook_url}, headers=acme).json()
        create_line(server, "e1", "acme")
        create_line(server, "e2", "acme")
        log = deliveries(server, hook["id"], acme, 2)
    assert len(log) == 2
    assert {d["state"] for d in log} == {"delivered"}
    # The first request got the 503 (deliveries run side by side: either event's).
    first = got[0]
    event_id = int(first["dockyard-event-id"])
    one = httpx.get(f"{url}/{hook['id']}/deliveries?event={event_id}", headers=acme).json()
    assert [d["eventId"] for d in one] == [event_id]  # one row for the event, not per attempt
    (row,) = one
    assert str(row["id"]) == first["dockyard-delivery"]
    assert (row["state"], row["attempts"], row["attemptsAllowed"]) == ("delivered", 2, 3)
    assert (row["lastStatus"], row["lastError"], row["lastResponse"]) == (200, None, None)
    assert row["lastAttemptAt"] is not None
    assert row["nextAttemptAt"] is None
    detail = httpx.get(f"{url}/{hook['id']}/deliveries/{row['id']}", headers=acme)
    assert detail.status_code == 200, detail.text
    assert detail.json() == row
    other = next(d for d in log if d["eventId"] != event_id)
    page = httpx.get(f"{url}/{hook['id']}/deliveries?limit=1&before={max(d['id'] for d in log)}")
    assert page.status_code == 401  # no key, no log
    page = httpx.get(
        f"{url}/{hook['id']}/deliveries",
        params={"limit": 1, "before": max(d["id"] for d in log)},
        headers=acme,
    ).json()
    assert [d["id"] for d in page] == [min(d["id"] for d in log)]
    assert httpx.get(f"{url}/{hook['id']}/deliveries?state=failed", headers=acme).json() == []
    assert other["attempts"] == 1
    # Another tenant: its own webhook with acme's delivery id, and acme's webhook, are 404.
    theirs = httpx.post(url, json={"url": hook_url}, headers=globex).json()
    for path in (f"{theirs['id']}/deliveries/{row['id']}", f"{hook['id']}/deliveries/{row['id']}"):
        answer = httpx.get(f"{url}/{path}", headers=globex)
        assert answer.status_code == 404, (path, answer.text)
        assert "lastStatus" not in answer.text
    assert (
        httpx.get(f"{url}/{theirs['id']}/deliveries?event={event_id}", headers=globex).json() == []
    )
    bad = httpx.get(f"{url}/{hook['id']}/deliveries?state=lost&event=0", headers=acme)
    assert bad.status_code == 422


def test_a_failed_delivery_keeps_a_bounded_printable_answer(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The receiver on loopback stands in for a public one (answer_kept is judged on its
    own below): its answer's start is kept, bounded and printable."""
    monkeypatch.setattr(webhook_delivery, "answer_kept", lambda address: address == "127.0.0.1")
    acme = server.key("acme")
    hostile = b"\x1b[2J\x1b]0;owned\x07\xe2\x80\xaeevil\r\nline" + b"x" * 8000
    with answering([(500, hostile)] * 3) as (hook_url, got):
        made = httpx.post(f"{server.url}/api/webhooks", json={"url": hook_url}, headers=acme)
        hook = made.json()
        create_line(server, "e3", "acme")
        (logged,) = deliveries(server, hook["id"], acme, 1)
    assert len(got) == 3
    assert (logged["state"], logged["attempts"], logged["lastStatus"]) == ("failed", 3, 500)
    assert logged["lastError"] == "answered 500"
    kept = logged["lastResponse"]
    assert len(kept.encode()) <= ANSWER_MAX + 3 * 16  # replacements are wider than bytes
    assert kept.startswith("\ufffd[2J\ufffd]0;owned\ufffd\ufffdevil  line")
    assert all(c.isprintable() for c in kept)
    assert logged["nextAttemptAt"] is None


def test_only_an_answer_from_a_public_address_is_kept() -> None:
    """The admin's allowance lets a webhook reach an inside address, never read it."""
    for public in ("93.184.216.34", "2606:4700:4700::1111", "::ffff:93.184.216.34"):
        assert answer_kept(public), public
    inside = ("127.0.0.1", "10.1.2.3", "192.168.0.1", "172.16.0.1", "169.254.169.254", "::1")
    for address in (*inside, "fd00::1", "::ffff:10.0.0.1", "100.64.0.1", "fe80::1%eth0"):
        assert not answer_kept(address), address


def test_the_answer_excerpt_is_bounded_and_printable() -> None:
    assert excerpt(b"") is None
    assert excerpt(b"ok") == "ok"
    assert excerpt(b"a\tb\nc\x00d\xff") == "a b c\ufffdd\ufffd"
    assert excerpt("\u202egpj.exe".encode()) == "\ufffdgpj.exe"
    assert len(excerpt(b"y" * 100_000) or "") == ANSWER_MAX


def test_migrating_a_store_with_deliveries_keeps_them(store_url: str) -> None:
    """A store at revision 0003 with a delivery in it, brought to the newest revision: the
    row is kept and reads with no answer and no attempt time yet."""
    if store_url.startswith("sqlite:///"):
        Path(store_url.removeprefix("sqlite:///")).parent.mkdir(parents=True)
    engine = create_engine(store_url)
    try:
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "0003")
        now = datetime.now(UTC)
        with engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO webhooks (id, tenant, url, events, secret, cursor, created_by,"
                    " created_at) VALUES ('h1', 'acme', 'http://x/', '[]', 's', 0, 'k', :now)"
                ),
                {"now": now},
            )
            connection.execute(
                text(
                    "INSERT INTO events (id, key, type, time, source, stored_at)"
                    " VALUES (7, 'k7', 'session.created', 't', 'sessions', :now)"
                ),
                {"now": now},
            )
            connection.execute(
                text(
                    "INSERT INTO webhook_deliveries (webhook_id, event_id, state, attempts,"
                    " next_at, last_status, created_at, updated_at)"
                    " VALUES ('h1', 7, 'failed', 3, :now, 500, :now, :now)"
                ),
                {"now": now},
            )
        migrate(engine)
        ((row, kind),) = WebhookStore(engine).deliveries("h1", 10, Only(event_id=7))
        assert (kind, row.state, row.attempts, row.last_status) == (
            "session.created",
            "failed",
            3,
            500,
        )
        assert (row.last_response, row.last_attempt_at) == (None, None)
    finally:
        engine.dispose()
