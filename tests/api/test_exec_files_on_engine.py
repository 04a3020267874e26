"""The data plane over HTTP against the real engine: ``dockyard serve`` in a process of its
own, one session realised by the harness driver, then exec (streamed output and exit
code, a timeout that kills, 10 MB of output), a 20 MB file round trip, symlinks planted
by the agent that lead nowhere, and another tenant's key answered 404 everywhere.
SQLite only (the key store is not what these tests prove)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from typing import Any

import docker
import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from dockyard.api.store import default_url
from tests.api.test_server_on_engine import DOCKYARD, Server, _sweep
from tests.support.engine import RUN_ID, is_ready, wait_for
from tests.support.harness_home import make_home
from tests.support.server import serve

pytestmark = [pytest.mark.docker, pytest.mark.slow]

SESSION = "dp"
MB = 1024 * 1024


@pytest.fixture(scope="module")
def server(
    docker_client: docker.DockerClient,
    core_image: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Server]:
    assert DOCKYARD.is_file(), f"the dockyard console script is not installed at {DOCKYARD}"
    base = tmp_path_factory.mktemp("dataplane")
    home = make_home(base, core_image, {"healthcheck": {"interval": "5s"}})
    state, project, settings = home.state, home.project, home.settings
    env = home.env()
    tenants = (f"d{RUN_ID[:6]}x", f"e{RUN_ID[:6]}x")
    made = Server("", env, state, settings, project, default_url(state), *tenants, {})
    for who, flags in (("tenant", ["--tenant", tenants[0]]), ("other", ["--tenant", tenants[1]])):
        result = made.cli("keys", "create", *flags, "--json")
        assert result.returncode == 0, result.stderr
        made.keys[who] = json.loads(result.stdout)
    try:
        with serve(env, made.store, base / "server.log", "--rate", "1000") as serving:
            made.url = serving.url
            try:
                created = made.call("POST", "/api/sessions", "tenant", json=made.request(SESSION))
                assert created.status_code == 201, created.text
                container = docker_client.containers.get(created.json()["container"]["id"])
                wait_for(lambda: is_ready(container), 120, what="the session ready")
                yield made
            finally:
                made.call("DELETE", f"/api/sessions/{SESSION}", "tenant")
    finally:
        _sweep(docker_client, tenants)


def run(server: Server, body: dict[str, Any], who: str = "tenant") -> dict[str, Any]:
    """An exec's events, in order: {"events": [(name, data)], "stdout", "stderr", "exit"}."""
    events: list[tuple[str, Any]] = []
    with (
        httpx.Client(base_url=server.url, timeout=120, trust_env=False) as client,
        client.stream(
            "POST", f"/api/sessions/{SESSION}/exec", headers=server.headers(who), json=body
        ) as response,
    ):
        assert response.status_code == 200, response.read().decode()
        assert response.headers["content-type"].startswith("text/event-stream")
        name = None
        for line in response.iter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                events.append((str(name), json.loads(line[6:])))
    out: dict[str, Any] = {"events": events}
    for stream in ("stdout", "stderr"):
        out[stream] = "".join(data["data"] for name, data in events if name == stream)
    out["exit"] = next((data for name, data in events if name == "exit"), None)
    return out


def in_container(docker_client: docker.DockerClient, server: Server, *command: str) -> str:
    manifest = server.call("GET", f"/api/sessions/{SESSION}", "tenant").json()["manifest"]
    container = docker_client.containers.get(manifest["container"]["id"])
    result = container.exec_run(list(command), user="1000")
    return str(result.output.decode())


def test_exec_streams_output_env_cwd_and_the_exit_code(server: Server) -> None:
    made = server.call(
        "PUT",
        f"/api/sessions/{SESSION}/files",
        "tenant",
        params={"path": "sub/dir/keep", "parents": "true"},
        content=b"",
    )
    assert made.status_code == 200, made.text
    result = run(
        server,
        {
            "command": ["sh", "-c", 'echo "out $FOO"; pwd; id -u; echo err >&2; exit 7'],
            "env": {"FOO": "bar"},
            "cwd": "sub/dir",
        },
    )
    assert result["events"][0][0] == "start"
    assert result["events"][0][1]["execId"]
    assert result["stdout"] == "out bar\n/workspace/sub/dir\n1000\n"
    assert result["stderr"] == "err\n"
    assert result["exit"]["code"] == 7
    assert result["exit"]["timedOut"] is False
    assert [n for n, _ in result["events"]][-1] == "exit"

    piped = run(server, {"command": ["wc", "-c"], "stdin": "x" * 1000})
    assert piped["stdout"].strip() == "1000"
    refused = server.call(
        "POST", f"/api/sessions/{SESSION}/exec", "tenant", json={"command": ["true"], "cwd": "/etc"}
    )
    assert refused.status_code == 422
    assert "cwd: '/etc' is outside /workspace" in refused.json()["error"]["problems"][0]


