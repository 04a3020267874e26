"""Every writable path of an environment has a size bound (issue 25 item 4), on the engine.

Two environments through the real program and the harness, with small bounds from the
stack (``limits.disk``): fillers inside one (fallocate in /tmp, dd in $HOME, a big file
in /workspace, /config, /checkpoints, a sparse 8T truncate) stop at their bound with
ENOSPC/EFBIG while the neighbour keeps writing; the workspace keeps its data and its
bound across a container restart; nothing of an environment (loop device, image file,
volume) is left after destroy.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest

from dockyard import storage
from tests.support.engine import RUN_ID, exec_ok, wait_for
from tests.support.stacks import Deployed

pytestmark = [pytest.mark.docker]

DISK = {
    "workspace": "64m",
    "config": "32m",
    "checkpoints": "32m",
    "home": "48m",
    "tmp": "40m",
    "secrets": "16m",
}
MB = 1024 * 1024


def run_as_agent(env: Deployed, session: str, script: str) -> tuple[int, str]:
    result = env.container(session).exec_run(["bash", "-c", script], user="1000")
    return result.exit_code, (result.output or b"").decode(errors="replace")


def image_keys(directory: str) -> set[str]:
    """``[device]:inode`` of each image under ``directory``, as ``losetup -a`` prints them."""
    return {f"[{s.st_dev}]:{s.st_ino}" for s in (p.stat() for p in Path(directory).glob("*.img"))}


def loop_devices(directory: str, keys: set[str] | None = None) -> list[str]:
    """Loop devices the host has attached to an image under ``directory``, by device and
    inode (as ``losetup -j`` finds them): the helper binds only that directory, so the
    kernel names a backing file relative to it (``/workspace.img``). ``keys``: taken
    before the directory went (:func:`image_keys`)."""
    keys = image_keys(directory) if keys is None else keys
    listed = subprocess.run(["losetup", "-a"], capture_output=True, text=True, check=True)
    return [line for line in listed.stdout.splitlines() if line.split()[1] in keys]


@pytest.fixture(scope="module")
def stack(deploy: Any) -> Deployed:
    deployed = deploy(
        "disk",
        {
            "limits": {"cpus": 1, "memory": "512m", "disk": DISK},
            "environments": [
                {"sessionId": "filler", "secrets": ["ANTHROPIC_API_KEY"]},
                {"sessionId": "neighbour", "secrets": ["ANTHROPIC_API_KEY"]},
            ],
        },
        {"ANTHROPIC_API_KEY": f"sk-ant-disk-{RUN_ID}"},
    )
    deployed.wait_ready()
    return deployed


def marked(out: str, key: str) -> int:
    """The number on the output's line ``<key>=<number>`` (the shell's own messages may
    come before or after it)."""
    found = re.search(rf"^{key}=\s*(\d+)\s*$", out, re.M)
    assert found, f"no {key}= line in: {out}"
    return int(found[1])


@pytest.mark.parametrize(
    ("path", "bound_mb"),
    [
        ("/tmp", 40),
        ("/var/tmp", 40),
        ("$HOME", 48),
        ("/workspace", 64),
        ("/config", 32),
        ("/checkpoints", 32),
    ],
)
def test_a_filler_stops_at_the_bound_and_the_neighbour_keeps_writing(
    stack: Deployed, path: str, bound_mb: int
) -> None:
    code, out = run_as_agent(
        stack,
        "filler",
        f"(fallocate -l 500G {path}/f) 2>&1; echo fallocate=$?; rm -f {path}/f; "
        f"dd if=/dev/zero of={path}/d bs=1M count=4096 2>&1 | grep -o 'No space left on device'; "
        f"echo written=$(du -sm {path}/d | cut -f1); "
        f"echo size=$(df -B1M --output=size {path} | tail -1); rm -f {path}/d",
    )
    assert "fallocate=0" not in out, out
    assert "No space left on device" in out, out  # dd's
    # By marker: the shell's own "File size limit exceeded" line (stderr) may come last.
    written_mb, size_mb = marked(out, "written"), marked(out, "size")
    assert size_mb <= bound_mb, f"{path}: a filesystem of {size_mb} MB, bound {bound_mb}: {out}"
    assert written_mb <= bound_mb, f"{path}: {written_mb} MB written past a {bound_mb} MB bound"
    # The neighbour is not affected: it writes 8 MB into the same path.
    code, out = run_as_agent(
        stack, "neighbour", f"dd if=/dev/zero of={path}/n bs=1M count=8 && rm {path}/n"
    )
    assert code == 0, f"neighbour cannot write {path}: {out}"


def test_the_secret_files_the_agent_owns_grow_no_further_than_their_bound(
    stack: Deployed,
) -> None:
    """The uploaded secret files are the agent's (0400): it can make one writable and
    append to it, up to /run/secrets' own small filesystem, which also keeps the token."""
    _, out = run_as_agent(
        stack,
        "filler",
        "f=/run/secrets/ANTHROPIC_API_KEY; chmod u+w $f; "
        "dd if=/dev/zero of=$f bs=1M count=4096 oflag=append conv=notrunc 2>&1 "
        "| grep -o 'No space left on device'; "
        "du -sm /run/secrets | cut -f1; df -B1M --output=size /run/secrets | tail -1; "
        ": > $f; printf ok",
    )
    lines = out.strip().splitlines()
    assert "No space left on device" in out, out
    assert int(lines[-3]) <= 16, out
    assert int(lines[-2]) <= 16, out
    neighbour = exec_ok(stack.container("neighbour"), ["cat", "/run/secrets/ANTHROPIC_API_KEY"])
    assert neighbour == f"sk-ant-disk-{RUN_ID}", "the neighbour's secret is its own"


