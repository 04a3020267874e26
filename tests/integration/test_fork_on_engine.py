"""Snapshot and fork on the real engine (issue 29 item 5), through the service layer with
the harness driver realising the sessions.

A parent gets a "package" in its container layer (a tool installed as root under
/usr/local/bin), files in its workspace and home, and an SSH host key in its config
volume. A fork taken while it runs has the tool and the files, none of the key, an
identity of its own; writes on either side never reach the other. A named snapshot is
listed to its tenant only, a fork from it has the files, and it cannot be removed while
that fork runs its image. Everything (sessions, snapshot images, volume copies) is
removed at the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import docker
import docker.errors
import pytest

from dockyard.contract import NAMING_CURRENT, session_environment_id
from dockyard.errors import Conflict, InvalidInput, NotFound
from dockyard.sessions import Sessions, snapshots
from dockyard.storage import disk_dir
from tests.support.engine import RUN_ID, is_ready, wait_for
from tests.support.harness_home import destroy_all, harness_sessions, sweep_tenant

pytestmark = [pytest.mark.docker, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
DOCKYARD = Path(sys.executable).with_name("dockyard")
TENANT = f"fk{RUN_ID[:8]}"
OTHER = f"fo{RUN_ID[:8]}"
TOOL = "/usr/local/bin/forktool"


def _sweep(client: docker.DockerClient) -> None:
    sweep_tenant(client, TENANT)
    for image in client.images.list(filters={"label": f"{snapshots.LABEL_NAMESPACE}={TENANT}"}):
        with contextlib.suppress(docker.errors.APIError):
            client.images.remove(image.id, force=True)
    shutil.rmtree(f"{snapshots.SNAPSHOTS_DIR}/{TENANT}", ignore_errors=True)


@pytest.fixture(scope="module")
def sessions(
    docker_client: docker.DockerClient, core_image: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Sessions]:
    base = tmp_path_factory.mktemp("fork")
    with harness_sessions(base, core_image, {"healthcheck": {"interval": "5s"}}) as api:
        try:
            yield api
        finally:
            destroy_all(api, TENANT)
            for snapshot in api.snapshots(TENANT):
                with contextlib.suppress(Exception):
                    api.remove_snapshot(snapshot.name, TENANT)
            _sweep(docker_client)


def _run(container: docker.models.containers.Container, script: str, user: str = "agent") -> str:
    result = container.exec_run(["bash", "-c", script], user=user)
    output = result.output.decode(errors="replace")
    assert result.exit_code == 0, f"{script!r} in {container.name}: {output}"
    return output.strip()


@pytest.fixture(scope="module")
def parent(
    sessions: Sessions, docker_client: docker.DockerClient, tmp_path_factory: pytest.TempPathFactory
) -> docker.models.containers.Container:
    project = tmp_path_factory.mktemp("fork-project")
    manifest = sessions.create(
        {"sessionId": "parent", "cwd": str(project), "backend": "claude", "tenant": TENANT}
    )
    container = docker_client.containers.get(manifest["container"]["id"])
    wait_for(lambda: is_ready(container), 90, what="parent ready")
    # A package in the container layer (root, as an image build would), files in the
    # workspace and home, and an SSH host key of its own in its config volume.
    _run(container, f"printf '#!/bin/sh\\necho forktool 1.0\\n' > {TOOL}; chmod 755 {TOOL}", "root")
    _run(
        container,
        "echo parent > /workspace/parent.txt; mkdir -p ~/.local; echo home > ~/.local/marker; "
        "head -c 1048576 /dev/urandom > /workspace/blob; sha256sum /workspace/blob > /tmp/sum; "
        "mkdir -p /config/ssh; echo KEY > /config/ssh/ssh_host_ed25519_key",
    )
    return container


def test_a_fork_has_the_files_and_packages_and_an_identity_of_its_own(
    sessions: Sessions,
    docker_client: docker.DockerClient,
    parent: docker.models.containers.Container,
) -> None:
    before = sessions.get("parent", TENANT)
    manifest = sessions.fork("parent", "child", TENANT)
    assert manifest["sessionId"] == "child"
    child = docker_client.containers.get(manifest["container"]["id"])
    wait_for(lambda: is_ready(child), 90, what="child ready")
    parent.reload()
    assert parent.status == "running", "the parent is running again after the snapshot"

    assert _run(child, "forktool") == "forktool 1.0"
    assert _run(child, "cat /workspace/parent.txt ~/.local/marker") == "parent\nhome"
    assert _run(child, "sha256sum /workspace/blob") == _run(parent, "cat /tmp/sum")
    assert _run(child, "test ! -e /config/ssh/ssh_host_ed25519_key && echo none") == "none"
    assert _run(child, "hostname; echo $DOCKYARD_SESSION_ID") == "child\nchild"
    assert child.labels["dockyard.session"] == "child"
    assert child.labels["dockyard.tenant"] == TENANT
    assert child.id != parent.id
    networks = set(child.attrs["NetworkSettings"]["Networks"])
    assert networks.isdisjoint(parent.attrs["NetworkSettings"]["Networks"])
    assert child.image.labels[snapshots.LABEL_OF] == "parent"
    assert {m["hostPort"] for m in manifest["container"]["portMappings"]}.isdisjoint(
        m["hostPort"] for m in before["container"]["portMappings"]
    )

    # Writes on either side never reach the other: volumes and the container layer.
    _run(child, "echo child > /workspace/child.txt; echo c >> /workspace/parent.txt")
    _run(child, "echo c > /usr/local/bin/child-only", "root")
    _run(parent, "echo later > /workspace/later.txt; echo p > ~/.local/parent-only")
    assert (
        _run(parent, "ls /workspace/child.txt /usr/local/bin/child-only 2>&1 || true").count(
            "No such file"
        )
        == 2
    )
    assert _run(parent, "cat /workspace/parent.txt") == "parent"
    assert (
        _run(child, "ls /workspace/later.txt ~/.local/parent-only 2>&1 || true").count(
            "No such file"
        )
        == 2
    )


def test_snapshots_are_named_listed_tenant_scoped_and_removed(
    sessions: Sessions,
    docker_client: docker.DockerClient,
    parent: docker.models.containers.Container,
) -> None:
    for hostile in ("../etc", "a/b", "x" * 64, "-x", "s-broker", ""):
        with pytest.raises(InvalidInput) as refused:
            sessions.snapshot("parent", hostile, TENANT)
        assert refused.value.problems[0].startswith("snapshot: "), refused.value.problems
        assert "is not allowed (allowed: " in refused.value.problems[0]
    with pytest.raises(NotFound):
        sessions.snapshot("parent", "theirs", OTHER)
    with pytest.raises(NotFound):
        sessions.fork("parent", "theirs", OTHER)

    taken = sessions.snapshot("parent", "base", TENANT)
    assert (taken.name, taken.session, taken.tenant, taken.kind) == (
        "base", "parent", TENANT, "snapshot"
    )  # fmt: skip
    assert taken.volumes == ["workspace", "config", "home"]
    assert os.path.isfile(f"{snapshots.SNAPSHOTS_DIR}/{TENANT}/base/workspace.img")
    with pytest.raises(Conflict, match="snapshot 'base' exists"):
        sessions.snapshot("parent", "base", TENANT)
    names = {(s.name, s.kind) for s in sessions.snapshots(TENANT)}
    assert ("base", "snapshot") in names
    assert ("child", "fork") in names
    assert [s.name for s in sessions.snapshots(OTHER)] == []
    listed = subprocess.run(
        [str(DOCKYARD), "snapshot", "ls", "--tenant", TENANT, "--json"],
        env={**os.environ, "DOCKYARD_STATE_DIR": str(sessions.where.state),
             "DOCKYARD_CONFIG": str(sessions.where.config_file), "PYTHONPATH": str(REPO)},
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    assert {r["name"] for r in json.loads(listed.stdout)} == {"base", "child"}
    with pytest.raises(NotFound):
        sessions.remove_snapshot("base", OTHER)
    with pytest.raises(NotFound):
        sessions.fork("parent", "x", TENANT, snapshot="nothing")

    # Written after the snapshot: not in a fork made from it.
    _run(parent, "echo after > /workspace/after-snapshot.txt")
    manifest = sessions.fork("parent", "second", TENANT, snapshot="base")
    second = docker_client.containers.get(manifest["container"]["id"])
    assert _run(second, "cat /workspace/parent.txt; forktool") == "parent\nforktool 1.0"
    assert _run(second, "test ! -e /workspace/after-snapshot.txt && echo absent") == "absent"
    with pytest.raises(Conflict, match="is the image of session"):
        sessions.remove_snapshot("base", TENANT)

    sessions.destroy("second", TENANT)
    assert not os.path.exists(disk_dir(session_environment_id(TENANT, "second", NAMING_CURRENT)))
    removed = sessions.remove_snapshot("base", TENANT)
    assert removed.name == "base"
    assert not os.path.exists(f"{snapshots.SNAPSHOTS_DIR}/{TENANT}/base")
    assert "base" not in {s.name for s in sessions.snapshots(TENANT)}
    with pytest.raises(docker.errors.ImageNotFound):
        docker_client.images.get(snapshots.image_tag(TENANT, "base"))
