"""The E2B-compatible face without an engine: the template table, the request a sandbox
becomes, deadlines and their expiry, tenant scoping and tokens (dockyard.sessions.e2b over
a recording fake of the sessions service), the routing's target and header rules, and the
HTTP answers in the SDKs' error shape (the app in-process)."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from dockyard.api import e2b_admission, e2b_upstream, e2b_websocket_proxy
from dockyard.errors import Conflict, InvalidInput
from dockyard.sessions import e2b, e2b_deadlines, e2b_records, e2b_templates
from dockyard.sessions.pause import State
from dockyard.sessions.registry import Record, Registry, SessionNotFound
from tests.api.conftest import Api


@dataclass
class Where:
    state: Path
    config_file: Path | None = None

    @property
    def audit_log(self) -> Path:
        return self.state / "audit.log"


@dataclass
class FakeSessions:
    """Records what the E2B verbs ask of the sessions service."""

    where: Where
    created: list[tuple[dict[str, Any], dict[str, str]]] = field(default_factory=list)
    destroyed: list[tuple[str, str | None]] = field(default_factory=list)
    fail_destroy: bool = False
    resumed: list[str] = field(default_factory=list)
    paused: list[str] = field(default_factory=list)

    @property
    def registry(self) -> Registry:
        return Registry(self.where.state / "sessions")

    def create(self, request: dict[str, Any], secrets: dict[str, str], **_: Any) -> None:
        self.created.append((request, secrets))
        tenant = request.get("tenant")
        self.registry.save(
            Record(
                session_id=request["sessionId"],
                tenant=tenant,
                stack_name=f"{tenant or 'sessions'}.{request['sessionId']}",
                cwd=request["cwd"],
                manifest_path=str(self.where.state / "none.json"),
                host="local",
                request=request,
                created_at="2026-12-07T00:00:00.000Z",
            )
        )

    def destroy(self, session: str, tenant: str | None = None, **_: Any) -> None:
        if self.fail_destroy:
            raise RuntimeError("engine away")
        record = self.registry.find(session, tenant)
        self.destroyed.append((session, tenant))
        self.registry.remove(record.stack_name)

    def pause(self, session: str, tenant: str | None = None) -> State:
        self.paused.append(session)
        return State(session, "paused", True)

    def resume(self, session: str, tenant: str | None = None) -> State:
        self.resumed.append(session)
        return State(session, "running", True)

    def workspace(self, session: str, tenant: str | None = None) -> Any:
        """A data plane whose stats are :data:`STATS` (what Workspace.stats answers)."""
        self.registry.find(session, tenant)
        return SimpleNamespace(stats=lambda: STATS)


STATS = {
    "status": "running",
    "memory": {"used": 123_000_000, "limit": 2_000_000_000, "percent": 6.2},
    "cpu": {"percent": 12.5, "onlineCpus": 8},
    "pids": 7,
    "disk": {"total": 10_000_000_000, "used": 4_000_000, "available": 9_000_000_000},
}


@pytest.fixture
def fake(tmp_path: Path) -> FakeSessions:
    return FakeSessions(Where(tmp_path / "state"))


def test_templates_map_to_backend_variant_profile() -> None:
    assert e2b_templates.template("base") == e2b_templates.TEMPLATES["base"]
    assert (e2b_templates.template("base").backend, e2b_templates.template("base").variant) == (
        "claude",
        None,
    )
    assert e2b_templates.template("code-interpreter-v1").variant == "python"
    assert e2b_templates.template("codex:latest").backend == "codex"
    by_label = e2b_templates.template("codex-go-large")
    assert (by_label.backend, by_label.variant, by_label.profile) == ("codex", "go", "large")
    for bad in ("nosuch", "", None, "claude-ruby", 7):
        with pytest.raises(InvalidInput) as caught:
            e2b_templates.template(bad)
        assert "allowed: base, claude, codex" in caught.value.problems[0]
        assert "docs/e2b.md" in caught.value.problems[0]


def test_create_builds_the_session_request(fake: FakeSessions) -> None:
    body = {
        "templateID": "python",
        "timeout": 120,
        "metadata": {"team": "web", "userId": "U1"},
        "envVars": {"OPENAI_API_KEY": "sk-canary", "MODE": "x"},
    }
    sandbox = e2b.create(fake, body, "acme")
    [(request, secrets)] = fake.created
    assert request["sessionId"] == sandbox.sandboxId
    assert e2b.SANDBOX_ID.fullmatch(sandbox.sandboxId)
    assert (request["tenant"], request["backend"], request["variant"]) == (
        "acme",
        "claude",
        "python",
    )
    # Valid label keys become labels; all metadata is kept as given.
    assert request["labels"] == {"team": "web", "e2b.template": "python"}
    assert sandbox.metadata == {"team": "web", "userId": "U1"}
    # envVars travel as secrets (names in the request, values apart), with the daemon's token.
    assert request["secrets"] == sorted(["OPENAI_API_KEY", "MODE", e2b.TOKEN_SECRET])
    assert "sk-canary" not in repr(request)
    assert secrets["OPENAI_API_KEY"] == "sk-canary"
    assert secrets[e2b.TOKEN_SECRET] == sandbox.envdAccessToken
    assert len(sandbox.envdAccessToken) >= 32
    assert sandbox.endAt is not None
    life = e2b_records.parse_iso(sandbox.endAt) - e2b_records.parse_iso(sandbox.startedAt)
    assert life == dt.timedelta(seconds=120)
    stored = (fake.where.state / "e2b" / f"acme.{sandbox.sandboxId}.json").stat().st_mode
    assert stored & 0o777 == 0o600
    assert Path(request["cwd"]).is_dir()


def test_create_refuses_bad_input_all_at_once(fake: FakeSessions) -> None:
    with pytest.raises(InvalidInput) as caught:
        e2b.create(
            fake,
            {"templateID": "base", "timeout": 0, "metadata": {"k": 1}, "envVars": []},
            "acme",
        )
    problems = caught.value.problems
    assert any(p.startswith("timeout: 0 is not allowed (allowed: whole seconds") for p in problems)
    assert "metadata: not a mapping of strings to strings" in problems
    assert "envVars: not a mapping of strings to strings" in problems
    with pytest.raises(InvalidInput) as caught:
        e2b.create(fake, {"templateID": "base", "envVars": {e2b.TOKEN_SECRET: "x"}}, None)
    assert caught.value.problems == [
        f"envVars.{e2b.TOKEN_SECRET}: set by dockyard (allowed: any other name)"
    ]
    for bad in (True, -5, e2b.MAX_TIMEOUT_S + 1, "60"):
        with pytest.raises(InvalidInput):
            e2b.timeout_seconds(bad)
    assert fake.created == []


def test_tenants_tokens_timeouts_and_expiry(
    fake: FakeSessions, monkeypatch: pytest.MonkeyPatch
) -> None:
    mine = e2b.create(fake, {"templateID": "base", "metadata": {"k": "v"}}, "acme")
    theirs = e2b.create(fake, {"templateID": "base"}, "other")
    # Another tenant's sandbox is not found, exactly like a missing one.
    for sandbox_id in (mine.sandboxId, "snosuch"):
        with pytest.raises(SessionNotFound, match=f"no sandbox '{sandbox_id}' on this host"):
            e2b.get(fake, sandbox_id, "other")
        with pytest.raises(SessionNotFound):
            e2b.kill(fake, sandbox_id, "other")
    assert [r["sandboxID"] for r in e2b.page(fake, "acme", None)[0]] == [mine.sandboxId]
    assert e2b.page(fake, "acme", None, {"k": "other"})[0] == []
    assert e2b.page(fake, "acme", None, states=["paused"])[0] == []
    assert e2b.by_token(fake, mine.sandboxId, mine.envdAccessToken).tenant == "acme"
    assert e2b.by_token(fake, mine.sandboxId, theirs.envdAccessToken) is None
    assert e2b.by_token(fake, mine.sandboxId, "") is None

    now = dt.datetime.now(dt.UTC)
    e2b.set_timeout(fake, mine.sandboxId, "acme", 3600)
    assert e2b_deadlines.expire(fake, now + dt.timedelta(seconds=400)) == [theirs.sandboxId]
    assert fake.destroyed == [(theirs.sandboxId, "other")]
    # A failed destroy is tried again on the next round.
    fake.fail_destroy = True
    assert e2b_deadlines.expire(fake, now + dt.timedelta(hours=2)) == []
    fake.fail_destroy = False
    # A paused sandbox has no deadline; connecting gives it one again.
    assert e2b.pause(fake, mine.sandboxId, "acme") is True
    monkeypatch.setattr(e2b_records, "state_of", lambda _record, _sessions: "paused")
    assert e2b.get(fake, mine.sandboxId, "acme").endAt is None
    assert e2b_deadlines.expire(fake, now + dt.timedelta(days=3)) == []
    connected = e2b.connect_to(fake, mine.sandboxId, "acme", 60)
    assert fake.resumed == [mine.sandboxId]
    assert connected.endAt is not None
    assert e2b_deadlines.expire(fake, now + dt.timedelta(seconds=120)) == [mine.sandboxId]
    assert list((fake.where.state / "e2b").glob("*.json")) == []


def test_routing_target_both_forms(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(e2b_upstream.DOMAIN_VARIABLE, raising=False)
    assert e2b_upstream.target({"e2b-sandbox-id": "sabc", "e2b-sandbox-port": "8080"}) == (
        "sabc",
        "8080",
    )
    assert e2b_upstream.target({"e2b-sandbox-id": "sabc"}) == ("sabc", "49983")
    assert e2b_upstream.target({"host": "3000-sabc.sandbox.example:8443"}) == ("sabc", "3000")
    assert e2b_upstream.target({"host": "api.example"}) is None
    assert e2b_upstream.target({"host": "127.0.0.1:8080"}) is None
    monkeypatch.setenv(e2b_upstream.DOMAIN_VARIABLE, "sandbox.example")
    assert e2b_upstream.target({"host": "3000-sabc.sandbox.example"}) == ("sabc", "3000")
    assert e2b_upstream.target({"host": "3000-sabc.elsewhere.example"}) is None


def test_forwarded_headers_strip_dockyards_credentials() -> None:
    raw = [
        (b"X-API-Key", b"dk_0123456789ab_secret"),
        (b"Authorization", b"Bearer dk_0123456789ab_secret"),
        (b"E2b-Sandbox-Id", b"sabc"),
        (b"E2b-Sandbox-Port", b"49983"),
        (b"e2b-traffic-access-token", b"t"),
        (b"X-Access-Token", b"envd-token"),
        (b"Cookie", b"dockyard_session=abc; app=1"),
        (b"Connection", b"keep-alive"),
        (b"Host", b"3000-sabc.example"),
        (b"Content-Type", b"application/json"),
    ]
    to_app = dict(e2b_upstream.forwarded_headers(raw, 3000))
    assert to_app == {"cookie": "app=1", "content-type": "application/json"}
    to_daemon = dict(e2b_upstream.forwarded_headers(raw, e2b.ENVD_PORT))
    assert to_daemon["x-access-token"] == "envd-token"
    assert "authorization" not in to_daemon
    # Any X-API-Key goes, a dockyard key or not (an E2B key meant for e2b.app too).
    assert e2b_upstream.forwarded_headers([(b"X-API-Key", b"e2b_0123")], 3000) == []
    basic = dict(e2b_upstream.forwarded_headers([(b"Authorization", b"Basic dXNlcjo=")], 49983))
    assert basic == {"authorization": "Basic dXNlcjo="}  # envd's user, not a dockyard key


def test_routed_calls_carry_dockyards_own_forwarding_headers_not_the_callers() -> None:
    """dockyard is the proxy in front of the sandbox: what the caller says about its
    address or scheme is dropped, and the server's own view is sent (review6 W1)."""
    claims = [
        (b"X-Forwarded-For", b"10.0.0.1"),
        (b"Forwarded", b"for=10.0.0.1;proto=https"),
        (b"X-Real-IP", b"10.0.0.1"),
        (b"X-Forwarded-Proto", b"https"),
        (b"X-Forwarded-Host", b"bank.example"),
        (b"True-Client-IP", b"10.0.0.1"),
        (b"Host", b"3000-sabc.example"),
        (b"Accept", b"*/*"),
    ]
    scope = {"client": ("192.0.2.7", 5555), "scheme": "http", "headers": claims}
    sent = e2b_upstream.forwarded_headers(claims, 3000, scope)
    assert dict(sent) == {
        "accept": "*/*",
        "x-forwarded-for": "192.0.2.7",
        "x-forwarded-proto": "http",
        "x-forwarded-host": "3000-sabc.example",
    }
    assert len(sent) == 4
    upgrade = dict(e2b_upstream.websocket_headers(claims, 3000, {**scope, "scheme": "wss"}))
    assert upgrade["x-forwarded-proto"] == "https"
    assert upgrade["x-forwarded-for"] == "192.0.2.7"


