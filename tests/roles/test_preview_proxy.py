"""The preview proxy (roles/preview_proxy) on the real engine, with Caddy on loopback:
its own high ports, admin endpoint, data directory and configuration, and routes only for
this test's environments (``--scope-label``). Requests go through curl ``--resolve``.

What must hold: 401 without a token, 200 with the environment's own token (bearer or the
login cookie), 401 with another session's; a browser request from another origin (another
session's page: same site, sibling host) is refused, a WebSocket upgrade only with the
route's own Origin; the app (an echo server inside the environment) never sees dockyard's
token or cookie but sees its own cookies; a server started inside the environment gets
a route within 10 s and loses it after it stops; a second run changes nothing; routes
go with the environment; ``--remove`` stops Caddy. The proxy's overhead is a benchmark
(``benchmarks/preview_proxy.py``), not a test."""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.ansible import REPO
from tests.support.engine import RUN_ID, require_docker, wait_for
from tests.support.stacks import Deployed

pytestmark = [
    pytest.mark.docker,
    pytest.mark.slow,
]


@pytest.fixture(scope="module", autouse=True)
def _caddy() -> None:
    # Like a missing engine: a skip on a developer's machine, a failure under CI
    # (DOCKYARD_REQUIRE_DOCKER=1), where .ci/run installs caddy.
    if shutil.which("caddy") is None:
        message = "caddy is not installed (apt-get install caddy; the preview_proxy role does)"
        if require_docker():
            pytest.fail(message)
        pytest.skip(message)


PROXY = REPO / "roles" / "preview_proxy" / "files" / "dockyard-preview-proxy.py"
DOMAIN = "preview.test"
SCOPE_KEY = "it.preview"
INNER_PORT = 8000
ECHO_PORT = 8001
LATE_PORT = 8100
COOKIE = "__Host-dockyard_preview"
# The app: answers every request (and a WebSocket upgrade, with one text frame) with the
# request line and headers it received, and appends them to a log inside the container.
ECHO_APP = r"""
import base64, hashlib, json, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        seen = json.dumps({"method": self.command, "path": self.path,
                           "headers": [[k, v] for k, v in self.headers.items()]})
        with open("/tmp/echo.log", "a") as log:
            log.write(seen + "\n")
        body = seen.encode()
        if self.headers.get("Upgrade", "").lower() == "websocket":
            key = self.headers["Sec-WebSocket-Key"] + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
            self.send_response(101)
            self.send_header("Upgrade", "websocket")
            self.send_header("Connection", "Upgrade")
            accept = base64.b64encode(hashlib.sha1(key.encode()).digest()).decode()
            self.send_header("Sec-WebSocket-Accept", accept)
            self.end_headers()
            self.wfile.write(bytes([0x81, 126]) + len(body).to_bytes(2, "big") + body)
            self.wfile.write(bytes([0x88, 0]))
            self.close_connection = True
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_GET

    def log_message(self, *args):
        pass

ThreadingHTTPServer(("0.0.0.0", int(sys.argv[1])), Echo).serve_forever()
"""


