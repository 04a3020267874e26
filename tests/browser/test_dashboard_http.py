"""The dashboard over plain HTTP (no browser): the login cookie, CSRF on every action,
tenant scoping. The app runs on loopback with seeded sessions (tests/browser/conftest.py):
acme has a1 and a2, blue has b1."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import httpx
import pytest

from dockyard.sessions import audit
from tests.browser.conftest import Served, as_missing

TOKEN = re.compile(r'name="csrf" value="([^"]+)"')


def _client(served: Served) -> httpx.Client:
    return httpx.Client(base_url=served.url, timeout=30, trust_env=False)


def log_in(client: httpx.Client, key: str) -> httpx.Response:
    form = client.get("/login")
    assert form.status_code == 200
    match = TOKEN.search(form.text)
    assert match, form.text
    return client.post("/login", data={"csrf": match.group(1), "key": key})


def csrf_of(client: httpx.Client, path: str = "/") -> str:
    page = client.get(path)
    assert page.status_code == 200, page.text
    match = TOKEN.search(page.text)
    assert match, page.text
    return match.group(1)


@pytest.fixture
def acme(served: Served) -> Iterator[httpx.Client]:
    with _client(served) as client:
        assert log_in(client, served.keys["acme"]).status_code == 303
        yield client


def test_login_cookie_is_httponly_strict_and_not_the_key(served: Served) -> None:
    with _client(served) as client:
        assert client.get("/").headers["location"] == "/login"
        answer = log_in(client, served.keys["acme"])
        assert answer.status_code == 303, answer.text
        cookie = answer.headers["set-cookie"]
        assert cookie.startswith("dockyard_session=")
        assert "HttpOnly" in cookie
        assert "SameSite=strict" in cookie.replace("Strict", "strict")
        secret = served.keys["acme"].split("_")[-1]
        assert served.keys["acme"] not in cookie
        assert secret not in cookie
        assert client.cookies["dockyard_session"] not in served.keys["acme"]
        page = client.get("/")
        assert page.status_code == 200
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]


def test_login_without_its_token_or_with_a_bad_key_is_refused(served: Served) -> None:
    with _client(served) as client:
        refused = client.post("/login", data={"key": served.keys["acme"]})
        assert refused.status_code == 403
        assert "dockyard_session" not in refused.headers.get("set-cookie", "")
        wrong = log_in(client, "dk_000000000000_nope")
        assert wrong.status_code == 401
        assert "unknown or revoked" in wrong.text
        assert client.get("/").status_code == 303


def test_every_action_without_the_csrf_token_is_refused(served: Served, acme: httpx.Client) -> None:
    token = csrf_of(acme)
    actions = [
        ("/sessions/a1/destroy", {"confirm": "a1"}),
        ("/sessions/a1/refresh", {}),
        ("/sessions/new", {"sessionId": "x1", "cwd": "/srv/app", "backend": "claude"}),
        ("/logout", {}),
    ]
    for path, data in actions:
        for csrf in ({}, {"csrf": ""}, {"csrf": token[:-1] + ("A" if token[-1] != "A" else "B")}):
            answer = acme.post(path, data={**data, **csrf})
            assert answer.status_code == 403, (path, csrf, answer.text)
            assert "token is missing or wrong" in answer.text
    # JSON instead of the form (a cross-site fetch cannot send the token either).
    assert (
        acme.post("/sessions/a1/destroy", json={"csrf": token, "confirm": "a1"}).status_code == 403
    )
    # Nothing happened: a1 is there and the login still works.
    assert [r.session_id for r in served.sessions.registry.all("acme")] == ["a1", "a2"]
    # With the token the gate opens (the confirmation is then checked: not a1's name).
    unconfirmed = acme.post("/sessions/a1/destroy", data={"csrf": token, "confirm": "a2"})
    assert unconfirmed.status_code == 422
    assert "confirm: not the session&#39;s name" in unconfirmed.text


def test_a_tenant_sees_only_its_sessions_and_an_admin_filters(served: Served) -> None:
    with _client(served) as acme, _client(served) as admin:
        log_in(acme, served.keys["acme"])
        log_in(admin, served.keys["admin"])
        for path in ("/", "/rows", "/?tenant=blue", "/rows?tenant=blue"):
            text = acme.get(path).text
            assert 'data-session="a1"' in text, path
            assert 'data-session="a2"' in text, path
            assert 'data-session="b1"' not in text, path
        missing = acme.get("/sessions/nope")
        for path in ("/sessions/b1", "/sessions/b1?tenant=blue", "/sessions/b1/destroy"):
            other = acme.get(path)
            assert other.status_code == missing.status_code == 404, path
            # Word for word what a missing session's page says.
            assert as_missing(other.text, "b1") == missing.text, path
        assert acme.get("/sessions/b1/logs").status_code == 404
        everything = admin.get("/").text
        assert all(f'data-session="{s}"' in everything for s in ("a1", "a2", "b1"))
        blue = admin.get("/rows?tenant=blue").text
        assert 'data-session="b1"' in blue
        assert 'data-session="a1"' not in blue
        assert admin.get("/sessions/b1?tenant=blue").status_code == 200


def test_logout_and_revocation_end_the_login(served: Served) -> None:
    with _client(served) as client:
        log_in(client, served.keys["acme"])
        old = client.cookies["dockyard_session"]
        assert client.post("/logout", data={"csrf": csrf_of(client)}).status_code == 303
        assert client.get("/").status_code == 303
        client.cookies.set("dockyard_session", old)
        assert client.get("/").status_code == 303
    with _client(served) as client:
        log_in(client, served.keys["blue"])
        assert client.get("/").status_code == 200
        key_id = served.keys["blue"].split("_")[1]
        served.store.revoke(key_id)
        assert client.get("/").status_code == 303


def test_create_lists_every_problem_beside_its_field(acme: httpx.Client) -> None:
    answer = acme.post(
        "/sessions/new",
        data={
            "csrf": csrf_of(acme, "/sessions/new"),
            "sessionId": "Bad Id",
            "cwd": "relative",
            "backend": "claude",
            "ports": "70000, x",
            "env": "NOEQUALS",
        },
    )
    assert answer.status_code == 422
    text = answer.text
    beside = {
        name: re.search(rf'<ul class="field-problems" id="e-{name}">(.*?)</ul>', text, re.S)
        for name in ("sessionId", "cwd", "ports", "env")
    }
    assert all(beside.values()), text
    assert "request.container.ports[0]: 70000 is not allowed" in beside["ports"].group(1)
    assert "request.container.ports[1]: &#39;x&#39; is not allowed" in beside["ports"].group(1)
    assert "request.cwd: &#39;relative&#39; is not allowed" in beside["cwd"].group(1)
    assert "request.sessionId" in beside["sessionId"].group(1)
    assert "line 1 has no &#39;=&#39;" in beside["env"].group(1)


def test_a_tenant_key_cannot_create_in_another_tenant(served: Served, acme: httpx.Client) -> None:
    answer = acme.post(
        "/sessions/new",
        data={
            "csrf": csrf_of(acme, "/sessions/new"),
            "sessionId": "x1",
            "cwd": "/srv/app",
            "backend": "claude",
            "tenant": "blue",
        },
    )
    assert answer.status_code == 422
    assert "request.tenant: &#39;blue&#39; is not this key&#39;s tenant" in answer.text
    assert [r.session_id for r in served.sessions.registry.all("blue")] == ["b1"]


def _frames(client: httpx.Client, path: str, until: str) -> list[dict[str, object]]:
    """The events of the dashboard's stream at ``path`` up to the one of session ``until``."""
    seen: list[dict[str, object]] = []
    with client.stream("GET", path, timeout=httpx.Timeout(15.0)) as stream:
        assert stream.status_code == 200, stream.read()
        assert stream.headers["content-type"].startswith("text/event-stream")
        for line in stream.iter_lines():
            if line.startswith("data: "):
                seen.append(json.loads(line[6:]))
                if seen[-1]["session"] == until:
                    return seen
    raise AssertionError(f"the stream ended before {until}'s event: {seen}")


