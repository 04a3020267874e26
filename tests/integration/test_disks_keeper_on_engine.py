"""The disks keeper on the engine (issue 29, scale): one helper container per engine runs
every environment's disks scripts by ``docker exec`` (dockyard.storage_scripts).

Calls at once share one keeper, which leaves when idle; a call whose keeper is killed
under it runs again in a new one; an environment whose images were attached by a keeper
that has gone since is still torn down completely (its loop devices are found by device
and inode, not by the path the kernel shows, which belonged to the gone keeper's mounts).
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import docker
import pytest

from dockyard import config, storage, storage_scripts
from tests.support.engine import wait_for

pytestmark = [pytest.mark.docker]

KEEPERS = {"label": f"{storage_scripts.KEEPER_LABEL}=keeper"}


def _keepers(client: docker.DockerClient) -> list[str]:
    return [c.name for c in client.containers.list(all=True, filters=KEEPERS)]


def _keeper_ids(client: docker.DockerClient) -> set[str]:
    return {c.id for c in client.containers.list(all=True, filters=KEEPERS)}


def _sh(text: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", "-c", text], capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture
def volume(docker_client: docker.DockerClient) -> Iterator[str]:
    name = f"dockyard-keepertest-{uuid.uuid4().hex[:8]}"
    docker_client.volumes.create(name, labels={"dockyard.test": "keeper"})
    try:
        yield name
    finally:
        docker_client.volumes.get(name).remove(force=True)


def test_calls_at_once_share_one_keeper_that_leaves_when_idle(
    docker_client: docker.DockerClient, volume: str
) -> None:
    # Each call waits inside the keeper until all 8 are there, so none ends (and lets an
    # idle keeper go) before the last has started: every one of them had to find or start
    # a keeper at the same moment.
    here = Path(storage.LINKS_DIR) / f"keepertest-{uuid.uuid4().hex[:8]}"
    script = (
        f': > {here}/$$; n=0; while [ "$(ls {here} | wc -l)" -lt 8 ] && [ $n -lt 600 ]; do '
        'sleep 0.1; n=$((n + 1)); done; [ -d "$2" ] && echo "seen $2"'
    )
    text = storage.keeper_command(config.HELPER_IMAGE, script, volumes={"workspace": volume})
    here.mkdir(parents=True)
    seen: set[str] = set()
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            seen.update(_keeper_ids(docker_client))
            time.sleep(0.1)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda _: _sh(text), range(8)))
    finally:
        stop.set()
        watcher.join()
        shutil.rmtree(here, ignore_errors=True)
    for done in results:
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith("seen /")
        assert done.stdout.rstrip().endswith("/_data")
        assert done.stderr == ""
    assert len(seen) == 1, seen  # one keeper served them all: no second one was started
    wait_for(
        lambda: not _keepers(docker_client),
        storage_scripts.KEEPER_IDLE_S + 30,
        what=lambda: f"the keeper to leave when idle: {_keepers(docker_client)}",
    )


def test_a_call_whose_keeper_is_killed_under_it_runs_again(
    docker_client: docker.DockerClient, volume: str
) -> None:
    mark = f"/run/dockyard/disks/keepertest-{uuid.uuid4().hex[:8]}"
    # The first run is killed while it sleeps; the second finds the mark and ends at once.
    script = f"[ -e {mark} ] && {{ rm -f {mark}; echo again; exit 0; }}; : > {mark}; sleep 30"
    text = storage.keeper_command(config.HELPER_IMAGE, script, volumes={"workspace": volume})
    with ThreadPoolExecutor(1) as pool:
        call = pool.submit(_sh, text)
        wait_for(lambda: Path(mark).exists(), 60, what=lambda: "the first run to start")
        for name in _keepers(docker_client):
            docker_client.containers.get(name).kill()
        done = call.result(timeout=90)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "again"
    assert not Path(mark).exists()


def _attached(key: str) -> int:
    """Loop devices the host has attached to the image whose ``[device]:inode`` is ``key``."""
    listed = subprocess.run(["losetup", "-a"], capture_output=True, text=True, check=True)
    return sum(line.split()[1] == key for line in listed.stdout.splitlines())


def _mounted(path: str) -> bool:
    return any(line.split()[1] == path for line in Path("/proc/mounts").read_text().splitlines())


def test_images_attached_by_a_gone_keeper_are_found_again_detached_and_removed(
    docker_client: docker.DockerClient, volume: str
) -> None:
    """The kernel shows a loop device's backing file relative to the mounts of whoever
    attached it; once that keeper is gone the path no longer matches: devices are found by
    device and inode. A create run again (a refresh) re-uses the device, a destroy
    detaches it."""
    environment = f"dockyard-keepertest-{uuid.uuid4().hex[:8]}"
    places = (storage.disk_dir(environment), storage.link_dir(environment))
    setup = storage.keeper_command(
        config.HELPER_IMAGE, storage.SETUP_SCRIPT, *places, volumes={"workspace:16": volume}
    )
    teardown = storage.keeper_command(
        config.HELPER_IMAGE,
        storage.TEARDOWN_SCRIPT,
        *places,
        volumes={"workspace": volume},
        missing_ok=True,
    )

    def keeper_goes() -> None:
        for name in _keepers(docker_client):
            docker_client.containers.get(name).remove(force=True)

    try:
        done = _sh(setup)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "mounted workspace"
        image = Path(places[0]) / "workspace.img"
        key = f"[{image.stat().st_dev:04d}]:{image.stat().st_ino}"
        data = docker_client.volumes.get(volume).attrs["Mountpoint"]
        assert _attached(key) == 1
        assert _mounted(data)
        keeper_goes()
        done = _sh(setup)  # again, in a new keeper: the same device, still mounted
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == ""
        assert _attached(key) == 1
        keeper_goes()
        done = _sh(teardown)
        assert done.returncode == 0, done.stderr
        assert _attached(key) == 0
        assert not Path(places[0]).exists()
        assert not Path(places[1]).exists()
        assert not _mounted(data)
        if not any(Path(storage.DISKS_DIR).iterdir()):  # the engine's last environment
            # Nothing left to keep: the keeper goes within a second or two, not after
            # its whole idle time.
            wait_for(
                lambda: not _keepers(docker_client),
                storage_scripts.KEEPER_IDLE_S / 2,
                what=lambda: f"the keeper to leave with nothing to keep: {_keepers(docker_client)}",
            )
    finally:
        _sh(teardown)
