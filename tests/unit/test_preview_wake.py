"""Wake on a preview request (roles/preview_proxy, issue 29 item 4): the decision of the
watcher's ``forward_auth`` endpoint, with a fake engine. An authenticated request to a
paused environment unpauses it once and is audited; a request without its token never
touches the engine; requests arriving together share one unpause; a failed wake is not
retried at once; a snapshot's freeze lock is respected. The route on the real engine and
Caddy: tests/roles/test_preview_proxy.py."""

from __future__ import annotations

import socket
import stat
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from dockyard.sessions import e2b_records
from dockyard.sessions import pause as pausing
from tests.support.scripts import load_script

proxy = load_script("preview_proxy", "dockyard-preview-proxy.py")

TOKEN = "t" * 43
OTHER = "o" * 43
ENV = "dockyard-env-web"
# The stack label is the tenant (or "sessions"); the sessions layer names the session
# "<stack>.<sessionId>" (its freeze lock and E2B record).
LABELS = {"dockyard.session": "web", "dockyard.tenant": "acme", "dockyard.stack": "acme"}
KEY = "acme.web"
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


def requests_in_threads(wake: Any, count: int) -> tuple[list[threading.Thread], list[int]]:
    """``count`` threads, started, each sending one authenticated request to ``wake``;
    and the list their answers' statuses land in."""
    answers: list[int] = []
    threads = [
        threading.Thread(target=lambda: answers.append(wake.request(ENV, BEARER, [])[0]))
        for _ in range(count)
    ]
    for thread in threads:
        thread.start()
    return threads, answers


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
    threads, answers = requests_in_threads(wake, 20)
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
    """The lock the sessions layer's snapshot and backup hold (its own code, its own file
    name for the session): no wake meanwhile."""
    engine, audited = Engine(), []
    wake = waker(engine, audited, state_dir=str(tmp_path))
    record = SimpleNamespace(stack_name=KEY, session_id="web")
    with pausing.frozen_state(SimpleNamespace(state=tmp_path), record):  # type: ignore[arg-type]
        status, body = wake.request(ENV, BEARER, [])
    assert (status, engine.unpaused) == (503, [])
    assert "snapshot or backup" in body
    assert wake.request(ENV, BEARER, [])[0] == 204
    assert engine.unpaused == [ENV]


@pytest.mark.parametrize("auto_resume", [False, True])
def test_an_e2b_sandbox_is_never_woken_by_a_preview(tmp_path: Path, auto_resume: bool) -> None:
    """E2B decides when a paused sandbox wakes (connect; a routed call with autoResume,
    which also restarts its deadline): a preview request answers 409 and leaves it."""
    engine, audited = Engine(), []
    sandbox = e2b_records.Sandbox(
        sandboxId="web", tenant="acme", templateID="base", startedAt="2026-12-07T08:00:00Z",
        endAt=None, timeout=300, autoPause=True, autoResume=auto_resume,
    )  # fmt: skip
    sessions = SimpleNamespace(where=SimpleNamespace(state=tmp_path))
    e2b_records.save(sessions, KEY, sandbox)  # type: ignore[arg-type]
    status, body = waker(engine, audited, state_dir=str(tmp_path)).request(ENV, BEARER, [])
    assert (status, engine.unpaused, audited) == (409, [], [])
    assert "E2B" in body
    # Any other session of the same state directory is woken.
    (tmp_path / "e2b" / f"{KEY}.json").unlink()
    assert waker(engine, audited, state_dir=str(tmp_path)).request(ENV, BEARER, [])[0] == 204


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a short path (a unix socket's path has at most 107 bytes)."""
    with tempfile.TemporaryDirectory(prefix="dkwake", dir="/tmp") as name:
        yield Path(name)


def unix_get(socket_path: Path, path: str, headers: dict[str, str]) -> int:
    """The status of one HTTP/1.0 GET over the unix socket (what Caddy's dial does)."""
    with socket.socket(socket.AF_UNIX) as client:
        client.settimeout(10)
        client.connect(str(socket_path))
        head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        client.sendall(f"GET {path} HTTP/1.0\r\nHost: wake\r\n{head}\r\n".encode())
        answer = b""
        while chunk := client.recv(65536):
            answer += chunk
    return int(answer.split(b" ", 2)[1])


def test_the_endpoint_reads_the_forwarded_headers(short_dir: Path) -> None:
    engine, audited = Engine(), []
    path = short_dir / "wake" / "wake.sock"
    server = proxy.serve_wakes(f"unix:{path}", waker(engine, audited))
    assert server is not None
    assert server.dial == f"unix/{path}"
    # Only its user may enter the directory, or use the socket.
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    try:

        def get(target: str, headers: dict[str, str]) -> int:
            return unix_get(path, target, headers)

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
    assert not path.exists()  # its own socket goes with it


def test_only_a_paused_environments_authenticated_handles_ask_to_wake() -> None:
    paused = proxy.Route("8000-web.preview.test", "127.0.0.1:1", ENV, False, True)
    running = proxy.Route("8000-other.preview.test", "127.0.0.1:2", "dockyard-env-other", False)
    tokens = {ENV: TOKEN, "dockyard-env-other": OTHER}
    dial = "unix//run/dockyard-preview/wake.sock"
    text = proxy.caddyfile([paused, running], tokens, 80, 443, "127.0.0.1:2019", dial)
    web, other = text.split("https://8000-other.preview.test {")
    assert web.count(f"forward_auth {dial} {{") == 2
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
         str(tmp_path / "tokens")]
    )  # fmt: skip
    result = proxy.reconcile(args, Recording(), "unix//run/dockyard-preview/wake.sock")
    assert result["actions"] == ["caddy reloaded"]
    assert events == ["update (config written: False)", "reload"]