def test_the_pages_event_stream_is_scoped_like_the_table(
    served: Served, acme: httpx.Client
) -> None:
    # The cookie reads the stream the page names, from the newest event at its rendering.
    page = acme.get("/")
    start = re.search(r'data-events="/events\?after=(\d+)"', page.text)
    assert start, page.text
    log = served.sessions.where.audit_log
    for tenant, session in (("blue", "b9"), (None, "n9"), ("acme", "a9")):
        with audit.recorded(log, "pause", session=session, tenant=tenant):
            pass
    seen = _frames(acme, f"/events?after={start.group(1)}&tenant=blue", until="a9")
    # acme's own event only: blue's and the untenanted one came first and were not sent,
    # whatever tenant the cookie asked for.
    assert [(e["type"], e["session"], e["tenant"]) for e in seen] == [
        ("session.paused", "a9", "acme")
    ]
    # An admin's login sees every tenant, or the one its filter names, like its table.
    with _client(served) as admin:
        assert log_in(admin, served.keys["admin"]).status_code == 303
        every = _frames(admin, f"/events?after={start.group(1)}", until="a9")
        assert [e["session"] for e in every] == ["b9", "n9", "a9"]
        blue = admin.get("/?tenant=blue").text
        assert f'data-events="/events?tenant=blue&amp;after={int(start.group(1)) + 3}"' in blue
        with audit.recorded(log, "resume", session="b9", tenant="blue"):
            pass
        with audit.recorded(log, "resume", session="a9", tenant="acme"):
            pass
        assert [e["session"] for e in _frames(admin, "/events?tenant=acme&after=0", "a9")] == ["a9"]
    # Without a login: nothing.
    with _client(served) as stranger:
        assert stranger.get("/events").status_code == 401