def test_a_timeout_kills_the_command_and_a_signal_reaches_it(
    server: Server, docker_client: docker.DockerClient
) -> None:
    started = time.monotonic()
    result = run(server, {"command": ["sh", "-c", "echo go; sleep 300"], "timeout": 1})
    # Ended by the 1 s timeout, not by the sleep's 300 s (a loaded machine adds seconds).
    assert time.monotonic() - started < 60
    assert result["stdout"] == "go\n"
    assert result["exit"]["timedOut"] is True
    assert result["exit"]["code"] == 137
    # SIGKILLed: gone once the kernel has run the signal (the next read may come first).
    wait_for(
        lambda: "sleep 300" not in in_container(docker_client, server, "ps", "-eo", "args"),
        30,
        what="the timed-out command's sleep killed",
    )

    # A client that goes away mid-stream: its command is killed too.
    with (
        httpx.Client(base_url=server.url, timeout=60, trust_env=False) as client,
        client.stream(
            "POST",
            f"/api/sessions/{SESSION}/exec",
            headers=server.headers("tenant"),
            json={"command": ["sh", "-c", "echo started; sleep 301"]},
        ) as response,
    ):
        for line in response.iter_lines():
            if "started" in line:
                break
        # Running while its client is connected: read before the client goes, since the
        # server may kill it within milliseconds of the disconnect.
        assert "sleep 301" in in_container(docker_client, server, "ps", "-eo", "args")
    wait_for(
        lambda: "sleep 301" not in in_container(docker_client, server, "ps", "-eo", "args"),
        30,
        what="the abandoned command killed",
    )

    # A signal by the exec id the stream started with.
    with (
        httpx.Client(base_url=server.url, timeout=60, trust_env=False) as client,
        client.stream(
            "POST",
            f"/api/sessions/{SESSION}/exec",
            headers=server.headers("tenant"),
            json={
                "command": [
                    "sh",
                    "-c",
                    "trap 'echo got-term; exit 9' TERM; echo ready; while :; do sleep 0.1; done",
                ]
            },
        ) as response,
    ):
        lines = response.iter_lines()
        exec_id = None
        for line in lines:
            if line.startswith("data: ") and "execId" in line:
                exec_id = json.loads(line[6:])["execId"]
            if "ready" in line:
                break
        other = server.call(
            "POST",
            f"/api/sessions/{SESSION}/exec/{exec_id}/signal",
            "other",
            json={"signal": "TERM"},
        )
        assert other.status_code == 404
        sent = server.call(
            "POST",
            f"/api/sessions/{SESSION}/exec/{exec_id}/signal",
            "tenant",
            json={"signal": "SIGTERM"},
        )
        assert sent.status_code == 200, sent.text
        rest = "\n".join(lines)
    assert "got-term" in rest
    assert '"code": 9' in rest


def test_ten_megabytes_of_output_stream_whole(server: Server) -> None:
    size = 10 * MB
    started = time.monotonic()
    result = run(server, {"command": ["sh", "-c", f"head -c {size} /dev/zero | tr '\\0' a"]})
    elapsed = time.monotonic() - started
    assert result["exit"]["code"] == 0
    assert len(result["stdout"]) == size
    assert set(result["stdout"]) == {"a"}
    pieces = sum(1 for n, _ in result["events"] if n == "stdout")
    assert pieces > 10  # streamed as it came, not in one piece at the end
    print(f"10 MB of output over HTTP: {elapsed:.2f} s in {pieces} events")