def watch_once(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, listen: str, state_dir: Path | None = None
) -> tuple[int, str, list[bool]]:
    """One watcher run (``--watch 1 --for 0.5``: one look) on a fake engine with one paused
    environment: its exit code, the Caddyfile it wrote, and whether it asked the engine
    for the paused environments."""
    route = proxy.Route("8000-web.preview.test", "127.0.0.1:1", ENV, False, True)
    asked: list[bool] = []

    def routes(domain: str, discover: bool, scope: str | None, paused: bool = False) -> Any:
        asked.append(paused)
        return ([route], [], {ENV: LABELS}) if paused else ([], [], {})

    monkeypatch.setattr(proxy, "routes", routes)
    monkeypatch.setattr(proxy, "caddy_up", lambda admin: True)
    monkeypatch.setattr(proxy, "run", lambda argv, env=None: "")
    config = tmp_path / "Caddyfile"
    code = proxy.main(
        ["--domain", "preview.test", "--config", str(config), "--token-dir",
         str(tmp_path / "tokens"), "--watch", "1", "--for", "0.5", "--wake-listen", listen,
         "--state-dir", str(state_dir or tmp_path)]
    )  # fmt: skip
    return code, config.read_text() if config.exists() else "", asked


def test_wake_routes_name_only_the_socket_the_watcher_holds(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, short_dir: Path
) -> None:
    path = short_dir / "wake" / "wake.sock"
    code, text, asked = watch_once(monkeypatch, tmp_path, f"unix:{path}")
    assert (code, asked) == (0, [True])
    assert text.count(f"forward_auth unix/{path} {{") == 2
    assert not path.exists()  # removed when the run ended


@pytest.mark.parametrize("taken_by", ["a file", "an open directory", "no state directory"])
def test_no_wake_routes_when_the_endpoint_cannot_be_ours(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    short_dir: Path,
    capsys: pytest.CaptureFixture[str],
    taken_by: str,
) -> None:
    """A socket path the watcher cannot hold (something else there, or a directory
    another user could enter and listen in): no forward_auth route at all, so no token
    is ever sent to a listener that is not this watcher's; paused environments get no
    route this run (as without wake on use)."""
    folder = short_dir / "wake"
    folder.mkdir(mode=0o700)
    path = folder / "wake.sock"
    state_dir = tmp_path
    if taken_by == "a file":
        path.write_text("not a socket")
    elif taken_by == "an open directory":
        folder.chmod(0o755)
    else:  # the server's state directory is not there (not made yet, or another host)
        state_dir = tmp_path / "missing"
    code, text, asked = watch_once(monkeypatch, tmp_path, f"unix:{path}", state_dir)
    assert (code, asked) == (0, [False])
    assert "8000-web.preview.test" not in text
    assert "forward_auth" not in text
    assert "no wakes this run" in capsys.readouterr().err
    if taken_by == "a file":
        assert path.read_text() == "not a socket"  # left alone


@pytest.mark.parametrize(
    "listen", ["127.0.0.1:2020", "localhost:2020", "unix:relative.sock", "unix:/run/../x.sock"]
)
def test_a_wake_listen_that_is_not_a_unix_socket_path_is_refused(
    listen: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert proxy.main(["--domain", "preview.test", "--wake-listen", listen]) == 1
    error = capsys.readouterr().err
    assert f"--wake-listen {listen!r} is not allowed (allowed: unix:/" in error


def test_wake_listen_needs_the_state_dir(capsys: pytest.CaptureFixture[str]) -> None:
    """Without the sessions' state directory a wake could neither honour a snapshot's
    freeze lock nor tell an E2B sandbox: refused."""
    argv = ["--domain", "preview.test", "--wake-listen", "unix:/run/dockyard-preview/w.sock"]
    assert proxy.main(argv) == 1
    assert "--wake-listen needs --state-dir" in capsys.readouterr().err


def test_a_flood_during_a_wake_does_not_pile_up_waiting_requests() -> None:
    """Beyond ``max_waiters`` requests of one environment waiting for its wake, 503 at
    once (a token holder cannot pin a thread per request for the wake's duration)."""
    engine, audited = Engine(), []
    engine.gate.clear()  # the wake hangs until released
    wake = waker(engine, audited, max_waiters=2, wait=60)  # a 503 is the cap's, not a timeout
    threads, answers = requests_in_threads(wake, 2)
    wait_until(lambda: wake.waiting(ENV) == 2)
    status, body = wake.request(ENV, BEARER, [])
    assert (status, "retry" in body) == (503, True)
    engine.gate.set()
    for thread in threads:
        thread.join(30)
    assert answers == [204, 204]
    assert engine.unpaused == [ENV]
    assert wake.waiting(ENV) == 0
    assert wake.request(ENV, BEARER, [])[0] == 204  # woken: no wait, no count


def test_requests_waiting_for_all_environments_are_bounded_too() -> None:
    """A token holder of many sessions cannot pin ``max_waiters`` threads for each."""
    engine, audited = Engine(), []
    engine.gate.clear()
    wake = waker(engine, audited, max_waiting=1)
    other = "dockyard-env-other"
    wake.update({ENV: TOKEN, other: OTHER}, {ENV: LABELS, other: {**LABELS, LABEL: "other"}})
    first = threading.Thread(target=lambda: wake.request(ENV, BEARER, []))
    try:
        first.start()
        wait_until(lambda: wake.waiting(ENV) == 1)
        assert wake.request(other, [f"Bearer {OTHER}"], [])[0] == 503
    finally:
        engine.gate.set()
        first.join(30)
    assert wake.request(other, [f"Bearer {OTHER}"], [])[0] == 204
    assert engine.unpaused == [ENV, other]


LABEL = "dockyard.session"


def wait_until(predicate: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)
