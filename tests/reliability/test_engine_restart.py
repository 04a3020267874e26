"""The Docker engine stops and starts under running environments. With `live-restore`
(set by the docker_host role) the environments keep running, their published ports
answer afterwards on the same host ports, and the manifests still match the engine.

This restarts the engine of the machine the tests run on — the CI machine's own,
started by the docker_host role — and always starts it again, also on failure.
"""

from __future__ import annotations

import urllib.request
from pathlib import Path
from typing import Any

import docker
import pytest

from tests.support import dockerd
from tests.support.engine import exec_ok, is_ready, wait_for
from tests.support.stacks import Deployed

pytestmark = [pytest.mark.docker, pytest.mark.slow]

SERVER = """
import http.server, sys
session = sys.argv[1]
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(session.encode())
    def log_message(self, *args): pass
http.server.HTTPServer(("0.0.0.0", 8000), Handler).serve_forever()
"""


@pytest.fixture(scope="module")
def engine_argv(docker_client: docker.DockerClient) -> list[str]:
    if Path("/run/systemd/system").is_dir():
        pytest.fail(
            "this test restarts a start-stop-daemon supervised engine; this host runs systemd"
        )
    assert docker_client.info()["LiveRestoreEnabled"], (
        "live-restore is off: run the docker_host role (it sets live-restore: true)"
    )
    return dockerd.engine_argv()


@pytest.fixture(scope="module")
def stack(deploy: Any) -> Deployed:
    values = {
        "healthcheck": {"interval": "2s", "startPeriod": "2s"},
        "limits": {"cpus": 1, "memory": "512m"},
        "environments": [
            {"sessionId": "live-a", "ports": [8000]},
            {"sessionId": "live-b", "backend": "codex", "ports": [8000]},
        ],
    }
    deployed = deploy("restart", values)
    deployed.wait_ready()
    for session in deployed.manifests:
        deployed.container(session).exec_run(["python3", "-c", SERVER, session], detach=True)
    return deployed


def get(port: int) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as response:
            return response.read().decode()
    except OSError:
        return None


def test_environments_survive_an_engine_restart(
    stack: Deployed, docker_client: docker.DockerClient, figures: dict, engine_argv: list[str]
) -> None:
    before = {}
    for session, manifest in stack.manifests.items():
        container = stack.container(session)
        port = manifest["container"]["portMappings"][0]["hostPort"]
        wait_for(lambda p=port: get(p) is not None, 60, what=f"{session} server on {port}")
        before[session] = (container.id, container.attrs["State"]["Pid"], port)

    during: dict[str, Any] = {}
    with dockerd.engine_down(engine_argv) as timings:
        # Engine down: the environments' processes keep running (live-restore).
        for session, (_, pid, port) in before.items():
            during[session] = {"alive": Path(f"/proc/{pid}").exists(), "answers": get(port)}
    assert all(d["alive"] for d in during.values()), during

    docker_client.api.ping()
    for session, (container_id, pid, port) in before.items():
        container = docker_client.containers.get(container_id)
        assert container.status == "running"
        assert container.attrs["State"]["Pid"] == pid  # the same process, never restarted
        assert container.attrs["RestartCount"] == 0
        assert is_ready(container)
        exec_ok(container, ["tmux", "has-session", "-t", "main"])
        wait_for(lambda p=port, s=session: get(p) == s, 30, what=f"{session} on {port} again")
        engine_ports = {
            int(k.split("/")[0]): int(v[0]["HostPort"])
            for k, v in container.attrs["NetworkSettings"]["Ports"].items()
            if v
        }
        manifest = stack.manifests[session]
        assert manifest["container"]["id"] == container.id
        assert {
            m["containerPort"]: m["hostPort"] for m in manifest["container"]["portMappings"]
        } == engine_ports
    figures["engine restart: dockerd stop / start s"] = (
        round(timings.get("stop", 0), 2),
        round(timings.get("start", 0), 2),
    )
    figures["engine restart: ports answered while dockerd was down"] = sorted(
        s for s, d in during.items() if d["answers"] == s
    )
