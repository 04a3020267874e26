"""roles/control_plane on a host without systemd (PID 1 is a plain process, as in the CI's
containers): the server and Caddy run as supervised background processes
(tasks/service_background.yml). The host is the systemd-host image started with
``sleep infinity`` instead of /sbin/init, so Ansible's service manager fact is not
systemd; the checkout, its Python and this machine's Caddy are mounted as in
test_control_plane.py. Cron comes from the Debian mirror (the role installs it).

What must hold: the first run starts both through the supervisor, the second run changes
nothing, the server answers on loopback (and only there), and the supervisor that cron
runs each minute starts a server that died."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
from docker.models.containers import Container

from tests.roles.test_control_plane import VARIABLES, _mounts
from tests.support import systemd_host
from tests.support.ansible import run_playbook
from tests.support.engine import LABELS, unique_name

pytestmark = [pytest.mark.docker, pytest.mark.slow]

SUPERVISOR = "/usr/local/libexec/dockyard/control-plane-supervise"
SERVER_PIDFILE = "/run/dockyard-control-plane/server.pid"
# The server's loopback answer, read inside the host with its own Python.
ANSWER = (
    "import urllib.request; "
    "print(urllib.request.urlopen('http://127.0.0.1:8787/api/openapi.json', timeout=30).status)"
)


def sh(host: Container, script: str) -> tuple[int, str]:
    code, output = host.exec_run(["/bin/sh", "-c", script], user="root")
    return code, output.decode(errors="replace")


@pytest.fixture
def plain_host(docker_client: docker.DockerClient, tmp_path: Path) -> Iterator[Path]:
    """A Debian host with no init system; yields its inventory; removed afterwards."""
    name = unique_name("no-systemd")
    container = docker_client.containers.run(
        systemd_host.image(docker_client),
        ["sleep", "infinity"],
        name=name,
        labels=LABELS,
        detach=True,
        init=True,
        tmpfs={"/run": "rw,mode=755", "/tmp": "rw,mode=1777"},
        volumes=_mounts(),
    )
    try:
        inventory = tmp_path / f"{name}.ini"
        inventory.write_text(
            f"[dockyard_control_plane]\n{name} ansible_connection=community.docker.docker "
            "ansible_user=root ansible_python_interpreter=/usr/bin/python3\n"
        )
        yield inventory
    finally:
        container.remove(force=True, v=True)


def test_without_systemd_the_supervisor_runs_the_server_and_a_second_run_changes_nothing(
    docker_client: docker.DockerClient, plain_host: Path
) -> None:
    first = run_playbook("control_plane.yml", inventory=plain_host, extra_vars=VARIABLES)
    assert "control_plane : Ensure the server and Caddy run in the background" in (
        first.tasks_changed()
    )
    assert not any("systemd" in task for task in first.tasks_run()), first.tasks_run()
    second = run_playbook("control_plane.yml", inventory=plain_host, extra_vars=VARIABLES)
    assert set(second.changed().values()) == {0}, second.tasks_changed()

    host = docker_client.containers.get(plain_host.stem)
    assert sh(host, f'python3 -c "{ANSWER}"') == (0, "200\n")
    code, listening = sh(host, "ss -Hltn")
    assert code == 0
    assert "127.0.0.1:8787 " in listening
    assert "0.0.0.0:8787 " not in listening
    assert "*:8787 " not in listening
    code, cron = sh(host, "cat /etc/cron.d/dockyard-control-plane")
    assert code == 0
    assert f"* * * * * root {SUPERVISOR} " in cron

    # A server that died is started again by the supervisor (what cron runs each minute;
    # cron itself is stopped first, so the answer below is the test's own run's). Killed
    # and reaped (a zombie would still count as running for start-stop-daemon).
    assert sh(host, "/etc/init.d/cron stop >/dev/null 2>&1; pkill -x cron; true")[0] == 0
    code, killed = sh(
        host,
        f'pid=$(cat {SERVER_PIDFILE}) && kill -KILL "$pid" && for i in $(seq 200); do'
        ' kill -0 "$pid" 2>/dev/null || { echo killed; exit 0; }; sleep 0.1; done; exit 1',
    )
    assert (code, killed) == (0, "killed\n")
    assert sh(host, SUPERVISOR) == (0, "started: server\n")
    code, answered = sh(
        host,
        f'for i in $(seq 60); do python3 -c "{ANSWER}" 2>/dev/null && exit 0; sleep 0.5; done;'
        " exit 1",
    )
    assert (code, answered) == (0, "200\n")