def test_answered_headers_keep_the_sandbox_off_dockyards_cookies() -> None:
    answered = e2b_upstream.answered_headers(
        [
            ("Set-Cookie", "dockyard_session=planted; Domain=example; Path=/"),
            ("set-cookie", " Dockyard_login=x"),
            ("Set-Cookie", "app=1"),
            ("X-Request-Id", "forged"),
            ("Transfer-Encoding", "chunked"),
            ("Content-Type", "text/plain"),
        ]
    )
    assert answered == [(b"set-cookie", b"app=1"), (b"content-type", b"text/plain")]


@pytest.mark.anyio
async def test_http_answers_in_the_sdks_error_shape(api: Api) -> None:
    key = api.store.create("acme", False).key
    other = api.store.create("zeta", False).key
    missing = await api.client.get("/v2/sandboxes")
    assert missing.status_code == 401
    assert missing.json()["code"] == 401
    assert "X-API-Key" in missing.json()["message"]
    assert (
        await api.client.get("/v2/sandboxes", headers={"X-API-Key": "dk_bad"})
    ).status_code == 401
    listed = await api.client.get("/v2/sandboxes", headers={"X-API-Key": key})
    assert (listed.status_code, listed.json()) == (200, [])
    unknown = await api.client.post(
        "/v2/sandboxes", json={"templateID": "nosuch"}, headers={"X-API-Key": key}
    )
    assert unknown.status_code == 422
    assert "'nosuch' is not a template this host serves" in unknown.json()["message"]
    unserved = await api.client.post(
        "/v2/sandboxes",
        json={"templateID": "base", "autoPauseMemory": False, "network": {"allowOut": ["x"]}},
        headers={"X-API-Key": key},
    )
    assert unserved.status_code == 501
    assert "autoPauseMemory: not supported" in unserved.json()["message"]
    for path in ("/v3/templates", "/templates/abc/builds/1", "/volumes", "/sandboxes/s1/fork"):
        answer = await api.client.post(path, headers={"X-API-Key": key})
        assert answer.status_code == 501, path
        assert "docs/e2b.md" in answer.json()["message"]
    # No such sandbox (another tenant's is the same 404: the engine test has a real one).
    for method, path in (
        ("GET", "/sandboxes/sabc"),
        ("DELETE", "/sandboxes/sabc"),
        ("POST", "/sandboxes/sabc/pause"),
        ("POST", "/v2/sandboxes/sabc/connect"),
    ):
        seen = await api.client.request(method, path, headers={"X-API-Key": other}, json={})
        assert seen.status_code == 404, (method, path, seen.text)
        assert seen.json()["message"] == "no sandbox 'sabc' on this host"
    # Many sandboxes' metrics (the path is not taken for a sandbox named "metrics").
    for query in ("sandbox_ids=sabc,sdef", "sandbox_ids=sabc&sandbox_ids=sdef"):
        many = await api.client.get(f"/sandboxes/metrics?{query}", headers={"X-API-Key": other})
        assert (many.status_code, many.json()) == (200, {"sandboxes": {}}), query
    assert (await api.client.get("/sandboxes/metrics?sandbox_ids=sabc")).status_code == 401
    ids = ",".join(f"s{n}" for n in range(101))
    too_many = await api.client.get(
        f"/sandboxes/metrics?sandbox_ids={ids}", headers={"X-API-Key": key}
    )
    assert too_many.status_code == 422
    assert "sandbox_ids: 101 ids" in too_many.json()["message"]
    timeout = await api.client.post(
        "/sandboxes/sabc/timeout", json={"timeout": "soon"}, headers={"X-API-Key": key}
    )
    assert timeout.status_code == 422
    assert timeout.json()["code"] == 422


