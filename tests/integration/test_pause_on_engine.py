"""Pause and resume on the real engine (issue 29 item 2), through the service layer
(:class:`dockyard.sessions.Sessions`) with the harness driver realising the session.

The proof: a background process keeps a counter and a token in its memory only; while the
session is paused the counter stands still (read through the host's /proc, since nothing
can be exec'd in a frozen container), and after resume the same process goes on from
where it stood, with the same token. Then: idempotence, the audit trail, another
tenant's 404, and a destroy of a paused session leaving nothing behind.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from dockyard.errors import Conflict, NotFound
from dockyard.sessions import Sessions, audit
from dockyard.sessions.status import engine_state
from tests.support.engine import RUN_ID, is_ready, wait_for
from tests.support.harness_home import destroy_all, harness_sessions, sweep_tenant

pytestmark = [pytest.mark.docker, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
DOCKYARD = Path(sys.executable).with_name("dockyard")
TENANT = f"pz{RUN_ID[:8]}"
OTHER = f"po{RUN_ID[:8]}"
# The token lives in the shell's memory only; each tick writes "<pid> <token> <count>".
COUNTER = (
    "token=$RANDOM$RANDOM; i=0; "
    'while :; do i=$((i+1)); echo "$$ $token $i" > /tmp/counter.new; '
    "mv /tmp/counter.new /tmp/counter; sleep 0.05; done"
)


@pytest.fixture(scope="module")
def sessions(
    docker_client: docker.DockerClient, core_image: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Sessions]:
    base = tmp_path_factory.mktemp("pause")
    with harness_sessions(base, core_image, {"healthcheck": {"interval": "5s"}}) as api:
        try:
            yield api
        finally:
            destroy_all(api, TENANT)
            sweep_tenant(docker_client, TENANT)


def _request(session: str, project: str) -> dict[str, object]:
    return {"sessionId": session, "cwd": project, "backend": "claude", "tenant": TENANT}


def _counter(pid: int) -> tuple[str, str, int]:
    """(process id, token, count) the counter last wrote, read from the host."""
    for _ in range(50):  # the writer renames a complete file; retry a torn read
        text = Path(f"/proc/{pid}/root/tmp/counter").read_text().split()
        if len(text) == 3:
            return text[0], text[1], int(text[2])
        time.sleep(0.02)
    raise AssertionError(f"the counter file is not 3 words: {text}")


def test_a_process_and_its_memory_survive_pause_and_resume(
    sessions: Sessions, docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    manifest = sessions.create(_request("frozen", str(tmp_path)))
    container = docker_client.containers.get(manifest["container"]["id"])
    wait_for(lambda: is_ready(container), 90, what="frozen ready")
    container.exec_run(["bash", "-c", COUNTER], detach=True)
    pid = docker_client.api.inspect_container(container.id)["State"]["Pid"]
    wait_for(lambda: Path(f"/proc/{pid}/root/tmp/counter").exists(), 60, what="counter")
    time.sleep(0.3)

    paused = sessions.pause("frozen", TENANT)
    assert paused.as_dict() == {"sessionId": "frozen", "status": "paused", "changed": True}
    container.reload()
    assert container.status == "paused"
    # What GET /api/sessions/{id} reports as the session's status.
    assert engine_state(container.id, "local")["status"] == "paused"
    process, token, at_pause = _counter(pid)
    time.sleep(1.0)
    assert _counter(pid) == (process, token, at_pause), "the counter moved while paused"
    again = sessions.pause("frozen", TENANT)
    assert (again.status, again.changed) == ("paused", False)

    resumed = sessions.resume("frozen", TENANT)
    assert resumed.as_dict() == {"sessionId": "frozen", "status": "running", "changed": True}
    wait_for(lambda: _counter(pid)[2] > at_pause + 5, 60, what="the counter going on")
    later_process, later_token, later = _counter(pid)
    # The same process, its in-memory token intact, counting on from where it stood.
    assert (later_process, later_token) == (process, token)
    assert at_pause < later < at_pause + 200
    assert not sessions.resume("frozen", TENANT).changed

    lines = [
        (e["action"], e["result"], e.get("detail"))
        for e in audit.read(sessions.where.audit_log, session="frozen", tenant=TENANT)
        if e["action"] in ("pause", "resume")
    ]
    assert lines == [
        ("pause", "ok", None),
        ("pause", "ok", "already paused"),
        ("resume", "ok", None),
        ("resume", "ok", "already running"),
    ]


def test_the_command_line_pauses_and_resumes(sessions: Sessions) -> None:
    env = {
        **os.environ,
        "DOCKYARD_STATE_DIR": str(sessions.where.state),
        "DOCKYARD_CONFIG": str(sessions.where.config_file),
        "DOCKYARD_DRIVER": "tests.harness.sessions:HarnessDriver",
        "PYTHONPATH": str(REPO),
    }
    answers = []
    for verb in ("pause", "resume"):
        done = subprocess.run(
            [str(DOCKYARD), verb, "frozen", "--tenant", TENANT, "--json"],
            env=env, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        answers.append(json.loads(done.stdout))
    assert [(a["status"], a["changed"]) for a in answers] == [("paused", True), ("running", True)]
    done = subprocess.run(
        [str(DOCKYARD), "pause", "frozen", "--tenant", OTHER, "--json"],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 4, done.stdout
    assert json.loads(done.stdout)["error"]["kind"] == "not-found"


def test_another_tenant_and_a_stopped_session(
    sessions: Sessions, docker_client: docker.DockerClient
) -> None:
    for verb in (sessions.pause, sessions.resume):
        with pytest.raises(NotFound, match="no session 'frozen' of tenant"):
            verb("frozen", OTHER)
    container = docker_client.containers.get(sessions.get("frozen", TENANT)["container"]["id"])
    container.stop(timeout=1)
    try:
        with pytest.raises(Conflict, match="its container is exited, not running"):
            sessions.pause("frozen", TENANT)
        with pytest.raises(Conflict, match="its container is exited, not paused"):
            sessions.resume("frozen", TENANT)
    finally:
        container.start()


def test_a_paused_session_is_destroyed_with_nothing_left(
    sessions: Sessions, docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    sessions.create(_request("gone", str(tmp_path)))
    assert sessions.pause("gone", TENANT).changed
    sessions.destroy("gone", TENANT)
    selector = {"label": [f"dockyard.stack={TENANT}", "dockyard.session=gone"]}
    assert docker_client.containers.list(all=True, filters=selector) == []
    assert docker_client.volumes.list(filters=selector) == []
    with pytest.raises(NotFound):
        sessions.pause("gone", TENANT)