# Exits 0 when something in the environment listens on port argv[1].
LISTENING = "import socket, sys; socket.create_connection(('127.0.0.1', int(sys.argv[1])), 2)"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Proxy:
    argv: list[str]
    env: dict[str, str]
    https_port: int
    token_dir: Path

    def apply(self, *extra: str) -> dict[str, Any]:
        result = subprocess.run(
            [*self.argv, "--json", *extra], capture_output=True, text=True, env=self.env,
            timeout=60, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def token(self, stack: Deployed, session: str) -> str:
        name = stack.container(session).name
        return (self.token_dir / f"{name}.token").read_text().strip()

    def origin(self, host: str) -> str:
        return f"https://{host}:{self.https_port}"

    def _curl(
        self, host: str, path: str, headers: Sequence[str], *extra: str, max_time: int = 5
    ) -> list[str]:
        return [
            "curl", "-sk", "--max-time", str(max_time),
            "--resolve", f"{host}:{self.https_port}:127.0.0.1",
            *(part for h in headers for part in ("-H", h)), *extra,
            f"{self.origin(host)}{path}",
        ]  # fmt: skip

    def get(
        self, host: str, *headers: str, path: str = "/", method: str = "GET", max_time: int = 5
    ) -> int:
        """The status of one request (0: no answer within ``max_time`` seconds)."""
        argv = self._curl(
            host, path, headers, "-o", "/dev/null", "-w", "%{http_code}", "-X", method,
            max_time=max_time,
        )  # fmt: skip
        return int(subprocess.run(argv, capture_output=True, text=True, check=False).stdout or 0)

    def seen(self, host: str, *headers: str, path: str = "/") -> dict[str, Any]:
        """What the echo app received for a request that must succeed (curl --fail)."""
        argv = self._curl(host, path, headers, "--fail")
        result = subprocess.run(argv, capture_output=True, text=True, check=False)
        assert result.returncode == 0, f"{argv[-1]} {headers}: curl {result.returncode}"
        return dict(json.loads(result.stdout))

    def login(self, host: str, query: str) -> tuple[int, dict[str, str]]:
        """Status and (lower-cased) headers of a visit to ``/?<query>``."""
        argv = self._curl(host, f"/?{query}", (), "-o", "/dev/null", "-D", "-")
        lines = subprocess.run(argv, capture_output=True, text=True, check=False).stdout
        status, *fields = lines.strip().splitlines() or ["HTTP/2 0"]
        headers = dict(f.split(":", 1) for f in fields if ":" in f)
        return int(status.split()[1]), {k.lower(): v.strip() for k, v in headers.items()}

    def upgrade(self, host: str, *headers: str) -> tuple[int, bytes]:
        """A WebSocket upgrade over TLS (HTTP/1.1): the status and what followed it."""
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # Caddy's internal CA
        key = base64.b64encode(os.urandom(16)).decode()
        request = "\r\n".join(
            [
                "GET / HTTP/1.1", f"Host: {host}:{self.https_port}", "Upgrade: websocket",
                "Connection: Upgrade", f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13",
                *headers, "", "",
            ]
        )  # fmt: skip
        with (
            socket.create_connection(("127.0.0.1", self.https_port), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname=host) as tls,
        ):
            tls.sendall(request.encode())
            data = b""
            while b"\r\n\r\n" not in data and (chunk := tls.recv(65536)):
                data += chunk
            head, _, rest = data.partition(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            if status == 101:  # the app sends one frame and closes
                while chunk := tls.recv(65536):
                    rest += chunk
            return status, rest


@pytest.fixture(scope="module")
def stack(deploy: Any) -> Deployed:
    labels = {SCOPE_KEY: RUN_ID}
    deployed = deploy(
        "preview",
        {
            "limits": {"cpus": 1, "memory": "512m"},
            "environments": [
                {"sessionId": "web", "labels": labels, "ports": [INNER_PORT, ECHO_PORT]},
                {"sessionId": "other", "labels": labels, "ports": [INNER_PORT]},
            ],
        },
    )
    deployed.wait_ready()
    for session in ("web", "other"):
        deployed.container(session).exec_run(
            ["python3", "-m", "http.server", str(INNER_PORT)], user="1000:1000", detach=True
        )
    deployed.container("web").exec_run(
        ["python3", "-c", ECHO_APP, str(ECHO_PORT)], user="1000:1000", detach=True
    )
    # Listening before any test asks for a 200 through the proxy: a loaded machine can
    # take seconds to start each Python server.
    for session, port in (("web", INNER_PORT), ("web", ECHO_PORT), ("other", INNER_PORT)):
        container = deployed.container(session)
        wait_for(
            lambda c=container, p=port: (
                c.exec_run(["python3", "-c", LISTENING, str(p)]).exit_code == 0
            ),
            60,
            interval=0.25,
            what=f"the server on {session}:{port}",
        )
    return deployed


@pytest.fixture(scope="module")
def proxy(stack: Deployed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    base = tmp_path_factory.mktemp("preview")
    admin = f"127.0.0.1:{free_port()}"
    https_port = free_port()
    argv = [
        sys.executable, str(PROXY), "--domain", DOMAIN, "--config", str(base / "Caddyfile"),
        "--token-dir", str(base / "tokens"), "--http-port", str(free_port()),
        "--https-port", str(https_port), "--admin", admin,
        "--scope-label", f"{SCOPE_KEY}={RUN_ID}",
    ]  # fmt: skip
    env = {
        **os.environ,
        "XDG_DATA_HOME": str(base / "data"),
        "XDG_CONFIG_HOME": str(base / "config"),
        "HOME": str(base),
    }
    found = Proxy(argv, env, https_port, base / "tokens")
    try:
        yield found
    finally:
        subprocess.run([*argv, "--remove"], env=env, capture_output=True, check=False)


@pytest.fixture(scope="module")
def applied(stack: Deployed, proxy: Proxy) -> dict[str, Any]:
    first = proxy.apply()
    # Caddy issues its internal certificates in the background.
    host = f"{INNER_PORT}-web.{DOMAIN}"
    wait_for(lambda: proxy.get(host) == 401, 90, interval=0.5, what="caddy serving")
    return first


@pytest.fixture(scope="module")
def echo(applied: dict[str, Any], proxy: Proxy, stack: Deployed) -> str:
    """The echo app's preview host, answering through the proxy."""
    host = f"{ECHO_PORT}-web.{DOMAIN}"
    bearer = f"Authorization: Bearer {proxy.token(stack, 'web')}"
    wait_for(lambda: proxy.get(host, bearer) == 200, 90, interval=0.5, what="the echo app")
    return host


def app_log(stack: Deployed) -> str:
    result = stack.container("web").exec_run(["cat", "/tmp/echo.log"])
    assert result.exit_code == 0, result.output
    return str(result.output.decode())


def headers_of(seen: dict[str, Any]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for name, value in seen["headers"]:
        found.setdefault(name.lower(), []).append(value)
    return found


def test_routes_for_each_published_port(applied: dict[str, Any]) -> None:
    hosts = [r["host"] for r in applied["routes"]]
    assert f"{INNER_PORT}-web.{DOMAIN}" in hosts
    assert f"{INNER_PORT}-other.{DOMAIN}" in hosts
    published = [r for r in applied["routes"] if not r["discovered"]]
    assert all(r["upstream"].startswith("127.0.0.1:") for r in published), applied["routes"]


def test_second_run_changes_nothing(applied: dict[str, Any], proxy: Proxy) -> None:
    assert proxy.apply()["changed"] is False


def test_tokens_are_private(applied: dict[str, Any], proxy: Proxy) -> None:
    assert proxy.token_dir.stat().st_mode & 0o777 == 0o700
    for token in proxy.token_dir.iterdir():
        assert token.stat().st_mode & 0o777 == 0o600


def test_token_is_required_and_only_the_sessions_own_opens(
    applied: dict[str, Any], proxy: Proxy, stack: Deployed
) -> None:
    host = f"{INNER_PORT}-web.{DOMAIN}"
    own, other = proxy.token(stack, "web"), proxy.token(stack, "other")
    assert own != other
    assert proxy.get(host) == 401
    assert proxy.get(host, "Authorization: Bearer wrong") == 401
    assert proxy.get(host, f"Authorization: Bearer {other}") == 401
    assert proxy.get(host, f"Cookie: {COOKIE}={other}") == 401
    assert proxy.get(host, f"Cookie: x{COOKIE}={own}") == 401  # another cookie's name
    assert proxy.get(host, f"Cookie: {COOKIE}={own}x") == 401
    assert proxy.get(host, f"Authorization: Bearer {own}") == 200
    assert proxy.get(host, f"Cookie: {COOKIE}={own}") == 200
    assert proxy.get(host, f"Cookie: a=1; {COOKIE}={own}; b=2") == 200
    assert proxy.get(f"{INNER_PORT}-other.{DOMAIN}", f"Authorization: Bearer {other}") == 200


def browser(site: str, mode: str, dest: str = "empty") -> tuple[str, ...]:
    """The Sec-Fetch-* headers a current browser adds to a request."""
    return (f"Sec-Fetch-Site: {site}", f"Sec-Fetch-Mode: {mode}", f"Sec-Fetch-Dest: {dest}")


def test_another_sessions_page_cannot_reach_this_sessions_routes(
    echo: str, proxy: Proxy, stack: Deployed
) -> None:
    """A page on session ``other``'s preview host (same site, another origin) makes the
    browser send ``web``'s cookie to ``web``'s route: refused before the app, whatever
    the request's kind; the same requests from ``web``'s own pages are served, and so
    is a link from anywhere (a top-level GET navigation) and a client without Sec-Fetch."""
    cookie = f"Cookie: {COOKIE}={proxy.token(stack, 'web')}"
    own = f"Origin: {proxy.origin(echo)}"
    foreign = f"Origin: {proxy.origin(f'{INNER_PORT}-other.{DOMAIN}')}"
    refused = {
        "fetch-no-cors": (browser("same-site", "no-cors"), "GET"),
        "fetch-cors": ((*browser("same-site", "cors"), foreign), "GET"),
        "post-no-cors": ((*browser("same-site", "no-cors"), foreign), "POST"),
        "subresource": (browser("same-site", "no-cors", "image"), "GET"),
        "form-post": ((*browser("same-site", "navigate", "document"), foreign), "POST"),
        # The same without Origin (no browser omits it on a POST): refused for its method.
        "form-post-no-origin": (browser("same-site", "navigate", "document"), "POST"),
        "frame": (browser("same-site", "navigate", "iframe"), "GET"),
        "cross-site-fetch": (browser("cross-site", "no-cors"), "GET"),
        "no-sec-fetch-post": ((foreign,), "POST"),
        "no-sec-fetch-null-origin": (("Origin: null",), "POST"),
    }
    answers = {
        case: proxy.get(echo, cookie, *headers, path=f"/refused-{case}", method=method)
        for case, (headers, method) in refused.items()
    }
    assert answers == dict.fromkeys(refused, 403)
    served = {
        "same-origin-fetch": ((*browser("same-origin", "cors"), own), "GET"),
        "same-origin-post": ((*browser("same-origin", "no-cors"), own), "POST"),
        "same-origin-post-no-referrer": (
            (*browser("same-origin", "navigate"), "Origin: null"),
            "POST",
        ),
        "link-from-a-sibling": (browser("same-site", "navigate", "document"), "GET"),
        "link-from-anywhere": (browser("cross-site", "navigate", "document"), "GET"),
        "typed-url": (browser("none", "navigate", "document"), "GET"),
        "no-sec-fetch-own-origin": ((own,), "POST"),
        "no-sec-fetch": ((), "GET"),
    }
    answers = {
        case: proxy.get(echo, cookie, *headers, path=f"/served-{case}", method=method)
        for case, (headers, method) in served.items()
    }
    assert answers == dict.fromkeys(served, 200)
    log = app_log(stack)
    assert "/refused-" not in log
    assert all(f"/served-{case}" in log for case in served)


def test_a_websocket_upgrade_needs_the_routes_own_origin(
    echo: str, proxy: Proxy, stack: Deployed
) -> None:
    token = proxy.token(stack, "web")
    cookie, bearer = f"Cookie: {COOKIE}={token}", f"Authorization: Bearer {token}"
    own = f"Origin: {proxy.origin(echo)}"
    foreign = f"Origin: {proxy.origin(f'{INNER_PORT}-other.{DOMAIN}')}"
    assert proxy.upgrade(echo, cookie, foreign, *browser("same-site", "websocket"))[0] == 403
    assert proxy.upgrade(echo, cookie, foreign)[0] == 403  # a browser without Sec-Fetch
    assert proxy.upgrade(echo, bearer, foreign, *browser("same-origin", "websocket"))[0] == 403
    assert proxy.upgrade(echo, cookie, "Origin: null")[0] == 403
    status, frames = proxy.upgrade(echo, cookie, own, *browser("same-origin", "websocket"))
    assert status == 101
    assert frames[:1] == b"\x81", frames  # the app's text frame came through
    assert proxy.upgrade(echo, bearer)[0] == 101  # a client that sends no Origin
    assert proxy.upgrade(echo, own)[0] == 401  # the origin is no token


def test_the_app_never_sees_dockyards_token_or_cookie_but_sees_its_own(
    echo: str, proxy: Proxy, stack: Deployed
) -> None:
    token, other = proxy.token(stack, "web"), proxy.token(stack, "other")
    bearer = f"Authorization: Bearer {token}"
    ours = f"{COOKIE}={token}"
    for cookies, expected in [
        (f"app=1; {ours}; theme=dark", "app=1; theme=dark"),
        (f"{ours}; app=1", "app=1"),
        (f"app=1;{ours}", "app=1"),
        (f"app=1; {ours}; {ours}", "app=1"),
    ]:
        seen = headers_of(proxy.seen(echo, f"Cookie: {cookies}"))
        assert seen["cookie"] == [expected], cookies
        seen = headers_of(proxy.seen(echo, bearer, f"Cookie: {cookies}"))
        assert seen["cookie"] == [expected], cookies
        assert "authorization" not in seen
    # The app's own Authorization passes when the cookie authenticates.
    seen = headers_of(proxy.seen(echo, f"Cookie: {ours}", "Authorization: Basic YXBwOmFwcA=="))
    assert seen["authorization"] == ["Basic YXBwOmFwcA=="]
    # WebSocket upgrades are stripped the same way.
    status, frames = proxy.upgrade(echo, bearer, f"Cookie: app=1; {ours}")
    assert status == 101
    assert b'"app=1"' in frames
    assert token.encode() not in frames
    # The query parameter: the right token logs in (host-only __Host- cookie, redirect
    # without it); any other spelling or value is refused; neither reaches the app.
    status, headers = proxy.login(echo, f"dockyard_token={token}&page=2")
    assert status == 302, headers
    assert headers["location"] == "/"
    attributes = [a.strip() for a in headers["set-cookie"].split(";")]
    assert attributes[0] == ours
    assert sorted(attributes[1:]) == ["HttpOnly", "Path=/", "SameSite=Lax", "Secure"]
    for query in [
        f"dockyard_token={other}", "dockyard_token=wrong", f"Dockyard%5Ftoken={token}",
        f"a=1;dockyard_token={token}", f"x=1&DOCKYARD_TOKEN={token}",
    ]:  # fmt: skip
        assert proxy.get(echo, bearer, path=f"/?{query}") == 401, query
    log = app_log(stack)
    assert "app=1; theme=dark" in log  # the log holds what the app received above
    for secret in (token, other):
        assert secret not in log
    assert COOKIE not in log
    assert "dockyard_token" not in log.lower()
    assert "dockyard%5ftoken" not in log.lower()


def test_a_server_started_inside_gets_a_route_and_loses_it(
    applied: dict[str, Any], proxy: Proxy, stack: Deployed
) -> None:
    """The watcher routes a server the agent starts later, and drops the route when it
    stops. The 10 s budget is a figure of benchmarks/preview_proxy.py (printed here too):
    on a loaded CI machine the Python server and each watch round can take longer."""
    host = f"{LATE_PORT}-web.{DOMAIN}"
    bearer = f"Authorization: Bearer {proxy.token(stack, 'web')}"
    watcher = subprocess.Popen(
        [*proxy.argv, "--watch", "2"], env=proxy.env, stdout=subprocess.DEVNULL
    )
    container = stack.container("web")
    try:
        assert proxy.get(host, bearer) != 200
        started = time.monotonic()
        container.exec_run(
            ["python3", "-m", "http.server", str(LATE_PORT)], user="1000:1000", detach=True
        )
        wait_for(lambda: proxy.get(host, bearer) == 200, 90, interval=0.25, what="a route")
        time_to_route = time.monotonic() - started
        print(f"time to route: {time_to_route:.1f} s (watch interval 2 s, noisy 2-core host)")
        assert proxy.get(host) == 401
        container.exec_run(["pkill", "-f", f"http.server {LATE_PORT}"], user="1000:1000")
        wait_for(lambda: proxy.get(host, bearer) != 200, 90, interval=0.25, what="route gone")
    finally:
        watcher.terminate()
        watcher.wait(timeout=10)


def test_an_authenticated_request_wakes_a_paused_session(
    applied: dict[str, Any], proxy: Proxy, stack: Deployed, tmp_path: Path
) -> None:
    """Issue 29 item 4: with --wake-listen a paused session keeps its route; a request
    without its token is refused and leaves it paused, one with it unpauses it (audited)
    and is answered by the app."""
    host = f"{INNER_PORT}-other.{DOMAIN}"
    bearer = f"Authorization: Bearer {proxy.token(stack, 'other')}"
    audit_log = tmp_path / "audit.jsonl"
    container = stack.container("other")
    # The endpoint's socket: a short path (at most 107 bytes), removed with the directory.
    sockets = Path(tempfile.mkdtemp(prefix="dkwake", dir="/tmp"))
    state = tmp_path / "state"  # the sessions' state directory (no lock, no E2B record)
    state.mkdir()
    wake = ["--wake-listen", f"unix:{sockets}/wake/wake.sock", "--state-dir", str(state)]
    watcher = subprocess.Popen(
        [*proxy.argv, "--watch", "1", *wake],
        env={**proxy.env, "DOCKYARD_AUDIT_LOG": str(audit_log)},
        stdout=subprocess.PIPE,
        text=True,
    )
    # The watcher prints a JSON line after each reconcile that changed something, i.e.
    # once its Waker lists the paused session and Caddy has reloaded the wake route:
    # that line, not the Caddyfile on disk, is what the requests below may rely on.
    printed: list[str] = []

    def read() -> None:
        for line in watcher.stdout or ():
            printed.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()

    def wake_route_applied() -> bool:
        for line in list(printed):
            routes = json.loads(line)["routes"] if line.startswith("{") else []
            if any(r["host"] == host and r.get("paused") for r in routes):
                return True
        return False

    try:
        container.pause()
        wait_for(wake_route_applied, 90, interval=0.25, what=lambda: f"the wake route: {printed}")
        assert proxy.get(host) == 401
        assert proxy.get(host, f"Authorization: Bearer {proxy.token(stack, 'web')}") == 401
        container.reload()
        assert container.status == "paused"
        assert not audit_log.exists()
        # With a query string (forward_auth passes it on to the wake endpoint). The wake
        # (a docker CLI call) can take seconds on a loaded machine: a wide bound.
        assert proxy.get(host, bearer, path="/?x=1&y=2", max_time=60) == 200
        container.reload()
        assert container.status == "running"
        lines = [json.loads(line) for line in audit_log.read_text().splitlines()]
        assert [(e["action"], e["session"], e["result"]) for e in lines] == [
            ("resume", "other", "ok")
        ]
        assert lines[0]["actor"] == "host:dockyard-preview-proxy"
    finally:
        watcher.terminate()
        watcher.wait(timeout=10)
        reader.join(10)
        shutil.rmtree(sockets, ignore_errors=True)
        container.reload()
        if container.status == "paused":
            container.unpause()
    proxy.apply()  # the module's configuration again (no wake routes)


def test_routes_go_with_the_environment(
    applied: dict[str, Any], proxy: Proxy, deploy_own: Any
) -> None:
    gone = deploy_own(
        "previewgone",
        {
            "limits": {"cpus": 1, "memory": "512m"},
            "environments": [
                {"sessionId": "gone", "labels": {SCOPE_KEY: RUN_ID}, "ports": [INNER_PORT]}
            ],
        },
    )
    host = f"{INNER_PORT}-gone.{DOMAIN}"
    assert host in [r["host"] for r in proxy.apply()["routes"]]
    gone.destroy()
    after = proxy.apply()
    assert after["changed"] is True
    assert host not in [r["host"] for r in after["routes"]]
    assert proxy.get(host) == 0  # no route: no certificate, no answer


def test_remove_stops_caddy(applied: dict[str, Any], proxy: Proxy) -> None:
    removed = proxy.apply("--remove")
    assert "caddy stopped" in removed["actions"]
    assert proxy.get(f"{INNER_PORT}-web.{DOMAIN}") == 0
    # Back for any later test of the module (order-independent).
    proxy.apply()