@pytest.mark.anyio
async def test_list_pages_as_the_sdks_paginator_reads_them(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = [
        e2b.Sandbox(f"s{n}", "acme", "base", f"2026-12-07T00:00:0{n}.000Z", None, 300).detail(
            "running", None, {}
        )
        for n in range(3)
    ]
    asked: list[tuple[Any, ...]] = []

    def page(*args: Any) -> tuple[list[dict[str, Any]], bool]:
        asked.append(args[1:])
        offset, limit = args[-2:]
        return rows[offset : offset + limit], offset + limit < len(rows)

    monkeypatch.setattr(e2b, "page", page)
    key = {"X-API-Key": api.store.create("acme", False).key}
    first = await api.client.get(
        "/v2/sandboxes",
        params={"limit": 2, "metadata": "team=web&k%2520=v", "state": "running"},
        headers=key,
    )
    assert [r["sandboxID"] for r in first.json()] == ["s0", "s1"]
    assert first.headers["x-next-token"] == "2"
    assert asked[0][0] == "acme"  # the key's tenant, whatever was asked
    assert asked[0][2:] == ({"team": "web", "k ": "v"}, ["running"], 0, 2)
    last = await api.client.get("/v2/sandboxes", params={"limit": 2, "nextToken": "2"}, headers=key)
    assert [r["sandboxID"] for r in last.json()] == ["s2"]
    assert "x-next-token" not in last.headers
    bad = await api.client.get("/v2/sandboxes", params={"state": "gone"}, headers=key)
    assert bad.status_code == 422
    assert "allowed: running, paused" in bad.json()["message"]


# --- the routing, driven as uvicorn drives it (raw ASGI scopes), against loopback only -------


class Canary:
    """A loopback HTTP listener standing for the host's services: it must see nothing."""

    def __init__(self) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        hits = self.hits = []  # type: list[str]

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                hits.append(self.path)
                self.send_response(200)
                self.send_header("Content-Length", "6")
                self.end_headers()
                self.wfile.write(b"SECRET")

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def canary() -> Any:
    listener = Canary()
    try:
        yield listener
    finally:
        listener.close()


def _app_of(api: Api) -> Any:
    return api.client._transport.app  # type: ignore[attr-defined]


async def routed(
    api: Api,
    target: bytes,
    headers: list[tuple[bytes, bytes]],
    method: str = "GET",
    body: list[bytes | None] | None = None,
    wait_disconnect: Any = None,
    client: str = "127.0.0.1",
) -> tuple[int, bytes]:
    """One request through the app with ``target`` as the raw request-target (h11 hands
    any visible characters through unvalidated); (status, body). The client stays until
    its answer ended (as a real one: a disconnect before would cut the answer short), or
    until ``wait_disconnect`` is set when given."""
    import asyncio

    path, _, query = target.partition(b"?")
    answered = asyncio.Event()
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path.decode("latin-1"),
        "raw_path": path,
        "query_string": query,
        "root_path": "",
        "headers": [(b"host", b"api"), *headers],
        "client": (client, 5555),
        "server": ("127.0.0.1", 8000),
    }
    parts = list(body or [b""])
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if parts:
            chunk = parts.pop(0)
            if chunk is None:  # the client stops sending its body
                await wait_disconnect.wait()
                return {"type": "http.disconnect"}
            return {"type": "http.request", "body": chunk, "more_body": bool(parts)}
        if wait_disconnect is not None:
            await wait_disconnect.wait()
        else:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(answered.wait(), 30)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            answered.set()

    await _app_of(api)(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    data = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], data


def _as_sandbox(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    ip: str = "127.0.0.2",
    tenants: dict[str, str] | None = None,
) -> None:
    """by_token/address faked: token "tok" opens every sandbox of ``tenants`` (id -> tenant;
    default sabc of acme), each at ``ip``."""
    records = {
        sid: Record(
            session_id=sid,
            tenant=tenant,
            stack_name=f"{tenant}.{sid}",
            cwd=str(tmp_path),
            manifest_path=str(tmp_path / "m.json"),
            host="local",
            request={},
            created_at="2026-12-07T00:00:00.000Z",
        )
        for sid, tenant in (tenants or {"sabc": "acme"}).items()
    }
    monkeypatch.setattr(
        e2b, "by_token", lambda _s, sid, tok: records.get(sid) if tok == "tok" else None
    )
    monkeypatch.setattr(e2b, "address", lambda _record: ip)


TOKEN_HEADERS = [(b"e2b-sandbox-id", b"sabc"), (b"x-access-token", b"tok")]


@pytest.mark.anyio
async def test_routing_never_leaves_the_sandboxs_address(
    api: Api, canary: Canary, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """F1: the request target is a path on the sandbox, never an authority of its own."""
    _as_sandbox(monkeypatch, tmp_path)
    closed = socket_port()  # nothing listens there on 127.0.0.2 either
    headers = [*TOKEN_HEADERS, (b"e2b-sandbox-port", str(closed).encode())]
    p = canary.port
    for evil in (
        f"@127.0.0.1:{p}/steal",
        f"http://127.0.0.1:{p}/steal",
        f"127.0.0.1:{p}",
        "*",
        f":{p}@127.0.0.1:{p}/x",
    ):
        status, data = await routed(api, evil.encode(), headers)
        assert status == 400, (evil, status, data)
        assert b"allowed: a path starting with /" in data, data
    # Bytes no request target may hold (not ASCII): refused too, not a server error.
    status, data = await routed(api, b"/a\xff", headers)
    assert status == 400, (status, data)
    # A path that looks like an authority stays a path on the sandbox's own address.
    status, _ = await routed(api, f"//127.0.0.1:{p}/steal".encode(), headers)
    assert status == 502
    status, _ = await routed(api, b"/ok", headers)
    assert status == 502  # nothing listens in the "sandbox": it was tried there, not elsewhere
    assert canary.hits == []


def socket_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Holder:
    """A loopback "sandbox port" that answers a chunk and then holds the stream open (a long
    command), or ends at once for paths starting /quick."""

    def __init__(self) -> None:
        import asyncio

        self.release = asyncio.Event()
        self.server: Any = None

    async def start(self) -> int:
        import asyncio

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            head = await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n")
            await writer.drain()
            if head.startswith(b"GET /cut"):
                writer.transport.abort()  # the answer breaks off mid-body
                return
            if not head.startswith(b"GET /quick"):
                await self.release.wait()
            writer.write(b"0\r\n\r\n")
            await writer.drain()
            writer.close()

        self.server = await asyncio.start_server(serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])


