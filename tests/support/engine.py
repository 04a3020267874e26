"""Access to the real Docker engine for tests, and cleanup of everything they create.

Every container, volume and network a test creates carries the label
``dockyard.test=<run id>``; :func:`remove_labelled` removes them all, so a failing test
leaves nothing behind once the session ends.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import socket
import subprocess
import time
import uuid
from collections.abc import Callable
from typing import Any

import docker
import docker.errors
import pytest
from docker.models.containers import Container

RUN_ID = uuid.uuid4().hex[:12]
TEST_LABEL = "dockyard.test"
LABELS = {TEST_LABEL: RUN_ID}


def require_docker() -> bool:
    """True when Docker-backed tests must fail instead of skipping (CI)."""
    return os.environ.get("DOCKYARD_REQUIRE_DOCKER") == "1"


def connect() -> docker.DockerClient:
    """A client for the engine at DOCKER_HOST; skips (or fails in CI) when none answers."""
    try:
        client = docker.from_env(timeout=300)
        client.ping()
    except Exception as exc:  # any transport error means "no engine here"
        reason = f"no Docker engine answers ({exc.__class__.__name__}: {exc})"
        if require_docker():
            pytest.fail(f"{reason}, and DOCKYARD_REQUIRE_DOCKER=1")
        pytest.skip(reason)
    return client


def unique_name(prefix: str) -> str:
    return f"dockyard-test-{prefix}-{uuid.uuid4().hex[:8]}"


def remove_volume(volume: Any) -> None:
    """Remove a volume the way destroy does: a bounded one (dockyard.storage mounts an ext4
    image on its directory and marks the directory beneath immutable) is unmounted and
    released first, so a sweep after a failed test leaves nothing behind."""
    mountpoint = (volume.attrs or {}).get("Mountpoint")
    if mountpoint and os.path.isdir(mountpoint):
        for _ in range(3):  # the bind of the directory and the image mounted on it
            if subprocess.run(["mountpoint", "-q", mountpoint], check=False).returncode != 0:
                break
            subprocess.run(["umount", "-l", mountpoint], capture_output=True, check=False)
        subprocess.run(["chattr", "-i", mountpoint], capture_output=True, check=False)
    volume.remove(force=True)


def remove_labelled(client: docker.DockerClient, run_id: str = RUN_ID) -> None:
    """Remove every container, then network and volume labelled with this test run."""
    selector = {"label": f"{TEST_LABEL}={run_id}"}
    for container in client.containers.list(all=True, filters=selector):
        container.remove(force=True, v=True)
    for network in client.networks.list(filters=selector):
        network.remove()
    for volume in client.volumes.list(filters=selector):
        with contextlib.suppress(docker.errors.APIError):
            remove_volume(volume)
    # Disk images whose environment's volumes a label sweep removed (dockyard.storage):
    # only those older than 10 minutes, so another run's create in flight is never touched.
    with contextlib.suppress(Exception):
        from dockyard import storage

        storage.prune()


READY_MARKER = "/tmp/ready"


def is_ready(container: Container) -> bool:
    """The entrypoint has finished: CLI checked, tmux session up, marker written."""
    return container.exec_run(["test", "-f", READY_MARKER]).exit_code == 0


def _utc(stamp: str) -> datetime.datetime:
    # The engine's RFC 3339 with nanoseconds (trailing zeros trimmed), or the marker's ms.
    day, _, fraction = stamp.rstrip("Z").partition(".")
    return datetime.datetime.fromisoformat(f"{day}.{(fraction + '000000')[:6]}+00:00")


def ready_since_start(container: Container) -> bool:
    """``container`` runs and the entrypoint of its current start has written the ready
    marker. The marker is in the container layer, so after a restart the previous start's
    is still there until the entrypoint removes it: only a marker written at or after
    this start counts."""
    container.reload()
    if container.status != "running":
        return False
    marker = container.exec_run(["cat", READY_MARKER])
    if marker.exit_code != 0:
        return False
    written = marker.output.decode(errors="replace").strip()
    started = _utc(container.attrs["State"]["StartedAt"])
    # The marker has milliseconds (truncated): compare at that precision.
    return _utc(written) >= started.replace(microsecond=started.microsecond // 1000 * 1000)


def restarted_and_ready(container: Container, restarts: int) -> bool:
    """The engine's restart policy restarted ``container`` at least ``restarts`` times and
    this start is ready (:func:`ready_since_start`)."""
    container.reload()
    return container.attrs["RestartCount"] >= restarts and ready_since_start(container)


def connects(address: str, port: int) -> bool:
    """A TCP connection to ``address``:``port`` is accepted within 2 s (for wait_for)."""
    try:
        with socket.create_connection((address, port), timeout=2):
            return True
    except OSError:
        return False


def wait_for(
    predicate: Callable[[], bool],
    timeout: float,
    interval: float = 0.1,
    what: str | Callable[[], str] = "",
) -> None:
    """Poll ``predicate`` until it is true; after ``timeout`` s fail the test with ``what``
    (a callable is evaluated then, so it can report the state at the time of failure)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    description = what() if callable(what) else what
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {description or predicate}")


def exec_ok(container: Container, cmd: list[str] | str, user: str = "") -> str:
    """Run ``cmd`` in ``container``; return its output, fail the test if it exits non-zero."""
    result = container.exec_run(cmd, user=user, demux=False)
    output = (result.output or b"").decode(errors="replace")
    assert result.exit_code == 0, f"{cmd!r} in {container.name} exited {result.exit_code}: {output}"
    return output


def health_status(container: Container) -> str:
    container.reload()
    return str(container.attrs["State"].get("Health", {}).get("Status", "none"))


def last_health_output(container: Container) -> str:
    container.reload()
    log = container.attrs["State"].get("Health", {}).get("Log") or []
    return str(log[-1]["Output"]).strip() if log else ""


def wait_healthy(container: Container, expected: str, timeout: float = 30) -> None:
    wait_for(
        lambda: health_status(container) == expected,
        timeout,
        interval=0.25,
        what=lambda: (
            f"{container.name} to become {expected} "
            f"(status {health_status(container)}, last check {last_health_output(container)!r})"
        ),
    )


def remove_image(client: docker.DockerClient, ref: str) -> None:
    with contextlib.suppress(docker.errors.ImageNotFound):
        client.images.remove(ref, force=True, noprune=False)
