"""Bounded volumes across an engine restart with ``live-restore`` (docs/stacks.md).

On a second dockerd (live-restore on, as the docker_host role sets it; the shared engine
is never restarted here), an environment with bounded volumes runs through the program
and the harness; the engine restarts (SIGTERM, as an upgrade does) while it runs. The
environment keeps running, its data and its bounds; destroy then removes everything:
container, volumes, loop devices, images, links and mounts.

Engine 20.10 before 20.10.26 (Debian 12's 20.10.24) does not count the mounts of
live-restored containers: the local volume driver's uint64 count of a volume with mount
options wraps to 2^64-1 when the container stops, and the volume is refused removal
("volume has active mounts") until the next engine restart.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import docker
import docker.errors
import pytest

from dockyard import storage
from dockyard.config import HELPER_IMAGE
from tests.harness.docker_mocks import HarnessState
from tests.harness.multi_engine import MultiEngineMocks
from tests.support.engine import RUN_ID, exec_ok, is_ready, wait_for
from tests.support.program import run_program
from tests.support.second_engine import Engine, second_engine

pytestmark = [pytest.mark.docker, pytest.mark.slow]

STACK = f"rsdisk{RUN_ID[:6]}"
DISK = {"workspace": "48m", "config": "16m", "checkpoints": "16m", "home": "32m", "tmp": "16m"}


@pytest.fixture(scope="module")
def engine2(core_image: str) -> Iterator[Engine]:
    root = Path(tempfile.mkdtemp(prefix="dockyard-e2-", dir="/var/tmp"))
    # The engine's data root on a shared mount, as on a systemd host (the helper's mounts
    # on the volumes' directories reach the host through it); this machine's / is not.
    subprocess.run(["mount", "--bind", str(root), str(root)], check=True)
    try:
        subprocess.run(["mount", "--make-rshared", str(root)], check=True)
        with second_engine(root, [core_image, HELPER_IMAGE], {"live-restore": True}) as engine:
            yield engine
    finally:
        subprocess.run(["umount", "-l", str(root)], check=False)
        shutil.rmtree(root, ignore_errors=True)


def loop_devices(keys: set[str]) -> list[str]:
    """Loop devices attached to the images whose ``[device]:inode`` are ``keys`` (the
    kernel names a backing file relative to the directory the helper bound)."""
    listed = subprocess.run(["losetup", "-a"], capture_output=True, text=True, check=True)
    return [line for line in listed.stdout.splitlines() if line.split()[1] in keys]


def mounts_of(environment_id: str) -> list[str]:
    return [
        line for line in Path("/proc/mounts").read_text().splitlines() if environment_id in line
    ]


def test_destroy_after_an_engine_restart_leaves_nothing_and_the_bounds_hold(
    engine2: Engine, tmp_path: Path, core_image: str
) -> None:
    client = engine2.client
    state = HarnessState()

    def mocks() -> MultiEngineMocks:
        return MultiEngineMocks(client, {engine2.url: client}, state)

    values = {
        "cwd": str(tmp_path),
        "image": {"ref": core_image},
        "dockerHosts": {"two": engine2.url},
        "limits": {"cpus": 1, "memory": "512m", "disk": DISK},
        "environments": [{"sessionId": "across", "host": "two"}],
    }
    selector = {"label": f"dockyard.stack={STACK}"}
    environment_id = ""
    try:
        run_program(mocks(), values, stack=STACK)
        (container,) = client.containers.list(all=True, filters=selector)
        environment_id = container.labels["dockyard.environment"]
        wait_for(lambda: is_ready(container), 90, what="ready on the second engine")
        exec_ok(container, ["sh", "-c", "echo kept > /workspace/k"], user="1000")
        images = Path(storage.disk_dir(environment_id)).glob("*.img")
        keys = {f"[{s.st_dev}]:{s.st_ino}" for s in (p.stat() for p in images)}
        assert loop_devices(keys), "no loop device was attached"

        engine2.restart()

        container.reload()
        assert container.status == "running", "live-restore kept the environment running"
        out = exec_ok(
            container,
            [
                "sh",
                "-c",
                "cat /workspace/k; dd if=/dev/zero of=/workspace/d bs=1M count=512 2>&1 "
                "| grep -o 'No space left on device'; du -sm /workspace/d | cut -f1; "
                "rm -f /workspace/d",
            ],
            user="1000",
        )
        lines = out.split("\n")
        assert lines[0] == "kept", out
        assert "No space left on device" in out, f"no bound after the restart: {out}"
        assert int(lines[-1] or lines[-2]) <= 48, out

        mocks().destroy()
        assert client.containers.list(all=True, filters=selector) == []
        assert [v.name for v in client.volumes.list() if environment_id in v.name] == []
        assert not Path(storage.disk_dir(environment_id)).exists(), "images are left"
        assert not Path(storage.link_dir(environment_id)).exists(), "links are left"
        assert loop_devices(keys) == [], "a loop device is left"
        assert mounts_of(environment_id) == [], "a mount is left"
    finally:
        # What a failed destroy left (the engine must restart to let go of the volumes).
        for leftover in client.containers.list(all=True, filters=selector):
            leftover.remove(force=True)
        for target in reversed([line.split()[1] for line in mounts_of(environment_id or "-")]):
            subprocess.run(["umount", "-l", target], capture_output=True, check=False)
        for volume in client.volumes.list():
            if environment_id and environment_id in volume.name:
                subprocess.run(["chattr", "-i", volume.attrs["Mountpoint"]], check=False)
        if environment_id and any(environment_id in v.name for v in client.volumes.list()):
            engine2.restart()
            for volume in client.volumes.list():
                if environment_id in volume.name:
                    volume.remove(force=True)
        if environment_id:
            subprocess.run(
                ["sh", "-c", storage.DELETE_SCRIPT, "disks", *_places(environment_id)],
                capture_output=True,
                check=False,
            )


def _places(environment_id: str) -> tuple[str, str]:
    return storage.disk_dir(environment_id), storage.link_dir(environment_id)


def test_the_engine_is_the_one_with_the_counting_bug(engine2: Engine, core_image: str) -> None:
    """Guards the test above: on this engine a volume with mount options, used by a
    container across a restart, is refused removal. Should the engine be fixed
    (20.10.26+), this fails and says so: the test above then proves less."""
    client: docker.DockerClient = engine2.client
    name = f"dyk-count-{RUN_ID[:8]}"
    volume = client.volumes.create(name, driver_opts={"type": "tmpfs", "device": "tmpfs"})
    holder = client.containers.run(
        core_image,
        ["sleep", "600"],
        entrypoint=[],
        detach=True,
        volumes={name: {"bind": "/data", "mode": "rw"}},
    )
    try:
        engine2.restart()
        holder.remove(force=True)
        with pytest.raises(docker.errors.APIError, match="active mounts"):
            volume.remove()
    finally:
        engine2.restart()
        client.volumes.get(name).remove(force=True)