@pytest.mark.anyio
async def test_routing_caps_held_streams_per_sandbox_and_tenant(
    api: Api, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """F5: one sandbox (or tenant) holding streams cannot take the routing from the others:
    over its cap it is refused 429 at once, another tenant's sandbox answers at once."""
    import asyncio
    import time

    _as_sandbox(
        monkeypatch, tmp_path, "127.0.0.1", {"sabc": "acme", "sdef": "acme", "sxyz": "zeta"}
    )
    monkeypatch.setattr(e2b_admission, "PER_SANDBOX", 2)
    monkeypatch.setattr(e2b_admission, "PER_TENANT", 3)
    holder = Holder()
    port = str(await holder.start()).encode()
    gone = asyncio.Event()

    def to(sandbox: bytes) -> list[tuple[bytes, bytes]]:
        return [
            (b"e2b-sandbox-id", sandbox),
            (b"e2b-sandbox-port", port),
            (b"x-access-token", b"tok"),
        ]

    held = [
        asyncio.create_task(routed(api, b"/hold", to(s), wait_disconnect=gone))
        for s in (b"sabc", b"sabc", b"sdef")
    ]
    try:
        await asyncio.sleep(0.5)
        assert not any(t.done() for t in held)
        status, data = await routed(api, b"/quick", to(b"sabc"))
        assert status == 429, data
        assert b"sandbox 'sabc' has 2 requests in flight (allowed: at most 2" in data
        status, data = await routed(api, b"/quick", to(b"sdef"))
        assert status == 429, data
        assert b"tenant 'acme' has 3 requests in flight (allowed: at most 3" in data
        began = time.monotonic()
        status, data = await routed(api, b"/quick", to(b"sxyz"))
        assert (status, data) == (200, b"x")
        assert time.monotonic() - began < 2
    finally:
        holder.release.set()
        gone.set()
        await asyncio.gather(*held)
        # The slots are given back when the streams end.
        assert await routed(api, b"/quick", to(b"sabc")) == (200, b"x")
        holder.server.close()


@pytest.mark.anyio
async def test_routing_times_out_slow_bodies_and_rate_limits_tokens(
    api: Api, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """F5: a routed body that stops coming is answered 408 after the server's body timeout
    (not held for ever); the token path is charged to the API's rate limiter."""
    import anyio

    from dockyard.api.principal import TokenBuckets

    _as_sandbox(monkeypatch, tmp_path, "127.0.0.1")
    holder = Holder()
    port = str(await holder.start()).encode()
    headers = [
        (b"e2b-sandbox-id", b"sabc"),
        (b"e2b-sandbox-port", port),
        (b"x-access-token", b"tok"),
        (b"content-length", b"10"),
    ]
    ctx = _app_of(api).state.context
    monkeypatch.setattr(ctx, "limits", dataclasses.replace(ctx.limits, body_timeout_s=0.3))
    never = anyio.Event()
    try:
        with anyio.fail_after(5):
            status, data = await routed(
                api, b"/quick", headers, method="POST", body=[b"abc", None], wait_disconnect=never
            )
    finally:
        holder.server.close()
    assert status == 408, data
    assert b"no body bytes came for 0.3 s" in data
    _app_of(api).state.buckets = TokenBuckets(rate=0.01, burst=2)
    closed = [*TOKEN_HEADERS, (b"e2b-sandbox-port", str(socket_port()).encode())]
    answers = [(await routed(api, b"/x", closed))[0] for _ in range(3)]
    assert answers == [502, 502, 429]  # the third is refused before any lookup


def test_a_native_destroy_takes_the_sandboxs_record_with_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """F8: destroyed through dockyard's own verbs (API, CLI, idle monitor: all
    Sessions.destroy), the E2B record goes too: a new session of the same id is no sandbox,
    the old token routes nowhere, the old deadline destroys nothing."""
    from tests.unit.test_sessions import FakeDriver, _sessions

    monkeypatch.setattr(e2b_records, "state_of", lambda _record, _sessions: "running")  # no engine
    monkeypatch.setenv("HOME", str(tmp_path))
    for name in ("DOCKYARD_STATE_DIR", "DOCKYARD_CONFIG", "DOCKYARD_AUDIT_LOG", "DOCKYARD_DRIVER"):
        monkeypatch.delenv(name, raising=False)
    sessions = _sessions(tmp_path, FakeDriver(), {"image": {"ref": "dockyard-core:test"}})
    sandbox = e2b.create(sessions, {"templateID": "base", "timeout": 60}, None)
    records = sessions.where.state / "e2b"
    assert len(list(records.glob("*.json"))) == 1
    sessions.destroy(sandbox.sandboxId, final_backup=False)
    assert list(records.glob("*.json")) == []
    sessions.create({"sessionId": sandbox.sandboxId, "cwd": str(tmp_path), "backend": "claude"})
    assert e2b.page(sessions, None, None)[0] == []
    assert e2b.by_token(sessions, sandbox.sandboxId, sandbox.envdAccessToken) is None
    assert e2b_deadlines.expire(sessions, dt.datetime.now(dt.UTC) + dt.timedelta(days=2)) == []
    assert [r["sessionId"] for r in sessions.list()] == [sandbox.sandboxId]


def test_a_sandbox_woken_another_way_gets_a_deadline_again(
    fake: FakeSessions, monkeypatch: pytest.MonkeyPatch
) -> None:
    """F4: paused through E2B (no deadline), then woken by dockyard's resume or an exec's
    wake on use: the next sweep gives it its timeout from then, and the one after that
    deadline destroys it."""
    sandbox = e2b.create(fake, {"templateID": "base", "timeout": 60}, "acme")
    assert e2b.pause(fake, sandbox.sandboxId, "acme") is True
    states = {"now": "paused"}
    monkeypatch.setattr(e2b_records, "state_of", lambda _record, _sessions: states["now"])
    now = dt.datetime.now(dt.UTC)
    assert e2b_deadlines.expire(fake, now + dt.timedelta(days=1)) == []
    assert e2b.get(fake, sandbox.sandboxId, "acme").endAt is None  # still paused: no clock
    states["now"] = "running"  # woken without connect
    woke = now + dt.timedelta(days=1)
    assert e2b_deadlines.expire(fake, woke) == []
    assert e2b.get(fake, sandbox.sandboxId, "acme").endAt == e2b_records.iso(
        woke + dt.timedelta(seconds=60)
    )
    assert e2b_deadlines.expire(fake, woke + dt.timedelta(seconds=61)) == [sandbox.sandboxId]


@pytest.mark.anyio
async def test_an_answer_cut_mid_body_is_one_log_line_and_a_502_audit(
    api: Api, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """F6: the sandbox (the agent controls it) breaking its answer off costs one log line,
    not a traceback per request; the caller's answer is cut (never completed as if whole)
    and the audit line says 502."""
    import logging

    import anyio

    from dockyard.sessions import audit

    _as_sandbox(monkeypatch, tmp_path, "127.0.0.1")
    holder = Holder()
    port = str(await holder.start()).encode()
    headers = [*TOKEN_HEADERS, (b"e2b-sandbox-port", port)]
    caplog.set_level(logging.INFO)
    sent: list[dict[str, Any]] = []
    scope_app = _app_of(api)
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/cut",
        "raw_path": b"/cut",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"api"), *headers],
        "client": ("127.0.0.1", 5555),
        "server": ("127.0.0.1", 8000),
    }
    done = [False]

    async def receive() -> dict[str, Any]:
        if not done[0]:
            done[0] = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await anyio.sleep(30)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    try:
        with anyio.fail_after(10):
            await scope_app(scope, receive, send)  # nothing escapes to the server
    finally:
        holder.server.close()
    assert sent[0]["type"] == "http.response.start"
    assert not any(
        m["type"] == "http.response.body" and not m.get("more_body", False) for m in sent
    )  # never completed: the caller sees a cut answer, not a short one
    lines = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 1, [r.getMessage() for r in lines]
    assert "sabc" in lines[0].getMessage()
    assert lines[0].exc_info is None
    [entry] = [e for e in audit.read(api.sessions.where.audit_log) if "e2b-route" in e["detail"]]
    assert entry["result"] == "error"
    assert " 502 " in entry["detail"]


def test_the_list_asks_the_engine_for_its_pages_rows_only(
    fake: FakeSessions, monkeypatch: pytest.MonkeyPatch
) -> None:
    """F7: filtered, sorted and cut from the E2B records; state (an engine inspect) and
    limits (a settings load) only for the page's rows."""
    made = [e2b.create(fake, {"templateID": "base"}, "acme").sandboxId for _ in range(6)]
    asked = {"state": 0, "limits": 0}

    def state(_record: Any, _sessions: Any) -> str:
        asked["state"] += 1
        return "running"

    def limits(_sessions: Any, _record: Any) -> dict[str, Any]:
        asked["limits"] += 1
        return {}

    monkeypatch.setattr(e2b_records, "state_of", state)
    monkeypatch.setattr(e2b_records, "limits_of", limits)
    rows, more = e2b.page(fake, "acme", None, None, None, 2, 2)
    assert [r["sandboxID"] for r in rows] == sorted(
        made, key=lambda s: (e2b.get(fake, s, "acme").startedAt, s)
    )[2:4]
    assert more is True
    assert asked == {"state": 2, "limits": 2}
    last, more = e2b.page(fake, "acme", None, None, None, 4, 2)
    assert (len(last), more) == (2, False)
    assert e2b.page(fake, "other", None)[0] == []