@pytest.mark.parametrize("path", ["/tmp", "$HOME", "/workspace"])
def test_a_sparse_file_cannot_outgrow_the_largest_bound(stack: Deployed, path: str) -> None:
    """tmpfs and ext4 with 4 KiB blocks take an 8 TiB sparse file; the fsize rlimit does
    not, so no backup can meet one written from inside."""
    _, out = run_as_agent(
        stack,
        "filler",
        f"(truncate -s 8T {path}/z) 2>&1; echo rc=$?; "
        f"echo size=$(stat -c %s {path}/z 2>/dev/null || echo 0)",
    )
    assert "rc=0" not in out, out
    assert "File too large" in out or "File size limit exceeded" in out, out
    # The shell's own "File size limit exceeded" line may come after the echoes.
    size = re.search(r"size=(\d+)", out)
    assert size is not None, out
    assert int(size.group(1)) <= 64 * MB, out
    run_as_agent(stack, "filler", f"rm -f {path}/z")


def test_no_agent_writable_path_is_left_in_the_container_layer(stack: Deployed) -> None:
    """Enumerated, not listed: every path on the container's root filesystem that the
    agent can write, or owns, must be on a bounded mount (not on the overlay)."""
    _, out = run_as_agent(
        stack,
        "filler",
        "find / -xdev \\( -path /proc -o -path /sys \\) -prune -o "
        "! -type l \\( -writable -o -user 1000 \\) -print 2>/dev/null; "
        "echo MOUNTS; cut -d' ' -f5 /proc/self/mountinfo",
    )
    found, mounts = out.split("MOUNTS\n")
    mount_points = set(mounts.split())
    # A mount point is listed by -xdev but not entered: what is on it is bounded.
    unbounded = [p for p in found.split() if p not in mount_points]
    assert unbounded == [], f"writable by the agent on the container layer: {unbounded}"


def test_the_workspace_keeps_data_and_bound_across_a_restart(stack: Deployed) -> None:
    exec_ok(stack.container("neighbour"), ["sh", "-c", "echo kept > /workspace/k"], user="1000")
    container = stack.container("neighbour")
    container.restart(timeout=10)
    wait_for(lambda: container.reload() or container.status == "running", 60, what="restart")
    out = exec_ok(container, ["sh", "-c", "cat /workspace/k; df -B1M --output=size /workspace"])
    assert out.split()[0] == "kept", out
    assert int(out.split()[-1]) <= 64, out


def test_destroy_leaves_no_loop_device_image_or_volume(deploy_own: Any) -> None:
    deployed = deploy_own(
        "diskgone", {"limits": {"disk": DISK}, "environments": [{"sessionId": "x"}]}
    )
    directory = storage.disk_dir(deployed.container("x").labels["dockyard.environment"])
    assert Path(directory).is_dir(), "no images were made"
    keys = image_keys(directory)
    assert loop_devices(directory, keys), "no loop device was attached"
    deployed.destroy()
    assert deployed.leftovers() == []
    assert not Path(directory).exists(), f"{directory} is left"
    assert not Path(storage.link_dir(Path(directory).name)).exists(), "links are left"
    assert loop_devices(directory, keys) == [], "a loop device is left"


