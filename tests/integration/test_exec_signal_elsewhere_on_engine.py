"""A signal from another process (as another server replica would send it, on any host)
reaches a command this process started, on the real engine, on runc and on gVisor: the
other process knows only the exec id (dockyard.sessions.workspace_exec finds the tag
through the engine and the tagged group inside the container). The same call for another
container's exec, or once the command has ended, answers not found."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from types import SimpleNamespace

import docker
import pytest
from docker.models.containers import Container

from dockyard.errors import NotFound
from dockyard.sessions.workspace_container import Limits
from dockyard.sessions.workspace_exec import Event, ExecRequest, ExecVerbs, Exit, Output
from tests.support.ansible import REPO
from tests.support.engine import LABELS, is_ready, unique_name, wait_for

pytestmark = [pytest.mark.docker]

# Run in a fresh Python: its in-process table of running execs is empty.
ELSEWHERE = """
import sys
import docker
from types import SimpleNamespace
from dockyard.errors import NotFound
from dockyard.sessions.workspace_container import Limits
from dockyard.sessions.workspace_exec import ExecVerbs
container, exec_id = sys.argv[1:3]
verbs = ExecVerbs(SimpleNamespace(session_id="s1"), {"container": {"id": container}},
                  docker.from_env(), Limits())
try:
    verbs.signal(exec_id, "TERM")
    print("sent")
except NotFound as error:
    print("not found:", error)
"""


def elsewhere(container: str, exec_id: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", ELSEWHERE, container, exec_id],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.fixture(params=["runc", "runsc"])
def target(
    request: pytest.FixtureRequest, docker_client: docker.DockerClient, core_image: str
) -> Iterator[Container]:
    container = docker_client.containers.run(
        core_image,
        runtime=request.param,
        name=unique_name("signal"),
        labels=LABELS,
        detach=True,
        environment={"DOCKYARD_BACKEND": "claude"},
        tmpfs={"/workspace": "rw,size=16m,uid=1000,gid=1000"},
    )
    try:
        wait_for(lambda: is_ready(container), 120, what=f"{container.name} ready")
        yield container
    finally:
        container.remove(force=True, v=True)


def test_a_signal_from_another_process_reaches_the_command(
    docker_client: docker.DockerClient, target: Container
) -> None:
    verbs = ExecVerbs(
        SimpleNamespace(session_id="s1"),  # type: ignore[arg-type]
        {"container": {"id": target.id}},
        docker_client,
        Limits(),
    )
    script = "trap 'echo got-term; exit 9' TERM; echo ready; while :; do sleep 0.1; done"
    events: list[Event] = []
    ready = threading.Event()

    def stream() -> None:
        for event in verbs.exec(ExecRequest(("sh", "-c", script), timeout=120)):
            events.append(event)
            if isinstance(event, Output) and b"ready" in event.data:
                ready.set()

    reader = threading.Thread(target=stream, daemon=True)
    reader.start()
    assert ready.wait(60), events
    exec_id = events[0].exec_id  # type: ignore[union-attr]
    assert elsewhere("0" * 64, exec_id).startswith("not found:")  # not that container's
    assert elsewhere(str(target.id), exec_id) == "sent"
    reader.join(60)
    assert not reader.is_alive()
    (end,) = [e for e in events if isinstance(e, Exit)]
    assert end.code == 9
    assert b"got-term" in b"".join(e.data for e in events if isinstance(e, Output))
    with pytest.raises(NotFound):  # ended: the engine says it no longer runs
        verbs.signal(exec_id, "TERM")