def test_cookie_filters_read_the_cookies_name() -> None:
    """F2: the filters match the parsed name (case-insensitive, __Host-/__Secure- prefixed
    too); a sandbox's nameless cookie or one with a Domain attribute never reaches the
    caller (a browser would send a nameless "=dockyard_session=…" back as that cookie)."""
    answered = e2b_upstream.answered_headers(
        [
            ("Set-Cookie", "=dockyard_session=planted; Path=/"),
            ("Set-Cookie", "dockyard_session"),
            ("Set-Cookie", "__Host-dockyard_session=x; Secure; Path=/"),
            ("Set-Cookie", " Dockyard_login =x"),
            ("Set-Cookie", "app=1; domain=.example.com; Path=/"),
            ("Set-Cookie", "app=2; Path=/; HttpOnly"),
        ]
    )
    assert answered == [(b"set-cookie", b"app=2; Path=/; HttpOnly")]
    forwarded = e2b_upstream.forwarded_headers(
        [(b"Cookie", b"DOCKYARD_SESSION=a; __Host-dockyard_login=b;app=1; dockyard_x =c")], 3000
    )
    assert forwarded == [("cookie", "app=1")]


class Engine:
    """A sandbox container's state as reach() sees it: address() answers only while it runs;
    wake_if_suspended() (hibernate's, faked) records each wake and runs a suspended one."""

    def __init__(self, state: str) -> None:
        self.state = state
        self.woken: list[tuple[str, str | None, str]] = []

    def address(self, record: Record) -> str:
        if self.state != "running":
            raise Conflict(f"sandbox {record.session_id!r} is {self.state}")
        return "127.0.0.1"

    def wake_if_suspended(
        self, _sessions: Any, record: Record, by: str, *, wait: bool = True
    ) -> bool:
        assert wait is False  # a routed call's wake never waits for a snapshot's lock
        self.woken.append((record.session_id, record.tenant, by))
        if self.state in ("paused", "hibernated"):
            self.state = "running"
            return True
        return False


def _engine(monkeypatch: pytest.MonkeyPatch, state: str, resumable: bool = False) -> Engine:
    """``resumable``: every sandbox's E2B record (faked) asked for autoResume and was
    paused through E2B (no deadline)."""
    engine = Engine(state)
    monkeypatch.setattr(e2b, "address", engine.address)
    monkeypatch.setattr(e2b.hibernate, "wake_if_suspended", engine.wake_if_suspended)
    if resumable:
        monkeypatch.setattr(
            e2b_records,
            "load",
            lambda _s, record: e2b.Sandbox(
                sandboxId=record.session_id,
                tenant=record.tenant,
                templateID="base",
                startedAt="2026-12-07T00:00:00.000Z",
                endAt=None,
                timeout=60,
                autoPause=True,
                autoResume=True,
            ),
        )
    return engine


def _callers(engine: Engine) -> list[tuple[str, str | None, str]]:
    """(sandbox, tenant, caller) of each wake; its audit detail names call and caller."""
    for _sid, _tenant, by in engine.woken:
        assert re.fullmatch(r"e2b routed call [0-9a-f]{32} by \S+", by), by
    return [(sid, tenant, by.rsplit(" by ", 1)[1]) for sid, tenant, by in engine.woken]