def test_after_a_reboot_nothing_is_written_until_the_images_are_attached_again(
    deploy_own: Any, docker_client: docker.DockerClient
) -> None:
    """A reboot, as the engine sees it: mounts and loop devices gone, /run emptied. The
    volumes' own directories are immutable, so the environment writes nothing (never to
    the engine's disk, never on another environment's device); ``attach_all``
    re-attaches and mounts the images and restarts it, with its data."""
    deployed = deploy_own(
        "diskboot", {"limits": {"disk": DISK}, "environments": [{"sessionId": "b"}]}
    )
    deployed.wait_ready()
    container = deployed.container("b")
    exec_ok(container, ["sh", "-c", "echo kept > /workspace/k && echo mine > $HOME/h"], user="1000")
    container.stop(timeout=10)
    environment_id = container.labels["dockyard.environment"]
    for line in reversed(Path("/proc/mounts").read_text().splitlines()):
        if f"/volumes/{environment_id}-" in line.split()[1]:
            subprocess.run(["umount", line.split()[1]], check=True)
    attached = loop_devices(storage.disk_dir(environment_id))
    assert attached, "no loop device to detach"
    for line in attached:
        subprocess.run(["losetup", "-d", line.split(":")[0]], check=True)
    shutil.rmtree(storage.link_dir(environment_id))
    container.start()  # as the engine does at boot (restart policy)
    with contextlib.suppress(docker.errors.APIError):  # it may exit, and restart: fine
        _, out = run_as_agent(deployed, "b", "echo x > /workspace/n; echo rc=$?")
        assert "rc=0" not in out, f"the workspace was writable without its filesystem: {out}"
    for volume in docker_client.volumes.list(filters={"label": "dockyard.managed=true"}):
        if volume.name.startswith(f"{environment_id}-"):
            data = Path(volume.attrs["Mountpoint"])
            assert list(data.iterdir()) == [], f"written to the engine's disk: {data}"
    started = storage.attach_all()
    assert container.name in started, started
    container.reload()
    assert container.status == "running"
    out = exec_ok(container, ["sh", "-c", "cat /workspace/k $HOME/h"], user="1000")
    assert out.split() == ["kept", "mine"], out
    out = exec_ok(container, ["df", "-B1M", "--output=size", "/workspace"])
    assert int(out.split()[-1]) <= 64, out


def test_prune_removes_the_images_a_label_sweep_left_behind(
    deploy_own: Any, docker_client: docker.DockerClient
) -> None:
    deployed = deploy_own(
        "diskorphan", {"limits": {"disk": DISK}, "environments": [{"sessionId": "o"}]}
    )
    environment_id = deployed.container("o").labels["dockyard.environment"]
    directory = storage.disk_dir(environment_id)
    selector = {"label": f"dockyard.stack={deployed.stack}"}
    for container in docker_client.containers.list(all=True, filters=selector):
        container.remove(force=True)
    # Past destroy's unmount (the filesystems off the volumes), then the volumes gone.
    for volume in docker_client.volumes.list(filters=selector):
        data = volume.attrs["Mountpoint"]
        subprocess.run(["umount", "-l", data], capture_output=True, check=False)
        subprocess.run(["chattr", "-i", data], check=True)
        volume.remove(force=True)
    assert Path(directory).is_dir()
    keys = image_keys(directory)
    assert loop_devices(directory, keys)
    pruned = storage.prune(prefix=environment_id, min_age_minutes=0)
    assert pruned == [environment_id]
    assert not Path(directory).exists()
    assert loop_devices(directory, keys) == []
    assert not Path(storage.link_dir(environment_id)).exists()


def test_a_new_size_or_image_keeps_the_data_and_the_size(deploy_own: Any) -> None:
    """Changing ``limits.disk`` re-runs the images' create, which never replaces an
    image that holds data (a replacement's create-then-delete would wipe it)."""
    values = {"limits": {"disk": DISK}, "environments": [{"sessionId": "r"}]}
    deployed = deploy_own("diskresize", values)
    deployed.wait_ready()
    exec_ok(deployed.container("r"), ["sh", "-c", "echo kept > /workspace/k"], user="1000")
    deployed.up({**deployed.values, "limits": {"disk": {**DISK, "workspace": "128m"}}})
    container = deployed.container("r")
    out = exec_ok(container, ["sh", "-c", "cat /workspace/k; df -B1M --output=size /workspace"])
    assert out.split()[0] == "kept", out
    assert int(out.split()[-1]) <= 64, f"an existing image keeps its size: {out}"
