"""The public ``e2b`` Python SDK (pinned in pyproject's test extra), unchanged, against a
real ``dockyard serve`` on loopback and the real engine (sessions realised by the harness
driver where Pulumi would run): create, list, get_info, set_timeout, the timeout's
expiry, kill; one tenant's key reaches nothing of another's through the control plane or
the routing; ``get_host(port)`` and the ``E2B_SANDBOX_URL`` header form reach a server
started inside the sandbox (with dockyard's own exec), dockyard's credentials stripped."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest
from e2b import Sandbox, SandboxQuery
from e2b.exceptions import SandboxException, SandboxNotFoundException
from websockets.sync.client import connect as ws_connect

from dockyard.api.store import default_url
from tests.support.engine import RUN_ID, wait_for
from tests.support.harness_home import make_home, sweep_tenant
from tests.support.server import create_key, serve

pytestmark = [pytest.mark.docker, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
NODE_SDK = REPO / ".venv" / "node-tools" / "node_modules" / "e2b"
# The npm SDK (Makefile setup-dev pins it) as an application would use it.
NODE_PROBE = """
import { Sandbox } from 'e2b'
const opts = { apiKey: process.env.KEY, apiUrl: process.env.URL, sandboxUrl: process.env.URL }
const other = { ...opts, apiKey: process.env.OTHER }
const sbx = await Sandbox.create('base', { ...opts, metadata: { lang: 'node' } })
const out = []
const ran = await sbx.commands.run('echo hi', { onStdout: (d) => out.push(d) })
const info = await Sandbox.getInfo(sbx.sandboxId, opts)
await sbx.setTimeout(600_000)
let hidden = 'visible'
try { await Sandbox.getInfo(sbx.sandboxId, other) } catch (e) { hidden = e.name }
const killedByOther = await Sandbox.kill(sbx.sandboxId, other)
const killed = await sbx.kill()
console.log(JSON.stringify({ stdout: ran.stdout, out, exit: ran.exitCode, state: info.state,
  metadata: info.metadata, hidden, killedByOther, killed }))
"""
PORT = 8081
# A tiny server for inside the sandbox: GET /headers answers the headers it received,
# POST /echo answers the body it received, GET /stream answers 3 chunks; a WebSocket
# upgrade is accepted (subprotocol "chat" when offered) and sends the handshake's headers
# as one text message, then closes (1000).
SERVER = """
import json, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def _send(self, body, ctype="application/json"):
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_GET(self):
        if self.headers.get("Upgrade", "").lower() == "websocket":
            import base64, hashlib
            key = self.headers["Sec-WebSocket-Key"] + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
            self.send_response(101)
            self.send_header("Upgrade", "websocket")
            self.send_header("Connection", "Upgrade")
            accept = base64.b64encode(hashlib.sha1(key.encode()).digest()).decode()
            self.send_header("Sec-WebSocket-Accept", accept)
            if "chat" in self.headers.get("Sec-WebSocket-Protocol", ""):
                self.send_header("Sec-WebSocket-Protocol", "chat")
            self.end_headers()
            data = json.dumps({k.lower(): v for k, v in self.headers.items()}).encode()
            n = len(data)
            size = bytes([n]) if n < 126 else bytes([126]) + n.to_bytes(2, "big")
            self.wfile.write(bytes([0x81]) + size + data + bytes([0x88, 2, 3, 232]))
            self.wfile.flush()
            self.close_connection = True
            return
        if self.path == "/stream":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(3):
                data = f"part{i}\\n".encode()
                self.wfile.write(b"%x\\r\\n%s\\r\\n" % (len(data), data))
                self.wfile.flush()
            self.wfile.write(b"0\\r\\n\\r\\n")
            return
        self._send(json.dumps({k.lower(): v for k, v in self.headers.items()}).encode())
    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0"))
        self._send(self.rfile.read(n), "application/octet-stream")
    def log_message(self, *a):
        pass
