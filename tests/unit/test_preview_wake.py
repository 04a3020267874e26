"""Wake on a preview request (roles/preview_proxy, issue 29 item 4): the decision of the
watcher's ``forward_auth`` endpoint, with a fake engine. An authenticated request to a
paused environment unpauses it once and is audited; a request without its token never
touches the engine; requests arriving together share one unpause; a failed wake is not
retried at once; a snapshot's freeze lock is respected. The route on the real engine and
Caddy: tests/roles/test_preview_proxy.py."""

from __future__ import annotations

import fcntl
import http.client
import threading
from pathlib import Path
from typing import Any

import pytest

from tests.support.scripts import load_script

proxy = load_script("preview_proxy", "dockyard-preview-proxy.py")

TOKEN = "t" * 43
OTHER = "o" * 43
ENV = "dockyard-env-web"
LABELS = {"dockyard.session": "web", "dockyard.tenant": "acme", "dockyard.stack": "stack-web"}
BEARER = [f"Bearer {TOKEN}"]


class Engine:
    """Records unpauses; ``gate`` holds each one until set (requests pile up meanwhile)."""

    def __init__(self, fail: str = "") -> None:
        self.unpaused: list[str] = []
        self.fail = fail
        self.gate = threading.Event()
        self.gate.set()
        self.lock = threading.Lock()

    def unpause(self, environment: str) -> None:
        self.gate.wait(10)
        with self.lock:
            self.unpaused.append(environment)
        if self.fail:
            raise proxy.ProxyError(self.fail)

    def is_paused(self, environment: str) -> bool:
        return bool(self.fail)


def waker(engine: Engine, audited: list[dict[str, Any]], **kwargs: Any) -> Any:
    found = proxy.Waker(
        unpause=engine.unpause,
        is_paused=engine.is_paused,
        audit=lambda action, **fields: audited.append({"action": action, **fields}),
        **kwargs,
    )
    found.update({ENV: TOKEN, "dockyard-env-other": OTHER}, {ENV: LABELS})
    return found


def test_an_authenticated_request_wakes_the_paused_environment_once() -> None:
    engine, audited = Engine(), []
    wake = waker(engine, audited)
    assert wake.request(ENV, BEARER, [])[0] == 204
    assert engine.unpaused == [ENV]
    assert audited == [
        {
            "action": "resume",
            "actor": "host:dockyard-preview-proxy",
            "labels": LABELS,
            "result": "ok",
            "duration_ms": audited[0]["duration_ms"],
            "detail": "woken by a preview request",
        }
    ]
    # Running now: the next requests (until the next look) pass without the engine.
    assert wake.request(ENV, [], [f"a=1; {proxy.COOKIE}={TOKEN}"])[0] == 204
    assert engine.unpaused == [ENV]
    assert len(audited) == 1


@pytest.mark.parametrize(
    ("authorization", "cookies"),
    [
        ([], []),
        (["Bearer wrong"], []),
        ([f"Bearer {OTHER}"], []),  # another session's token
        ([f"Bearer {TOKEN}x"], []),
        ([f"bearer {TOKEN}"], []),
        ([f"Basic {TOKEN}"], []),
        ([], [f"{proxy.COOKIE}={OTHER}"]),
        ([], [f"x{proxy.COOKIE}={TOKEN}"]),
        ([], [f"{proxy.COOKIE}={TOKEN}x"]),
        ([], [f"app={TOKEN}"]),
    ],
)
def test_a_request_without_the_token_wakes_nothing(
    authorization: list[str], cookies: list[str]
) -> None:
    engine, audited = Engine(), []
    status, body = waker(engine, audited).request(ENV, authorization, cookies)
    assert (status, engine.unpaused, audited) == (401, [], [])
    assert "token is required" in body


def test_an_unknown_environment_wakes_nothing() -> None:
    engine, audited = Engine(), []
    assert waker(engine, audited).request("dockyard-env-gone", BEARER, [])[0] == 404
    assert engine.unpaused == []


def test_requests_arriving_together_share_one_unpause() -> None:
    engine, audited = Engine(), []
    engine.gate.clear()  # the first unpause waits until every request has arrived
    wake = waker(engine, audited)
    answers: list[int] = []
    threads = [
        threading.Thread(target=lambda: answers.append(wake.request(ENV, BEARER, [])[0]))
        for _ in range(20)
    ]
    for thread in threads:
        thread.start()
    engine.gate.set()
    for thread in threads:
        thread.join(30)
    assert answers == [204] * 20
    assert engine.unpaused == [ENV]
    assert [a["result"] for a in audited] == ["ok"]


