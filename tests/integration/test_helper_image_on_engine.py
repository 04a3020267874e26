"""A tenant's image never runs dockyard's root helpers (issue 25 class, issue 29 review).

The session asks for an image (the tenant's choice) whose ``/bin/sh`` and ``cp`` are
trojans: run as root, they drop a canary into every dockyard host directory they can see
(``/var/lib/dockyard/...``, ``/run/dockyard/...``) before doing their job. The session is
created (disk helper: make, attach, mount), snapshotted (copy helper), forked from that
snapshot (copy helper; the snapshot image is the hostile layer too), the fork destroyed
and the snapshot removed (remove helper). Everything must work, and no canary may appear
on the engine's host: every helper ran from the operator's ``helperImage``.
"""

from __future__ import annotations

import base64
import contextlib
import io
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import docker
import docker.errors
import pytest

from dockyard.sessions import Sessions, snapshots
from dockyard.storage import DISKS_DIR, LINKS_DIR
from tests.support.engine import RUN_ID, is_ready, wait_for
from tests.support.harness_home import tenant_sessions

pytestmark = [pytest.mark.docker]

TENANT = f"hi{RUN_ID[:8]}"
CANARY = f"canary-{RUN_ID}"
HOSTILE = f"dockyard-test-hostile:{RUN_ID}"
# Root only (the environment's own processes run as the agent): into every dockyard host
# directory bound in, then the real program. dash reads /proc/self/mountinfo's 5th field.
DROP = (
    '[ "$(id -u)" != 0 ] || while read -r _ _ _ _ mnt _; do case $mnt in '
    f'/var/lib/dockyard*|/run/dockyard*) echo pwned > "$mnt/{CANARY}" 2>/dev/null ;; esac; '
    "done < /proc/self/mountinfo"
)


def _dockerfile(base: str, user: str) -> str:
    sh = base64.b64encode(f'#!/bin/dash\n{DROP}\nexec /bin/dash "$@"\n'.encode()).decode()
    cp = base64.b64encode(f'#!/bin/dash\n{DROP}\nexec /usr/bin/cp.real "$@"\n'.encode()).decode()
    return (
        f"FROM {base}\nUSER root\n"
        "RUN mv /usr/bin/cp /usr/bin/cp.real && rm /bin/sh"
        f" && echo {sh} | base64 -d > /bin/sh && echo {cp} | base64 -d > /usr/bin/cp"
        " && chmod 755 /bin/sh /usr/bin/cp\n"
        f"LABEL dockyard.test.run={RUN_ID}\nUSER {user}\n"
    )


def _canaries() -> list[str]:
    found = []
    for root in ("/var/lib/dockyard", "/run/dockyard"):
        for directory, _, files in os.walk(root):
            found += [os.path.join(directory, f) for f in files if f == CANARY]
    return found


@pytest.fixture(scope="module")
def hostile(docker_client: docker.DockerClient, core_image: str) -> Iterator[str]:
    user = docker_client.images.get(core_image).attrs["Config"].get("User") or "1000:1000"
    text = _dockerfile(core_image, user)
    docker_client.images.build(fileobj=io.BytesIO(text.encode()), tag=HOSTILE, rm=True)
    try:
        # The trojan works: as root with a dockyard directory bound, it drops the canary.
        probe = Path(f"{DISKS_DIR}/{CANARY}-probe")
        probe.mkdir(parents=True, exist_ok=True)
        try:
            docker_client.containers.run(
                HOSTILE, ["-c", "true"], entrypoint="/bin/sh", user="0:0", remove=True,
                network_mode="none", volumes={str(probe): {"bind": str(probe), "mode": "rw"}},
            )  # fmt: skip
            assert (probe / CANARY).is_file(), "the trojan /bin/sh did not drop its canary"
        finally:
            shutil.rmtree(probe, ignore_errors=True)
        yield HOSTILE
    finally:
        with contextlib.suppress(docker.errors.APIError):
            docker_client.images.remove(HOSTILE, force=True)


@pytest.fixture(scope="module")
def sessions(
    docker_client: docker.DockerClient, core_image: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Sessions]:
    base = tmp_path_factory.mktemp("helper-image")
    try:
        with tenant_sessions(docker_client, base, core_image, TENANT, snapshots=True) as api:
            yield api
    finally:
        for path in _canaries():
            os.unlink(path)


def test_a_hostile_image_never_runs_the_disk_or_snapshot_helpers(
    sessions: Sessions,
    docker_client: docker.DockerClient,
    hostile: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    project = tmp_path_factory.mktemp("helper-image-project")
    manifest = sessions.create(
        {"sessionId": "parent", "cwd": str(project), "backend": "claude", "tenant": TENANT,
         "container": {"image": hostile}}
    )  # fmt: skip
    parent = docker_client.containers.get(manifest["container"]["id"])
    assert parent.image.id == docker_client.images.get(hostile).id, "the session runs it"
    wait_for(lambda: is_ready(parent), 90, what="parent ready")
    written = parent.exec_run(["bash", "-c", "echo parent > /workspace/mark.txt"], user="agent")
    assert written.exit_code == 0, written.output
    assert _canaries() == [], "the disk helper ran the session's image"

    sessions.snapshot("parent", "snap", TENANT)
    assert _canaries() == [], "the copy helper ran the session's image"
    kid = sessions.fork("parent", "kid", TENANT, snapshot="snap")
    child = docker_client.containers.get(kid["container"]["id"])
    wait_for(lambda: is_ready(child), 90, what="fork ready")
    seen = child.exec_run(["cat", "/workspace/mark.txt"], user="agent")
    assert (seen.exit_code, seen.output.strip()) == (0, b"parent"), seen.output
    sessions.destroy("kid", TENANT)
    sessions.remove_snapshot("snap", TENANT)
    assert not os.path.exists(f"{snapshots.SNAPSHOTS_DIR}/{TENANT}/snap")
    assert _canaries() == [], "a helper ran the snapshot's (the hostile) image"
    assert not any(Path(LINKS_DIR).glob(f"*{CANARY}*"))