def test_a_twenty_megabyte_file_round_trip(server: Server) -> None:
    data = os.urandom(20 * MB)
    path = "/workspace/big/blob.bin"
    with httpx.Client(base_url=server.url, timeout=120, trust_env=False) as client:
        started = time.monotonic()
        put = client.put(
            f"/api/sessions/{SESSION}/files",
            params={"path": path, "parents": "true"},
            headers=server.headers("tenant"),
            content=iter([data[i : i + MB] for i in range(0, len(data), MB)]),
        )
        uploaded = time.monotonic() - started
        assert put.status_code == 200, put.text
        assert put.json() == {"path": path, "size": len(data)}
        stat = client.get(
            f"/api/sessions/{SESSION}/files/stat",
            params={"path": path},
            headers=server.headers("tenant"),
        )
        assert stat.json()["type"] == "file"
        assert stat.json()["size"] == len(data)
        listed = client.get(
            f"/api/sessions/{SESSION}/files/list",
            params={"path": "big"},
            headers=server.headers("tenant"),
        ).json()
        assert [e["name"] for e in listed["entries"]] == ["blob.bin"]  # no temp file left
        started = time.monotonic()
        got = client.get(
            f"/api/sessions/{SESSION}/files",
            params={"path": "big/blob.bin"},
            headers=server.headers("tenant"),
        )
        downloaded = time.monotonic() - started
        assert got.status_code == 200
        assert got.content == data
        removed = client.delete(
            f"/api/sessions/{SESSION}/files",
            params={"path": "big", "recursive": "true"},
            headers=server.headers("tenant"),
        )
        assert removed.status_code == 200, removed.text
        assert (
            client.get(
                f"/api/sessions/{SESSION}/files/stat",
                params={"path": "big"},
                headers=server.headers("tenant"),
            ).status_code
            == 404
        )
    print(f"20 MB: upload {uploaded:.2f} s, download {downloaded:.2f} s")


def test_links_the_agent_plants_lead_nowhere(
    server: Server, docker_client: docker.DockerClient
) -> None:
    plant = (
        "cd /workspace && ln -sfn /etc etc && ln -sfn /home/agent elsewhere && "
        "ln -sfn /etc/passwd passwd && ln -sfn /etc/hostname hostname && mkfifo fifo && "
        "mkdir -p real && ln -sfn ../real/../../etc loop"
    )
    planted = run(server, {"command": ["sh", "-c", plant]})
    assert planted["exit"]["code"] == 0, planted["stderr"]
    passwd_before = in_container(docker_client, server, "cat", "/etc/passwd")

    def files(method: str, path: str, **kwargs: Any) -> httpx.Response:
        return server.call(
            method,
            f"/api/sessions/{SESSION}/files",
            "tenant",
            params={"path": path, **kwargs.pop("params", {})},
            **kwargs,
        )

    for path in ("etc/passwd", "passwd", "elsewhere/.bashrc", "loop/passwd", "etc", "fifo"):
        got = files("GET", path)
        assert got.status_code == 409, (path, got.status_code, got.text)
        assert "root:" not in got.text
    for path in ("../etc/passwd", "/etc/passwd", "/workspace/../etc/passwd"):
        assert files("GET", path).status_code == 422, path
    for path in ("etc/dockyard-escape", "elsewhere/dockyard-escape", "loop/x"):
        put = files("PUT", path, content=b"owned", params={"parents": "true"})
        assert put.status_code == 409, (path, put.text)
    assert "dockyard-escape" not in in_container(docker_client, server, "ls", "-a", "/home/agent")
    listing = server.call(
        "GET", f"/api/sessions/{SESSION}/files/list", "tenant", params={"path": "etc"}
    )
    assert listing.status_code == 409
    # A link at the final name is replaced by the upload, never written through.
    replaced = files("PUT", "passwd", content=b"mine\n")
    assert replaced.status_code == 200, replaced.text
    assert in_container(docker_client, server, "cat", "/etc/passwd") == passwd_before
    stat = server.call(
        "GET", f"/api/sessions/{SESSION}/files/stat", "tenant", params={"path": "hostname"}
    ).json()
    assert (stat["type"], stat["target"]) == ("symlink", "/etc/hostname")
    # Removing a link removes the link, never what it points at.
    assert files("DELETE", "etc", params={"recursive": "true"}).status_code == 200
    assert "passwd" in in_container(docker_client, server, "ls", "/etc")


def test_stats_logs_and_ports(server: Server) -> None:
    stats = server.call("GET", f"/api/sessions/{SESSION}/stats", "tenant")
    assert stats.status_code == 200, stats.text
    body = stats.json()
    assert body["status"] == "running"
    assert body["ageSeconds"] >= 0
    assert body["memory"]["used"] > 0
    assert 0 < body["memory"]["percent"] < 100
    assert body["disk"]["total"] > 0
    assert 0 <= body["disk"]["percent"] < 100
    logs = server.call("GET", f"/api/sessions/{SESSION}/logs", "tenant", params={"tail": 5})
    assert logs.status_code == 200
    ports = server.call("GET", f"/api/sessions/{SESSION}/ports", "tenant").json()
    assert [p["containerPort"] for p in ports["ports"]] == [3000]
    # follow: the stream stays open until the client goes away.
    with (
        httpx.Client(base_url=server.url, timeout=5, trust_env=False) as client,
        client.stream(
            "GET",
            f"/api/sessions/{SESSION}/logs",
            headers=server.headers("tenant"),
            params={"follow": "true", "tail": 0},
        ) as response,
    ):
        assert response.status_code == 200
    assert server.call("GET", f"/api/sessions/{SESSION}/ports", "tenant").status_code == 200