def test_a_failed_wake_is_reported_and_not_retried_at_once() -> None:
    engine, audited = Engine(fail="docker unpause failed: boom"), []
    now = [100.0]
    wake = waker(engine, audited, retry_after=5.0, clock=lambda: now[0])
    status, body = wake.request(ENV, BEARER, [])
    assert status == 503
    assert "retry" in body
    assert [(a["result"], a["detail"]) for a in audited] == [
        ("error", "woken by a preview request: docker unpause failed: boom")
    ]
    for _ in range(10):  # a flood within the retry interval: no engine call
        assert wake.request(ENV, BEARER, [])[0] == 503
    assert engine.unpaused == [ENV]
    now[0] += 5.0
    assert wake.request(ENV, BEARER, [])[0] == 503
    assert engine.unpaused == [ENV, ENV]


def test_resumed_by_something_else_meanwhile_is_no_error() -> None:
    engine, audited = Engine(), []
    engine.unpause = lambda environment: (_ for _ in ()).throw(  # type: ignore[method-assign]
        proxy.ProxyError("Container is not paused")
    )
    assert waker(engine, audited).request(ENV, BEARER, [])[0] == 204
    assert audited == []


def test_a_snapshot_holding_the_freeze_lock_is_waited_out(tmp_path: Path) -> None:
    engine, audited = Engine(), []
    locks = tmp_path / "locks"
    locks.mkdir()
    wake = waker(engine, audited, state_dir=str(tmp_path))
    with open(locks / "stack-web.freeze", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        status, body = wake.request(ENV, BEARER, [])
        fcntl.flock(held, fcntl.LOCK_UN)
    assert (status, engine.unpaused) == (503, [])
    assert "snapshot or backup" in body
    assert wake.request(ENV, BEARER, [])[0] == 204
    assert engine.unpaused == [ENV]


def test_the_endpoint_reads_the_forwarded_headers() -> None:
    engine, audited = Engine(), []
    server = proxy.serve_wakes("127.0.0.1:0", waker(engine, audited))
    assert server is not None
    try:
        port = server.server_address[1]

        def get(path: str, headers: dict[str, str]) -> int:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            connection.request("GET", path, headers=headers)
            status = connection.getresponse().status
            connection.close()
            return status

        assert get(f"/wake/{ENV}", {}) == 401
        assert get("/wake/../etc", {"Authorization": BEARER[0]}) == 404
        assert engine.unpaused == []
        assert get(f"/wake/{ENV}?x=1&y=2", {}) == 401
        assert get("/wake/../etc?x=1", {"Authorization": BEARER[0]}) == 404
        assert engine.unpaused == []
        # forward_auth keeps the original request's query string: the path alone counts.
        assert get(f"/wake/{ENV}?x=1&y=2", {"Cookie": f"{proxy.COOKIE}={TOKEN}"}) == 204
        assert engine.unpaused == [ENV]
    finally:
        server.shutdown()
        server.server_close()


def test_only_a_paused_environments_authenticated_handles_ask_to_wake() -> None:
    paused = proxy.Route("8000-web.preview.test", "127.0.0.1:1", ENV, False, True)
    running = proxy.Route("8000-other.preview.test", "127.0.0.1:2", "dockyard-env-other", False)
    tokens = {ENV: TOKEN, "dockyard-env-other": OTHER}
    text = proxy.caddyfile([paused, running], tokens, 80, 443, "127.0.0.1:2019", "127.0.0.1:2020")
    web, other = text.split("https://8000-other.preview.test {")
    assert web.count("forward_auth 127.0.0.1:2020 {") == 2
    assert web.count(f"uri /wake/{ENV}") == 2
    for handle in ("handle @bearer {", "handle @cookie {"):
        block = web.split(handle)[1].split("\n  }")[0]
        assert "forward_auth" in block
    assert "forward_auth" not in other
    # Without --wake-listen nothing asks (and paused environments are not routed at all).
    assert "forward_auth" not in proxy.caddyfile([paused], tokens, 80, 443, "127.0.0.1:2019")


def test_the_waker_knows_a_paused_environment_before_caddy_routes_to_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reconcile that adds wake routes updates the Waker first, then writes the
    Caddyfile and reloads Caddy: a request the new route sends at once finds the
    environment listed as paused (not a 204 without a wake, proxied to a frozen app)."""
    route = proxy.Route("8000-web.preview.test", "127.0.0.1:1", ENV, False, True)
    config = tmp_path / "Caddyfile"
    events: list[str] = []
    monkeypatch.setattr(proxy, "routes", lambda *args: ([route], [], {ENV: LABELS}))
    monkeypatch.setattr(proxy, "caddy_up", lambda admin: True)
    monkeypatch.setattr(proxy, "run", lambda argv, env=None: events.append(argv[1]) or "")

    class Recording(proxy.Waker):  # type: ignore[name-defined,misc]
        def update(self, tokens: Any, paused: Any) -> None:
            events.append(f"update (config written: {config.exists()})")
            super().update(tokens, paused)

    args = proxy.build_parser().parse_args(
        ["--domain", "preview.test", "--config", str(config), "--token-dir",
         str(tmp_path / "tokens"), "--wake-listen", "127.0.0.1:2020"]
    )  # fmt: skip
    result = proxy.reconcile(args, Recording())
    assert result["actions"] == ["caddy reloaded"]
    assert events == ["update (config written: False)", "reload"]
