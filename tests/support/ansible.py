"""Ansible for tests and benchmarks: run playbooks for real, against this machine
(-c local) or against containers started from the core image (the
community.docker.docker connection), and read the results."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
from docker.models.containers import Container

from tests.support.engine import LABELS, is_ready, unique_name, wait_for

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent


@dataclass
class PlaybookRun:
    rc: int
    output: str

    @property
    def recap(self) -> dict[str, dict[str, int]]:
        """PLAY RECAP counters per host, e.g. {"web": {"ok": 5, "changed": 0, ...}}."""
        hosts = {}
        for host, counters in re.findall(r"^(\S+)\s+:\s+(ok=.*)$", self.output, re.M):
            hosts[host] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", counters)}
        return hosts

    def changed(self) -> dict[str, int]:
        return {host: counters["changed"] for host, counters in self.recap.items()}

    def tasks_changed(self) -> list[str]:
        """Names of the tasks that reported a change on some host, in order."""
        return self._tasks("changed")

    def tasks_run(self) -> list[str]:
        """Names of the tasks that ran on some host (ok or changed), in order; skipped
        tasks and includes are left out. Needs the default stdout callback."""
        return self._tasks("ok|changed")

    def _tasks(self, statuses: str) -> list[str]:
        found, task = [], None
        for line in self.output.splitlines():
            header = re.match(r"^TASK \[(.*)\] \*+", line)
            if header:
                task = header.group(1)
            elif task is not None and re.match(rf"^({statuses}): \[", line):
                found.append(task)
                task = None  # one entry per task, whatever its loop items did
        return found


def run_playbook(
    playbook: str,
    *,
    inventory: str | Path,
    extra_vars: Mapping[str, Any] | None = None,
    connection: str | None = None,
    args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    check: bool = True,
) -> PlaybookRun:
    command = [
        str(VENV_BIN / "ansible-playbook"),
        "-i",
        str(inventory),
        str(REPO / "playbooks" / playbook),
    ]
    if connection:
        command += ["-c", connection]
    if extra_vars:
        command += ["-e", json.dumps(dict(extra_vars))]
    command += list(args)
    result = subprocess.run(
        command,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "ANSIBLE_FORCE_COLOR": "0", "ANSIBLE_NOCOLOR": "1", **(env or {})},
        check=False,
    )
    run = PlaybookRun(result.returncode, result.stdout + result.stderr)
    if check:
        assert run.rc == 0, f"ansible-playbook {playbook} exited {run.rc}:\n{run.output[-6000:]}"
    return run


def manifest_inventory(path: Path, manifest_dir: Path) -> Path:
    """An inventory file for the dockyard_manifests plugin over one manifest directory
    (the file name must end in dockyard_manifests.yml)."""
    assert path.name.endswith("dockyard_manifests.yml"), path
    path.write_text(f"plugin: dockyard_manifests\nmanifest_dirs:\n  - {manifest_dir}\n")
    return path


def list_inventory(
    inventory: Path, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`ansible-inventory --list` of ``inventory`` from the repository root."""
    return subprocess.run(
        [str(VENV_BIN / "ansible-inventory"), "-i", str(inventory), "--list"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, **(env or {})},
        check=False,
    )


LOCAL = {
    "ansible_become": False,
    "ansible_python_interpreter": str(VENV_BIN / "python"),
}


@dataclass
class TargetFleet:
    """Containers from the core image that playbooks configure over the docker connection."""

    client: docker.DockerClient
    image: str
    inventory_dir: Path
    containers: list[Container]

    def start(
        self, count: int = 1, labels: Mapping[str, str] | None = None, **kwargs: Any
    ) -> list[Container]:
        started = []
        for _ in range(count):
            container = self.client.containers.run(
                self.image,
                name=unique_name("target"),
                labels={**LABELS, **(labels or {})},
                detach=True,
                environment={"DOCKYARD_BACKEND": "claude"},
                tmpfs={"/workspace": "rw,size=16m,uid=1000,gid=1000"},
                **kwargs,
            )
            self.containers.append(container)
            started.append(container)
        for container in started:
            wait_for(
                lambda c=container: is_ready(c),
                120,
                what=f"{container.name} ready",
            )
        return started

    def inventory(self, containers: Sequence[Container], user: str = "root") -> Path:
        """An INI inventory of ``containers`` reached with ``docker exec`` as ``user``."""
        lines = ["[dockyard]"]
        lines += [
            f"{c.name} ansible_connection=community.docker.docker ansible_user={user} "
            "ansible_python_interpreter=/usr/bin/python3"
            for c in containers
        ]
        path = self.inventory_dir / f"inventory-{unique_name('inv')}.ini"
        path.write_text("\n".join(lines) + "\n")
        return path


def run_module(
    module: str,
    args: Mapping[str, Any],
    *,
    module_path: Path | None = None,
    extra_vars: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """One module on this machine (``ansible localhost -m``) with the venv's python;
    returns its result (``failed`` is set when it failed)."""
    command = [
        str(VENV_BIN / "ansible"),
        "localhost",
        "-i",
        "localhost,",
        "-c",
        "local",
        "-m",
        module,
        "-a",
        json.dumps(dict(args)),
        "-e",
        json.dumps({**LOCAL, **(extra_vars or {})}),
    ]
    if module_path:
        command += ["-M", str(module_path)]
    result = subprocess.run(
        command,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "ANSIBLE_STDOUT_CALLBACK": "json", "ANSIBLE_LOAD_CALLBACK_PLUGINS": "1"},
        check=False,
    )
    try:
        plays = json.loads(result.stdout)["plays"]
    except (json.JSONDecodeError, KeyError):
        raise AssertionError(f"ansible -m {module}: {result.stdout}{result.stderr}") from None
    return dict(plays[0]["tasks"][0]["hosts"]["localhost"])