ThreadingHTTPServer(("0.0.0.0", int(sys.argv[1])), H).serve_forever()
"""


@dataclass
class Server:
    url: str
    env: dict[str, str]
    tenants: tuple[str, str]
    keys: dict[str, str]

    def sdk(self, who: str) -> dict[str, Any]:
        """The SDK's own configuration: nothing else is set."""
        return {"api_key": self.keys[who], "api_url": self.url, "sandbox_url": self.url}

    def native(self, method: str, path: str, who: str, **kwargs: Any) -> httpx.Response:
        with httpx.Client(base_url=self.url, timeout=120, trust_env=False) as client:
            headers = {"Authorization": f"Bearer {self.keys[who]}"}
            return client.request(method, path, headers=headers, **kwargs)

    def raw(self, path: str, headers: dict[str, str], **kwargs: Any) -> httpx.Response:
        with httpx.Client(base_url=self.url, timeout=60, trust_env=False) as client:
            return client.request(kwargs.pop("method", "GET"), path, headers=headers, **kwargs)


@pytest.fixture(scope="module")
def server(
    docker_client: docker.DockerClient, core_image: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    base = tmp_path_factory.mktemp("e2b")
    home = make_home(base, core_image, {})
    store = default_url(home.state)
    env = {**home.env(), "DOCKYARD_E2B_REAP_INTERVAL_S": "0.5"}
    tenants = (f"e{RUN_ID[:8]}", f"f{RUN_ID[:8]}")
    keys = {
        who: create_key(env, store, "--tenant", tenant)["key"]
        for who, tenant in zip(("a", "b"), tenants, strict=True)
    }
    try:
        with serve(env, store, base / "server.log") as serving:
            yield Server(serving.url, env, tenants, keys)
    finally:
        for tenant in tenants:
            sweep_tenant(docker_client, tenant)


def _containers(client: docker.DockerClient, tenant: str, sandbox: str) -> list[str]:
    selector = {"label": [f"dockyard.stack={tenant}", f"dockyard.session={sandbox}"]}
    return [c.name for c in client.containers.list(all=True, filters=selector)]


def _gone(server: Server, sandbox: str, who: str) -> bool:
    try:
        Sandbox.get_info(sandbox, **server.sdk(who))
    except SandboxNotFoundException:
        return True
    return False


def _start_server(server: Server, sandbox: str) -> None:
    """The tiny server, started with dockyard's own exec (the native API, same tenant)."""
    started = server.native(
        "POST",
        f"/api/sessions/{sandbox}/exec",
        "a",
        json={
            "command": [
                "sh",
                "-c",
                f"cat > /tmp/srv.py && (setsid python3 /tmp/srv.py {PORT} "
                "</dev/null >/tmp/srv.log 2>&1 &)",
            ],
            "stdin": SERVER,
        },
    )
    assert started.status_code == 200, started.text
    assert "event: exit" in started.text, started.text


def _loopback_canary_hits(server: Server, headers: dict[str, str]) -> tuple[list[int], list[str]]:
    """Statuses of raw requests whose target names a loopback listener this test starts
    (``@127.0.0.1:P/x``, ``http://127.0.0.1:P/x``, ``127.0.0.1:P``), and what it saw."""
    import socket
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    seen: list[str] = []

    class Canary(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.path)
            self.send_response(200)
            self.end_headers()

        def log_message(self, *_: Any) -> None:
            pass

    canary = ThreadingHTTPServer(("127.0.0.1", 0), Canary)
    threading.Thread(target=canary.serve_forever, daemon=True).start()
    p = canary.server_address[1]
    host, port = server.url.removeprefix("http://").split(":")
    lines = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    statuses = []
    try:
        for target in (f"@127.0.0.1:{p}/steal", f"http://127.0.0.1:{p}/steal", f"127.0.0.1:{p}"):
            with socket.create_connection((host, int(port)), timeout=30) as raw:
                raw.sendall(
                    f"GET {target} HTTP/1.1\r\nHost: x\r\n{lines}Connection: close\r\n\r\n".encode()
                )
                statuses.append(int(raw.recv(4096).split(b" ", 2)[1]))
    finally:
        canary.shutdown()
        canary.server_close()
    return statuses, seen


def test_sdk_lifecycle_isolation_and_routing(
    server: Server, docker_client: docker.DockerClient
) -> None:
    a, b = server.tenants
    canary = f"canary-{RUN_ID}"
    sbx = Sandbox.create(
        "base",
        timeout=600,
        metadata={"purpose": "e2b-test", "run": RUN_ID},
        envs={"E2B_TEST_VALUE": canary},
        # E2B's auto-resume (off by default): a routed call may wake it once paused.
        lifecycle={"on_timeout": "pause", "auto_resume": True},
        **server.sdk("a"),
    )
    other = Sandbox.create("base", metadata={"run": RUN_ID}, **server.sdk("b"))
    try:
        assert _containers(docker_client, a, sbx.sandbox_id), "no container for the sandbox"
        info = sbx.get_info()
        assert info.sandbox_id == sbx.sandbox_id
        assert info.metadata == {"purpose": "e2b-test", "run": RUN_ID}
        assert info.state.value == "running"
        assert info.template_id == "base"
        listed = Sandbox.list(query=SandboxQuery(metadata={"run": RUN_ID}), **server.sdk("a"))
        assert [s.sandbox_id for s in listed.next_items()] == [sbx.sandbox_id]
        none = Sandbox.list(query=SandboxQuery(metadata={"run": "other"}), **server.sdk("a"))
        assert none.next_items() == []
        before = info.end_at
        sbx.set_timeout(3600)
        assert sbx.get_info().end_at > before

        # The other tenant's key: nothing to see, nothing to kill, through the SDK...
        with pytest.raises(SandboxNotFoundException):
            Sandbox.get_info(sbx.sandbox_id, **server.sdk("b"))
        assert Sandbox.kill(sbx.sandbox_id, **server.sdk("b")) is False
        with pytest.raises(SandboxNotFoundException):
            Sandbox.set_timeout(sbx.sandbox_id, 1, **server.sdk("b"))
        seen = Sandbox.list(query=SandboxQuery(metadata={"run": RUN_ID}), **server.sdk("b"))
        assert [s.sandbox_id for s in seen.next_items()] == [other.sandbox_id]
        # ...nor through dockyard's own API.
        assert server.native("GET", f"/api/sessions/{sbx.sandbox_id}", "b").status_code == 404
        assert sbx.get_info().state.value == "running"

        # The daemon in the sandbox (images/core/envd.py), through the header form.
        out: list[str] = []
        ran = sbx.commands.run("echo hi", on_stdout=out.append, timeout=60)
        assert (ran.exit_code, ran.stdout, out) == (0, "hi\n", ["hi\n"])
        # envVars reach commands as secrets: never plain container environment.
        assert sbx.commands.run("printenv E2B_TEST_VALUE").stdout == f"{canary}\n"
        [name] = _containers(docker_client, a, sbx.sandbox_id)
        assert canary not in json.dumps(docker_client.api.inspect_container(name))
        # 50 MB up and down through the routing, streamed (the server holds no copy).
        big = os.urandom(1024 * 1024) * 50
        sbx.files.write("/tmp/big.bin", big)
        assert sbx.files.read("/tmp/big.bin", format="bytes") == big
        sbx.files.remove("/tmp/big.bin")
        # File metadata (envd 0.6.2, what the control plane's envdVersion lets the SDK send)
        # kept on the environment's own file systems: the home and /tmp.
        for where in ("meta.txt", "/tmp/meta.txt"):
            assert sbx.files.write(where, "m", metadata={"Team": "web"}).metadata == {"team": "web"}
            assert sbx.files.get_info(where).metadata == {"team": "web"}

        # Routing: a server started inside, reached by the SDK's own host name...
        _start_server(server, sbx.sandbox_id)
        host = sbx.get_host(PORT)
        assert host.startswith(f"{PORT}-{sbx.sandbox_id}.")
        key_a = {"Host": host, "X-API-Key": server.keys["a"]}
        wait_for(lambda: server.raw("/headers", key_a).status_code == 200, 30, what="server inside")
        seen_headers = server.raw("/headers", {**key_a, "Cookie": "dockyard_session=x; y=1"})
        assert seen_headers.status_code == 200, seen_headers.text
        received = seen_headers.json()
        assert server.keys["a"] not in json.dumps(received), "the API key reached the sandbox"
        assert received.get("cookie") == "y=1"
        echoed = server.raw("/echo", key_a, method="POST", content=b"x" * 3_000_000)
        assert echoed.status_code == 200, echoed.text
        assert echoed.content == b"x" * 3_000_000
        streamed = server.raw("/stream", key_a)
        assert streamed.text == "part0\npart1\npart2\n"
        # ...and by the header form with the sandbox's own access token (what the SDK sends).
        token = sbx._envd_access_token  # what Sandbox.create got back (envdAccessToken)
        assert token
        by_header = {
            "E2b-Sandbox-Id": sbx.sandbox_id,
            "E2b-Sandbox-Port": str(PORT),
            "X-Access-Token": str(token),
        }
        via_header = server.raw("/headers", by_header)
        assert via_header.status_code == 200, via_header.text
        assert "x-access-token" not in via_header.json(), "the token reached a non-daemon port"
        # A WebSocket by the header form: the handshake's headers reach the sandbox as the
        # HTTP routing filters them, and the client gets the subprotocol the sandbox chose.
        handshake = {
            **by_header,
            "Cookie": "dockyard_session=x; y=1",
            "Authorization": f"Bearer {server.keys['a']}",
            "X-App": "1",
        }
        ws_url = server.url.replace("http://", "ws://", 1) + "/ws"
        chat: Any = ["chat"]
        with ws_connect(ws_url, additional_headers=handshake, subprotocols=chat) as socket:
            assert socket.subprotocol == "chat"
            seen_ws = json.loads(socket.recv(timeout=30))
        assert (seen_ws.get("cookie"), seen_ws.get("x-app")) == ("y=1", "1"), seen_ws
        assert seen_ws.get("sec-websocket-protocol") == "chat", seen_ws
        assert server.keys["a"] not in json.dumps(seen_ws), "the API key reached the sandbox"
        assert "x-access-token" not in seen_ws, seen_ws
        assert "e2b-sandbox-id" not in seen_ws, seen_ws
        # Refused: no credentials, a wrong token, the other tenant's key or token, a bad port.
        for headers, code in (
            ({"Host": host}, 401),
            ({"Host": host, "X-Access-Token": "nope"}, 404),
            ({"Host": host, "X-API-Key": server.keys["b"]}, 404),
            ({**by_header, "X-Access-Token": str(other._envd_access_token)}, 404),
            ({**by_header, "E2b-Sandbox-Port": "70000"}, 422),
        ):
            refused = server.raw("/headers", headers)
            assert refused.status_code == code, (headers.keys(), refused.text)
            assert "code" in refused.json()
            assert "message" in refused.json()
        missing = server.raw("/headers", {**key_a, "Host": f"{PORT}-snosuch.127.0.0.1"})
        assert missing.status_code == 404
        # The request target is a path on the sandbox, never an authority (review4 F1): a
        # loopback listener standing for the host's services sees nothing.
        statuses, seen = _loopback_canary_hits(server, by_header)
        assert seen == [], "a request target reached a listener outside the sandbox"
        # `@host:port/x` and `host:port` are refused; an absolute-form target is refused
        # (h11 hands it through) or read as its path ON THE SANDBOX (httptools parses the
        # URL, as RFC 9112 lets a server): the server inside answers, never the canary.
        assert statuses[0] == statuses[2] == 400, statuses
        assert statuses[1] in (400, 200), statuses

        # Pause (memory kept, no deadline) and connect (resumes): the daemon answers again.
        sbx.pause()
        assert sbx.get_info().state.value == "paused"
        assert [s.sandbox_id for s in Sandbox.list(**server.sdk("a")).next_items()] == [
            sbx.sandbox_id
        ]
        resumed = Sandbox.connect(sbx.sandbox_id, timeout=600, **server.sdk("a"))
        assert resumed.get_info().state.value == "running"
        assert resumed.commands.run("echo again").stdout == "again\n"
        # Paused again, a routed call without connect wakes it once (E2B's auto-resume,
        # asked at create), audited like dockyard's own wake on use, and its clock runs
        # again. (Without autoResume it answers 409: tests/api/test_e2b.py.)
        resumed.pause()
        assert resumed.commands.run("echo woken", timeout=60).stdout == "woken\n"
        woken = resumed.get_info()
        assert woken.state.value == "running"
        assert woken.end_at > woken.started_at
        audit = server.native(
            "GET", "/api/audit", "a", params={"session": sbx.sandbox_id, "action": "resume"}
        )
        assert audit.status_code == 200, audit.text
        details = [line.get("detail") or "" for line in audit.json()]
        assert sum("woken by e2b routed call" in d for d in details) == 1, details
        # Metrics: one sample now, from the session's stats; none for another tenant.
        [metric] = resumed.get_metrics()
        assert metric.mem_total > 0
        assert metric.disk_total > metric.disk_used > 0
        with pytest.raises(SandboxNotFoundException):
            Sandbox.get_metrics(sbx.sandbox_id, **server.sdk("b"))
        # Many at once: the caller's running ones only (b's sandbox is not a's to see).
        many = server.raw(
            "/sandboxes/metrics",
            {"X-API-Key": server.keys["a"]},
            params={"sandbox_ids": f"{sbx.sandbox_id},{other.sandbox_id}"},
        )
        assert many.status_code == 200, many.text
        assert list(many.json()["sandboxes"]) == [sbx.sandbox_id]
        assert many.json()["sandboxes"][sbx.sandbox_id]["memTotal"] == metric.mem_total

        # The timeout: set short, the server's loop destroys the sandbox at its deadline.
        Sandbox.set_timeout(other.sandbox_id, 1, **server.sdk("b"))
        wait_for(lambda: _gone(server, other.sandbox_id, "b"), 30, what="expiry")
        assert not _containers(docker_client, b, other.sandbox_id)
    finally:
        killed = sbx.kill()
        Sandbox.kill(other.sandbox_id, **server.sdk("b"))
    assert killed is True
    assert not _containers(docker_client, a, sbx.sandbox_id)
    with pytest.raises(SandboxNotFoundException):
        sbx.get_info()


def test_unknown_template_and_unsupported_endpoints(server: Server) -> None:
    with pytest.raises(SandboxException) as caught:
        Sandbox.create("no-such-template", **server.sdk("a"))
    assert "no-such-template" in str(caught.value)
    assert "base" in str(caught.value)
    built = server.raw("/v3/templates", {"X-API-Key": server.keys["a"]}, method="POST")
    assert built.status_code == 501
    assert "docs/e2b.md" in built.json()["message"]
    unauthenticated = server.raw("/v2/sandboxes", {})
    assert unauthenticated.status_code == 401
    assert "X-API-Key" in unauthenticated.json()["message"]


def test_the_npm_sdk_unchanged(server: Server, tmp_path: Path) -> None:
    node = shutil.which("node")
    if node is None or not (NODE_SDK / "package.json").is_file():
        message = "node and the npm e2b SDK are needed (make setup-dev installs e2b@2.51.0)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    probe = tmp_path / "probe.mjs"
    probe.write_text(NODE_PROBE)
    # Resolved from the node tools' node_modules, as `import 'e2b'` in an application.
    (tmp_path / "node_modules").symlink_to(NODE_SDK.parent)
    ran = subprocess.run(
        [node, str(probe)],
        env={**os.environ, "KEY": server.keys["a"], "OTHER": server.keys["b"], "URL": server.url},
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
        cwd=tmp_path,
    )
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert json.loads(ran.stdout.strip().splitlines()[-1]) == {
        "stdout": "hi\n",
        "out": ["hi\n"],
        "exit": 0,
        "state": "running",
        "metadata": {"lang": "node"},
        "hidden": "SandboxNotFoundError",
        "killedByOther": False,
        "killed": True,
    }