def test_a_routed_call_wakes_a_paused_sandbox_once_and_its_clock_runs_again(
    fake: FakeSessions, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Auto-resume (E2B's ``lifecycle.autoResume``, only with onTimeout "pause"): reach()
    wakes a paused sandbox (once: running, nothing more is woken), its deadline restarts
    from the wake; a stopped one is refused and gets no deadline."""
    resumable = {"templateID": "base", "timeout": 60, "autoPause": True}
    sandbox = e2b.create(fake, {**resumable, "autoResume": {"enabled": True}}, "acme")
    assert (sandbox.autoPause, sandbox.autoResume) == (True, True)
    assert e2b.pause(fake, sandbox.sandboxId, "acme") is True
    record = e2b.record_of(fake, sandbox.sandboxId, "acme")
    engine = _engine(monkeypatch, "paused")
    before = dt.datetime.now(dt.UTC)
    assert e2b.reach(fake, record) == "127.0.0.1"
    after = dt.datetime.now(dt.UTC)
    assert engine.woken == [(sandbox.sandboxId, "acme", "e2b routed call")]
    end = e2b_records.parse_iso(str(e2b.get(fake, sandbox.sandboxId, "acme").endAt))
    limits = (before + dt.timedelta(seconds=59), after + dt.timedelta(seconds=61))
    assert limits[0] <= end <= limits[1]
    assert e2b.reach(fake, record) == "127.0.0.1"
    assert len(engine.woken) == 1  # running: one engine read, no wake
    # Paused through E2B again, then hibernated: it wakes the same way.
    e2b.pause(fake, sandbox.sandboxId, "acme")
    engine.state = "hibernated"
    assert e2b.reach(fake, record, "e2b routed call r1 by key:k1") == "127.0.0.1"
    assert engine.woken[1] == (sandbox.sandboxId, "acme", "e2b routed call r1 by key:k1")

    stopped = e2b.create(fake, {**resumable, "autoResume": {"enabled": True}}, "acme")
    e2b.pause(fake, stopped.sandboxId, "acme")
    engine.state = "exited"
    with pytest.raises(Conflict, match="is exited"):
        e2b.reach(fake, e2b.record_of(fake, stopped.sandboxId, "acme"))
    assert e2b.get(fake, stopped.sandboxId, "acme").endAt is None


def test_a_paused_sandbox_without_auto_resume_or_paused_by_dockyard_is_not_woken(
    fake: FakeSessions, monkeypatch: pytest.MonkeyPatch
) -> None:
    """E2B's default (no autoResume): a routed call to a paused sandbox answers 409 and
    wakes nothing; with autoResume, a pause that was not made through E2B (dockyard's
    pause, hibernate, idle monitor: its deadline kept) is not woken either. autoResume is
    refused without onTimeout "pause"; at its deadline an autoPause sandbox is paused (no
    clock), never destroyed."""
    engine = _engine(monkeypatch, "paused")
    plain = e2b.create(fake, {"templateID": "base", "timeout": 60}, "acme")
    assert plain.autoResume is False
    e2b.pause(fake, plain.sandboxId, "acme")
    with pytest.raises(Conflict, match="is paused"):
        e2b.reach(fake, e2b.record_of(fake, plain.sandboxId, "acme"))
    body = {"templateID": "base", "autoPause": True, "autoResume": {"enabled": True}}
    resumable = e2b.create(fake, body, "acme")
    fake.pause(resumable.sandboxId, "acme")  # dockyard's own pause: the deadline stays
    with pytest.raises(Conflict, match="is paused"):
        e2b.reach(fake, e2b.record_of(fake, resumable.sandboxId, "acme"))
    assert engine.woken == []
    for wrong, said in (
        ({"autoResume": {"enabled": True}}, 'only with onTimeout "pause"'),
        ({"autoResume": {"enabled": "yes"}}, "autoResume: 'yes' is not allowed"),
        ({"autoPause": "yes"}, "autoPause: 'yes' is not a boolean"),
    ):
        with pytest.raises(InvalidInput) as caught:
            e2b.create(fake, {"templateID": "base", **wrong}, "acme")
        assert any(said in problem for problem in caught.value.problems), caught.value.problems
    states = {resumable.sandboxId: "running"}
    monkeypatch.setattr(e2b_deadlines, "_engine_status", lambda record: states[record.session_id])
    e2b_deadlines.expire(fake, dt.datetime.now(dt.UTC) + dt.timedelta(days=1))
    assert fake.destroyed == []
    assert e2b.get(fake, resumable.sandboxId, "acme").endAt is None  # paused at its deadline
    # A hibernated one is already frozen: no deadline. A stopped or restarting one keeps
    # its deadline (an agent that crashes its container at the deadline gets no new
    # timeout from the restart) and is paused by a round after it runs again.
    hibernated = e2b.create(fake, {"templateID": "base", "autoPause": True}, "acme")
    crashed = e2b.create(fake, {"templateID": "base", "autoPause": True}, "acme")
    states.update({hibernated.sandboxId: "hibernated", crashed.sandboxId: "restarting"})
    paused_before = list(fake.paused)
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
    e2b_deadlines.expire(fake, later)
    assert fake.destroyed == []
    assert fake.paused == paused_before  # neither is paused (nothing to freeze, no audit)
    assert e2b.get(fake, hibernated.sandboxId, "acme").endAt is None
    deadline = e2b.get(fake, crashed.sandboxId, "acme").endAt
    assert deadline is not None
    e2b_deadlines.expire(fake, later)  # a sweep while it is down: still the same deadline
    assert e2b.get(fake, crashed.sandboxId, "acme").endAt == deadline
    states[crashed.sandboxId] = "running"
    e2b_deadlines.expire(fake, later)
    assert fake.paused == [*paused_before, crashed.sandboxId]
    assert e2b.get(fake, crashed.sandboxId, "acme").endAt is None


@pytest.mark.anyio
async def test_a_routed_call_to_a_paused_sandbox_is_forwarded_after_one_wake(
    api: Api, canary: Canary, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Through the app: the call that found its sandbox paused is answered by the sandbox
    (the wake happened inside that call, its audit detail naming the caller); a caller who
    cannot prove it may reach the sandbox, or whose target is refused, wakes nothing (the
    wake comes after the credentials' and the target's checks)."""
    _as_sandbox(monkeypatch, tmp_path, "127.0.0.1")
    engine = _engine(monkeypatch, "paused", resumable=True)
    port = (b"e2b-sandbox-port", str(canary.port).encode())
    for target, refused, code in (
        (b"/x", [(b"e2b-sandbox-id", b"sabc"), (b"x-access-token", b"wrong"), port], 404),
        (b"/x", [(b"e2b-sandbox-id", b"sabc"), port], 401),
        (b"@127.0.0.1:1/x", [*TOKEN_HEADERS, port], 400),
    ):
        assert (await routed(api, target, refused))[0] == code
    assert engine.woken == []
    assert canary.hits == []
    assert await routed(api, b"/x", [*TOKEN_HEADERS, port]) == (200, b"SECRET")
    assert _callers(engine) == [("sabc", "acme", "sandbox-token:sabc")]
    assert canary.hits == ["/x"]


def test_metrics_are_one_sample_now_in_the_sdks_shape(
    fake: FakeSessions, monkeypatch: pytest.MonkeyPatch
) -> None:
    """get_metrics: one sample from the session's stats when now is in [start, end] (the
    SDK's own model parses it), none outside; another tenant's sandbox is not found."""
    from e2b.api.client.models.sandbox_metric import SandboxMetric

    monkeypatch.setattr(e2b_records, "limits_of", lambda _sessions, _record: {"cpus": 2.0})
    sandbox = e2b.create(fake, {"templateID": "base"}, "acme")
    now = int(dt.datetime.now(dt.UTC).timestamp())
    [row] = e2b.metrics(fake, sandbox.sandboxId, "acme", now - 60, now + 60)
    parsed = SandboxMetric.from_dict(row)
    assert (parsed.cpu_count, parsed.cpu_used_pct, parsed.mem_used, parsed.mem_total) == (
        2,
        12.5,
        123_000_000,
        2_000_000_000,
    )
    assert (parsed.disk_used, parsed.disk_total) == (4_000_000, 10_000_000_000)
    assert abs(parsed.timestamp_unix - now) <= 5
    assert e2b.metrics(fake, sandbox.sandboxId, "acme", None, None) != []
    assert e2b.metrics(fake, sandbox.sandboxId, "acme", now + 3600, None) == []
    assert e2b.metrics(fake, sandbox.sandboxId, "acme", None, now - 3600) == []
    with pytest.raises(SessionNotFound):
        e2b.metrics(fake, sandbox.sandboxId, "other", None, None)
    # Paused: the engine has no stats of a frozen container; its memory limit is the total.
    monkeypatch.setattr(e2b_records, "limits_of", lambda _s, _r: {"cpus": 2.0, "memory": 512})
    monkeypatch.setattr(fake, "workspace", lambda *_: SimpleNamespace(stats=lambda: {}))
    [paused] = e2b.metrics(fake, sandbox.sandboxId, "acme", None, None)
    assert (paused["memTotal"], paused["memUsed"], paused["diskTotal"]) == (512 << 20, 0, 0)


def test_metrics_of_many_answer_the_callers_running_sandboxes_only(
    fake: FakeSessions, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GET /sandboxes/metrics: a sample of each running sandbox of the caller among the ids;
    another tenant's, a paused one, a plain session and an unknown id are all left out
    (nothing says which exist elsewhere); the SDK's own model parses the answer."""
    from e2b.api.client.models.sandbox_metric import SandboxMetric
    from e2b.api.client.models.sandboxes_with_metrics import SandboxesWithMetrics

    monkeypatch.setattr(e2b_records, "limits_of", lambda _sessions, _record: {"cpus": 2.0})
    mine, paused = (e2b.create(fake, {"templateID": "base"}, "acme") for _ in range(2))
    theirs = e2b.create(fake, {"templateID": "base"}, "zeta")
    fake.create({"sessionId": "plain", "cwd": "/tmp", "tenant": "acme"}, {})
    monkeypatch.setattr(
        e2b_records,
        "state_of",
        lambda record, _s: "paused" if record.session_id == paused.sandboxId else "running",
    )
    asked = [mine.sandboxId, paused.sandboxId, theirs.sandboxId, "plain", "snosuch", mine.sandboxId]
    answer = e2b.metrics_of_many(fake, asked, "acme")
    assert list(answer) == [mine.sandboxId]
    parsed = SandboxesWithMetrics.from_dict({"sandboxes": answer})
    metric = SandboxMetric.from_dict(parsed.sandboxes[mine.sandboxId])
    assert (metric.cpu_count, metric.mem_used, metric.disk_total) == (2, 123_000_000, 10**10)
    assert list(e2b.metrics_of_many(fake, [theirs.sandboxId], "zeta")) == [theirs.sandboxId]
    for bad, said in (
        ([" ", ""], "sandbox_ids: empty"),
        ([f"s{n}" for n in range(101)], "101 ids"),
    ):
        with pytest.raises(InvalidInput) as caught:
            e2b.metrics_of_many(fake, bad, "acme")
        assert said in str(caught.value.problems[0])
        assert "allowed: 1 to 100 sandbox ids" in caught.value.problems[0]


class EchoSocket:
    """A loopback WebSocket "sandbox port": its first message is the handshake's headers
    (JSON), then it echoes; the message "close" closes with code 4001."""

    def __init__(self) -> None:
        self.opened = 0
        self.server: Any = None

    async def start(self) -> int:
        import json

        from websockets.asyncio.server import ServerConnection, serve

        async def handler(socket: ServerConnection) -> None:
            self.opened += 1
            assert socket.request is not None
            seen = {k.lower(): v for k, v in socket.request.headers.raw_items()}
            await socket.send(json.dumps(seen))
            async for message in socket:
                if message == "close":
                    await socket.close(4001, "bye")
                    return
                if message == "big":  # over the routing's message bound
                    await socket.send(b"x" * (e2b_websocket_proxy.WEBSOCKET_MESSAGE_BYTES + 1))
                    continue
                await socket.send(message)

        self.server = await serve(handler, "127.0.0.1", 0, subprotocols=["chat"])
        return int(next(iter(self.server.sockets)).getsockname()[1])


async def socket_through(
    api: Api, headers: list[tuple[bytes, bytes]], messages: list[str], denial: bool = True
) -> list[dict[str, Any]]:
    """One WebSocket through the app (ASGI, in-process): ``messages`` sent after the
    connect; what the app sent back (the accept or the denial, messages, the close)."""
    import asyncio

    import anyio

    scope = {
        "type": "websocket",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "scheme": "ws",
        "path": "/ws",
        "raw_path": b"/ws",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"api"), *headers],
        "client": ("127.0.0.1", 5555),
        "server": ("127.0.0.1", 8000),
        "subprotocols": ["chat"],
        "extensions": {"websocket.http.response": {}} if denial else {},
    }
    incoming: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    incoming.put_nowait({"type": "websocket.connect"})
    for text in messages:
        incoming.put_nowait({"type": "websocket.receive", "text": text})
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    with anyio.fail_after(30):
        await _app_of(api)(scope, incoming.get, send)
    return sent


@pytest.mark.anyio
async def test_websockets_are_routed_with_the_requests_checks(
    api: Api, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A WebSocket to a sandbox's port: refused before any upstream connection without
    credentials, with a wrong token or a foreign browser Origin (HTTP answers in the SDKs'
    shape, or a 1008 close without the denial extension); with the sandbox's token (and
    its own host as Origin) it wakes a paused sandbox once, is accepted with the sandbox's
    subprotocol, passes messages both ways without dockyard's credentials or cookies, and
    ends with the sandbox's close code; audited."""
    import json

    from dockyard.sessions import audit

    echo = EchoSocket()
    port = await echo.start()
    try:
        _as_sandbox(monkeypatch, tmp_path, "127.0.0.1")
        engine = _engine(monkeypatch, "paused", resumable=True)
        to_port = (b"e2b-sandbox-port", str(port).encode())
        for headers, code in (
            ([(b"e2b-sandbox-id", b"sabc"), to_port], 401),
            ([(b"e2b-sandbox-id", b"sabc"), (b"x-access-token", b"wrong"), to_port], 404),
            ([*TOKEN_HEADERS, to_port, (b"origin", b"https://evil.example")], 403),
            ([*TOKEN_HEADERS, to_port, (b"origin", b"null")], 403),
        ):
            sent = await socket_through(api, headers, [])
            assert sent[0]["type"] == "websocket.http.response.start", sent
            assert sent[0]["status"] == code
            assert b'"code":%d' % code in sent[1]["body"]
        closed = await socket_through(api, [(b"e2b-sandbox-id", b"sabc"), to_port], [], False)
        assert closed == [{"type": "websocket.close", "code": 1008}]
        assert (echo.opened, engine.woken) == (0, [])
        # A dockyard key: its tenant's sandbox only (another tenant's answers 404).
        record = e2b.by_token(None, "sabc", "tok")

        def record_of(_sessions: Any, sid: str, tenant: str | None) -> Record:
            if sid != "sabc" or tenant != "acme":
                raise SessionNotFound(f"no sandbox {sid!r} on this host")
            return record

        monkeypatch.setattr(e2b, "record_of", record_of)
        foreign = api.store.create("zeta", False).key
        sent = await socket_through(
            api, [(b"e2b-sandbox-id", b"sabc"), to_port, (b"x-api-key", foreign.encode())], []
        )
        assert sent[0]["status"] == 404
        assert echo.opened == 0
        own = api.store.create("acme", False).key
        sent = await socket_through(
            api, [(b"e2b-sandbox-id", b"sabc"), to_port, (b"x-api-key", own.encode())], ["close"]
        )
        assert sent[0] == {"type": "websocket.accept", "subprotocol": "chat"}
        assert own not in sent[1]["text"]  # the key never reaches the sandbox
        [(_, _, caller)] = _callers(engine)
        assert caller.startswith("key:")
        engine.state = "paused"
        engine.woken.clear()

        allowed = [
            *TOKEN_HEADERS,
            to_port,
            (b"origin", b"http://api"),
            (b"cookie", b"dockyard_session=x; y=1"),
            (b"x-app", b"1"),
            (b"authorization", b"Bearer dk_not_for_the_sandbox"),
        ]
        sent = await socket_through(api, allowed, ["hi", "close"])
        assert sent[0] == {"type": "websocket.accept", "subprotocol": "chat"}
        texts = [m["text"] for m in sent if m["type"] == "websocket.send"]
        seen = json.loads(texts[0])
        assert texts[1:] == ["hi"]
        assert sent[-1] == {"type": "websocket.close", "code": 4001}
        # The handshake's headers as the HTTP routing filters them, and the subprotocols.
        assert seen.get("cookie") == "y=1"
        assert (seen.get("x-app"), seen.get("origin")) == ("1", "http://api")
        assert seen.get("sec-websocket-protocol") == "chat"
        for header in ("x-access-token", "e2b-sandbox-id", "e2b-sandbox-port", "authorization"):
            assert header not in seen, header
        assert echo.opened == 2
        # A message over the bound from the sandbox closes the socket (1009), never held.
        sent = await socket_through(api, allowed, ["big"])
        assert [m["type"] for m in sent] == [
            "websocket.accept",
            "websocket.send",
            "websocket.close",
        ]
        assert sent[-1]["code"] == 1009
        assert _callers(engine) == [("sabc", "acme", "sandbox-token:sabc")]
    finally:
        echo.server.close()
        await echo.server.wait_closed()
    details = [e["detail"] for e in audit.read(api.sessions.where.audit_log)]
    assert any(d.startswith(f"e2b-route-ws {port} /ws 101") for d in details), details
    assert any(d.startswith(f"e2b-route-ws {port} /ws 403") for d in details), details


@pytest.mark.anyio
async def test_a_websocket_through_a_real_uvicorn_reaches_the_sandbox(
    api: Api, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The same app under uvicorn (as `dockyard serve` runs it) on loopback: the upgrade
    is bridged to the sandbox's port, and a foreign Origin gets uvicorn's HTTP denial
    with the SDKs' error body."""
    import asyncio
    import json

    import uvicorn
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed, InvalidStatus

    echo = EchoSocket()
    port = await echo.start()
    _as_sandbox(monkeypatch, tmp_path, "127.0.0.1")
    config = uvicorn.Config(
        _app_of(api), host="127.0.0.1", port=0, lifespan="off", log_level="error"
    )
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    try:
        for _ in range(600):  # up to 30 s on a loaded machine; on as soon as it listens
            if server.started:
                break
            await asyncio.sleep(0.05)
        assert server.started, "uvicorn did not start within 30 s"
        bound = server.servers[0].sockets[0].getsockname()[1]
        headers = {"E2b-Sandbox-Id": "sabc", "E2b-Sandbox-Port": str(port), "X-Access-Token": "tok"}
        url = f"ws://127.0.0.1:{bound}/ws"
        chat: Any = ["chat"]  # the sandbox's server insists on its subprotocol
        handshake = {
            **headers,
            "Authorization": "Basic YXBwOnB3",  # the app's own: passed
            "Cookie": "__Host-Dockyard_login=z; theme=dark",
            "X-App": "1",
        }
        async with connect(
            url, additional_headers=handshake, subprotocols=chat, user_agent_header="sdk/1"
        ) as socket:
            assert socket.subprotocol == "chat"
            seen = json.loads(await socket.recv())
            assert "x-access-token" not in seen
            assert seen.get("authorization") == "Basic YXBwOnB3"
            assert (seen.get("cookie"), seen.get("x-app")) == ("theme=dark", "1")
            assert (seen.get("user-agent"), seen.get("sec-websocket-protocol")) == ("sdk/1", "chat")
            await socket.send("hi")
            assert await socket.recv() == "hi"
            await socket.send("close")
            with pytest.raises(ConnectionClosed):
                await socket.recv()
            assert socket.close_code == 4001
        with pytest.raises(InvalidStatus) as refused:
            await connect(
                url,
                additional_headers=headers,
                subprotocols=chat,
                origin="https://evil.example",  # type: ignore[arg-type]
            )
        assert refused.value.response.status_code == 403
        assert b"https://evil.example" in refused.value.response.body
        assert echo.opened == 1
    finally:
        server.should_exit = True
        await serving
        echo.server.close()
        await echo.server.wait_closed()


def test_a_wake_for_a_routed_call_never_waits_for_a_snapshots_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """R3: while a snapshot or backup holds the session's freeze lock, the routed call's
    wake (wait=False, what reach() asks) raises Busy at once, audited as a refused resume,
    the container untouched; a wake that may wait (exec's, ssh's) still wakes it once the
    lock is free. hibernate.wake passes Busy on (a plain Conflict still answers False)."""
    from dockyard.sessions import hibernate, pause
    from tests.unit.test_hibernate import ABLE, FakeEngine, _on, registered_sessions

    sessions = registered_sessions(tmp_path, ("acme",))
    record = sessions.registry.find("s1", "acme")
    engine = FakeEngine("paused")
    _on(monkeypatch, engine, ABLE)
    busy = pytest.raises(pause.Busy, match="busy: a snapshot or backup of it is running")
    with pause.frozen_state(sessions.where, record), busy:  # a backup copying
        hibernate.wake_if_suspended(sessions, record, "e2b routed call", wait=False)
    assert engine.calls == []
    assert hibernate.wake_if_suspended(sessions, record, "exec or file call") is True
    assert engine.calls == ["unpause"]

    def refused(*_: Any, **__: Any) -> Any:
        raise Conflict("stopped")

    monkeypatch.setattr(hibernate, "resume", refused)
    assert hibernate.wake(sessions, "s1", "acme", "x", wait=False) is False


@pytest.mark.anyio
async def test_routed_calls_to_a_sandbox_being_snapshotted_answer_busy_and_wake_once(
    api: Api, canary: Canary, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """R3 through the app: a wake refused Busy answers 409 "busy" (no worker thread
    waits); concurrent routed calls to one paused sandbox wake it once, one at a time,
    the others awaiting that wake on the event loop, and are all answered."""
    import asyncio
    import threading

    from dockyard.sessions import pause

    _as_sandbox(monkeypatch, tmp_path, "127.0.0.1")
    engine = _engine(monkeypatch, "paused", resumable=True)
    port = (b"e2b-sandbox-port", str(canary.port).encode())

    def busy(_s: Any, record: Record, by: str, *, wait: bool = True) -> bool:
        raise pause.Busy(f"session {record.session_id!r} is busy: a snapshot or backup runs")

    monkeypatch.setattr(e2b.hibernate, "wake_if_suspended", busy)
    status, data = await routed(api, b"/x", [*TOKEN_HEADERS, port])
    assert status == 409, data
    assert b"is busy" in data
    assert canary.hits == []

    inside = {"now": 0, "most": 0}
    guard = threading.Lock()
    slow = threading.Event()

    def counted(_s: Any, record: Record, by: str, *, wait: bool = True) -> bool:
        with guard:
            inside["now"] += 1
            inside["most"] = max(inside["most"], inside["now"])
        slow.wait(0.3)  # a thaw takes a moment: the other calls arrive meanwhile
        with guard:
            inside["now"] -= 1
        return engine.wake_if_suspended(_s, record, by, wait=wait)

    monkeypatch.setattr(e2b.hibernate, "wake_if_suspended", counted)
    answers = await asyncio.gather(*(routed(api, b"/x", [*TOKEN_HEADERS, port]) for _ in range(4)))
    assert answers == [(200, b"SECRET")] * 4
    assert inside["most"] == 1
    assert len(engine.woken) == 1


@pytest.mark.anyio
async def test_failed_token_tries_never_empty_the_sandboxs_bucket(
    api: Api, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """R5: wrong tokens are charged to (sandbox, client address): one address guessing
    is refused 429 after the burst, while the sandbox's own token from another address
    still passes; the sandbox's bucket is charged only once a token matched."""
    from dockyard.api.principal import TokenBuckets

    _as_sandbox(monkeypatch, tmp_path, "127.0.0.1")
    _app_of(api).state.buckets = TokenBuckets(rate=0.01, burst=2)
    closed = (b"e2b-sandbox-port", str(socket_port()).encode())
    wrong = [(b"e2b-sandbox-id", b"sabc"), (b"x-access-token", b"wrong"), closed]
    guesses = [(await routed(api, b"/x", wrong, client="10.0.0.9"))[0] for _ in range(3)]
    assert guesses == [404, 404, 429]
    owner = [(await routed(api, b"/x", [*TOKEN_HEADERS, closed]))[0] for _ in range(3)]
    assert owner == [502, 502, 429]  # the sandbox's own burst, all of it left


@pytest.mark.anyio
async def test_sandbox_ids_no_sandbox_could_have_key_no_rate_bucket(
    api: Api, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """R13: an unauthenticated caller names the sandbox: an id this face never makes (too
    long, other characters) is answered like a missing sandbox before any rate bucket is
    keyed by it; a well-formed one is charged as before."""
    from dockyard.api.principal import TokenBuckets

    _as_sandbox(monkeypatch, tmp_path, "127.0.0.1")
    buckets = _app_of(api).state.buckets = TokenBuckets(rate=0.01, burst=2)
    closed = (b"e2b-sandbox-port", str(socket_port()).encode())
    for bad in (b"s" * 64, b"x" * 262144, b"Sabc", b"s-abc", b"s.abc"):
        guess = [(b"e2b-sandbox-id", bad), (b"x-access-token", b"wrong"), closed]
        status, body = await routed(api, b"/x", guess, client="10.0.0.9")
        assert status == 404, (bad[:20], status)
        assert b"x" * 100 not in body
    assert len(buckets) == 0
    guess = [(b"e2b-sandbox-id", b"sabc"), (b"x-access-token", b"wrong"), closed]
    assert (await routed(api, b"/x", guess, client="10.0.0.9"))[0] == 404
    assert len(buckets) == 1


def test_full_rate_buckets_are_dropped_past_the_prune_size(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """R13: callers can name buckets, so past PRUNE_AT the full ones (the same as none)
    are dropped; a bucket still owed tokens is kept, and its debt with it."""
    from dockyard.api import principal

    clock = [1000.0]
    monkeypatch.setattr(principal.time, "monotonic", lambda: clock[0])
    buckets = principal.TokenBuckets(rate=1.0, burst=2)
    monkeypatch.setattr(buckets, "PRUNE_AT", 5)
    assert [buckets.take("owing") for _ in range(3)] == [0.0, 0.0, 1.0]
    for n in range(4):
        buckets.take(f"guess-{n}")
    assert len(buckets) == 5
    clock[0] += 1.5  # the guesses' buckets are full again; "owing" is at 1.5 of 2
    buckets.take("another")
    assert len(buckets) == 2  # "owing" and "another"
    assert buckets.take("owing") == 0.0
    assert buckets.take("owing") == pytest.approx(0.5)


def test_routed_websockets_are_capped_per_sandbox_and_tenant(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """R9: a WebSocket counts against its own, lower caps (it may hold buffered messages
    in the server), on top of the requests' ones; requests are not counted against them."""
    from dockyard.api.errors import RateLimited

    assert e2b_admission.WEBSOCKETS_PER_SANDBOX <= 8
    assert e2b_admission.WEBSOCKETS_PER_TENANT <= 16
    monkeypatch.setattr(e2b_admission, "WEBSOCKETS_PER_SANDBOX", 2)
    monkeypatch.setattr(e2b_admission, "WEBSOCKETS_PER_TENANT", 3)
    caps = e2b_admission.Caps()
    with contextlib.ExitStack() as held:
        held.enter_context(caps.slot("s1", "acme", websocket=True))
        held.enter_context(caps.slot("s1", "acme", websocket=True))
        with pytest.raises(RateLimited, match="sandbox 's1' has 2 WebSockets open"):
            held.enter_context(caps.slot("s1", "acme", websocket=True))
        held.enter_context(caps.slot("s1", "acme"))  # a request still goes
        held.enter_context(caps.slot("s2", "acme", websocket=True))
        with pytest.raises(RateLimited, match="tenant 'acme' has 3 WebSockets open"):
            held.enter_context(caps.slot("s3", "acme", websocket=True))
        held.enter_context(caps.slot("s4", "zeta", websocket=True))
    assert caps.held == {}


@pytest.mark.anyio
async def test_a_websocket_over_its_cap_is_refused_429_before_any_wake(
    api: Api, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """R9 through the app: over the WebSocket cap, the SDKs' 429 shape, nothing woken."""
    _as_sandbox(monkeypatch, tmp_path, "127.0.0.1")
    engine = _engine(monkeypatch, "paused", resumable=True)
    monkeypatch.setattr(e2b_admission, "WEBSOCKETS_PER_SANDBOX", 0)
    sent = await socket_through(api, [*TOKEN_HEADERS, (b"e2b-sandbox-port", b"3000")], [])
    assert sent[0]["status"] == 429
    assert b"WebSockets open" in sent[1]["body"]
    assert engine.woken == []