def test_another_tenants_key_gets_404_on_every_data_plane_endpoint(server: Server) -> None:
    endpoints: list[tuple[str, str, dict[str, Any]]] = [
        ("POST", "/api/sessions/{}/exec", {"json": {"command": ["true"]}}),
        ("POST", "/api/sessions/{}/exec/x/signal", {"json": {"signal": "TERM"}}),
        ("GET", "/api/sessions/{}/files", {"params": {"path": "a"}}),
        ("PUT", "/api/sessions/{}/files", {"params": {"path": "a"}, "content": b"x"}),
        ("DELETE", "/api/sessions/{}/files", {"params": {"path": "a"}}),
        ("GET", "/api/sessions/{}/files/list", {"params": {"path": "."}}),
        ("GET", "/api/sessions/{}/files/stat", {"params": {"path": "a"}}),
        ("GET", "/api/sessions/{}/stats", {}),
        ("GET", "/api/sessions/{}/logs", {}),
        ("GET", "/api/sessions/{}/ports", {}),
    ]
    for method, path, kwargs in endpoints:
        seen = server.call(method, path.format(SESSION), "other", **kwargs)
        missing = server.call(method, path.format("nosuch"), "other", **kwargs)
        assert seen.status_code == missing.status_code == 404, (method, path, seen.text)
        assert seen.json()["error"]["problems"] == [
            p.replace("nosuch", SESSION) for p in missing.json()["error"]["problems"]
        ]
    # ... and the owner's key reaches them (the 404s above are the tenant's, not the route's).
    assert server.call("GET", f"/api/sessions/{SESSION}/ports", "tenant").status_code == 200


def _ws_url(server: Server, session: str = SESSION) -> str:
    return server.url.replace("http://", "ws://") + f"/api/sessions/{session}/exec/ws"


def _collect(ws: Any) -> tuple[bytes, bytes, dict[str, Any]]:
    out, err = b"", b""
    while True:
        message = ws.recv(timeout=60)
        if isinstance(message, bytes):
            if message[:1] == b"\x01":
                out += message[1:]
            else:
                err += message[1:]
            continue
        event = json.loads(message)
        if event["event"] in ("exit", "error"):
            return out, err, event


def test_an_interactive_command_over_a_websocket(server: Server) -> None:
    with connect(_ws_url(server), additional_headers=server.headers("tenant")) as ws:
        ws.send(json.dumps({"command": ["sh"], "tty": True, "rows": 30, "cols": 100}))
        assert json.loads(ws.recv(timeout=60))["event"] == "start"
        ws.send(b"stty size; tty; echo $((6*7)); exit 5\n")
        out, _, exit_event = _collect(ws)
    assert b"30 100" in out
    assert b"/dev/pts/" in out
    assert b"42" in out
    assert exit_event["code"] == 5

    with connect(_ws_url(server), additional_headers=server.headers("tenant")) as ws:
        ws.send(
            json.dumps({"command": ["sh", "-c", "wc -c; echo e >&2"], "tty": False, "stdin": "yy"})
        )
        assert json.loads(ws.recv(timeout=60))["event"] == "start"
        for _ in range(10):
            ws.send(b"x" * 1000)
        ws.send(json.dumps({"eof": True}))
        out, err, exit_event = _collect(ws)
    assert (out.strip(), err, exit_event["code"]) == (b"10002", b"e\n", 0)

    answers = []
    for session in (SESSION, "nosuch"):
        with connect(_ws_url(server, session), additional_headers=server.headers("other")) as ws:
            ws.send(json.dumps({"command": ["true"]}))
            _, _, event = _collect(ws)
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=60)
            answers.append((closed.value.rcvd.code, event["error"]["problems"]))
    assert answers[0][0] == answers[1][0] == 4404
    assert answers[0][1] == [p.replace("nosuch", SESSION) for p in answers[1][1]]
