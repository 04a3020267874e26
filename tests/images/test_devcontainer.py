"""The dev container template (templates/devcontainer/) with the devcontainer CLI on the
local engine: `devcontainer up` reaches the entrypoint's ready marker, `devcontainer exec`
runs the agent CLI, the container has dockyard's limits and hardening, and stopping it
writes a checkpoint. Nothing is pulled or built: the CLI runs the core image tests build.

One labelled check per promise; everything the CLI created is removed, even on failure.
"""

from __future__ import annotations

import calendar
import contextlib
import io
import json
import os
import re
import subprocess
import tarfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest

from tests.support import figures
from tests.support.engine import LABELS, TEST_LABEL, require_docker
from tests.support.images import REPO

pytestmark = [pytest.mark.docker, pytest.mark.slow]

CLI = REPO / ".venv" / "node-tools" / "node_modules" / ".bin" / "devcontainer"
TEMPLATE = REPO / "templates" / "devcontainer" / "devcontainer.json"
TEMPLATE_IMAGE = "dockyard-core:local"
AGENT_UID = 1000
UP_TIMEOUT_S = 300


def read_template() -> dict[str, Any]:
    """devcontainer.json allows // comments; the template keeps them on lines of their own."""
    lines = TEMPLATE.read_text(encoding="utf-8").splitlines()
    return json.loads("\n".join(line for line in lines if not line.lstrip().startswith("//")))


@dataclass
class DevContainer:
    workspace: Path
    id_labels: list[str]
    up: dict[str, Any]
    up_seconds: float
    container: Any

    def exec(self, *command: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """`devcontainer exec` of ``command`` (the options go before it: after it, they
        would be the command's)."""
        id_args = [arg for label in self.id_labels for arg in ("--id-label", label)]
        return subprocess.run(
            [str(CLI), "exec", "--workspace-folder", str(self.workspace), *id_args, *command],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )


def _remove(client: docker.DockerClient, selector: str) -> None:
    """The CLI's container and the named volumes it mounted; nothing else."""
    for container in client.containers.list(all=True, filters={"label": selector}):
        volumes = [m["Name"] for m in container.attrs["Mounts"] if m["Type"] == "volume"]
        container.remove(force=True)
        for name in volumes:
            with contextlib.suppress(docker.errors.NotFound):
                client.volumes.get(name).remove(force=True)


@pytest.fixture(scope="module")
def devcontainer(
    docker_client: docker.DockerClient, core_image: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DevContainer]:
    if not CLI.exists():
        message = f"the devcontainer CLI is not installed at {CLI}: run `make setup-dev`"
        if require_docker():
            pytest.fail(message)
        pytest.skip(message)
    workspace = tmp_path_factory.mktemp("project")
    (workspace / "README.md").write_text("a project opened in a dockyard dev container\n")
    config = read_template()
    # The test's own build of images/core, in place of `make image`'s tag.
    assert config["image"] == TEMPLATE_IMAGE
    config["image"] = core_image
    (workspace / ".devcontainer").mkdir()
    (workspace / ".devcontainer" / "devcontainer.json").write_text(json.dumps(config, indent=2))
    if os.geteuid() == 0:
        # The agent (uid 1000) works in the bind-mounted project, as on a developer's
        # machine where the user is uid 1000.
        for path in (workspace, *workspace.rglob("*")):
            os.chown(path, AGENT_UID, AGENT_UID)
    run_label = f"{TEST_LABEL}={LABELS[TEST_LABEL]}"
    own_label = f"dockyard.devcontainer-test={uuid.uuid4().hex[:12]}"
    started = time.monotonic()
    result = subprocess.run(
        [
            str(CLI),
            "up",
            "--workspace-folder",
            str(workspace),
            "--id-label",
            run_label,
            "--id-label",
            own_label,
            "--log-level",
            "debug",
        ],
        capture_output=True,
        text=True,
        timeout=UP_TIMEOUT_S,
        check=False,
    )
    up_seconds = time.monotonic() - started
    try:
        assert result.returncode == 0, (
            f"devcontainer up failed ({result.returncode}):\n{result.stdout[-3000:]}\n"
            f"{result.stderr[-5000:]}"
        )
        outcome = json.loads(result.stdout.strip().splitlines()[-1])
        container = docker_client.containers.get(outcome["containerId"])
        yield DevContainer(workspace, [run_label, own_label], outcome, up_seconds, container)
    finally:
        _remove(docker_client, own_label)


def test_image_carries_devcontainer_metadata(
    docker_client: docker.DockerClient, core_image: str
) -> None:
    labels = docker_client.images.get(core_image).labels
    metadata = json.loads(labels["devcontainer.metadata"])
    merged = {k: v for entry in metadata for k, v in entry.items()}
    assert merged["remoteUser"] == "agent"
    assert merged["overrideCommand"] is False, "the entrypoint must run, not a sleep"
    assert merged["updateRemoteUserUID"] is False
    assert "no-new-privileges:true" in merged["securityOpt"]


def test_up_reaches_the_ready_marker(devcontainer: DevContainer) -> None:
    up = devcontainer.up
    assert up["outcome"] == "success"
    assert up["remoteUser"] == "agent"
    assert up["remoteWorkspaceFolder"] == "/workspace"
    container = devcontainer.container
    ready = container.exec_run(["cat", "/tmp/ready"], user="agent")
    assert ready.exit_code == 0, "no ready marker after `devcontainer up` returned"
    # The entrypoint's own start-to-ready, from its marker (ISO time) and the engine's start.
    marker = ready.output.decode().strip()
    started_at = container.attrs["State"]["StartedAt"]
    entrypoint_s = _iso(marker) - _iso(started_at)
    figures.FIGURES["devcontainer_up_to_ready_s"] = round(devcontainer.up_seconds, 2)
    figures.FIGURES["devcontainer_start_to_ready_marker_s"] = round(entrypoint_s, 3)
    print(
        f"devcontainer: `up` to ready {devcontainer.up_seconds:.2f} s; container start to "
        f"ready marker {entrypoint_s:.3f} s (2 shared cores: noisy)"
    )
    assert 0 <= entrypoint_s < 60


def _iso(timestamp: str) -> float:
    """Seconds since the epoch of an RFC 3339 time (nanoseconds cut to microseconds)."""
    match = re.fullmatch(r"(.*T\d\d:\d\d:\d\d)(?:\.(\d+))?Z", timestamp.strip())
    assert match, timestamp
    base = calendar.timegm(time.strptime(match.group(1), "%Y-%m-%dT%H:%M:%S"))
    return base + float(f"0.{match.group(2) or 0}")


def test_the_entrypoint_runs_as_pid_one_with_its_tmux_session(devcontainer: DevContainer) -> None:
    container = devcontainer.container
    cmdline = container.exec_run(["cat", "/proc/1/cmdline"]).output.replace(b"\0", b" ")
    assert b"dockyard-entrypoint" in cmdline, cmdline
    session = container.exec_run(["tmux", "has-session", "-t", "main"], user="agent")
    assert session.exit_code == 0, session.output


def test_exec_runs_claude(devcontainer: DevContainer, docker_client: docker.DockerClient) -> None:
    result = devcontainer.exec("claude", "--version")
    assert result.returncode == 0, result.stdout + result.stderr
    pinned = docker_client.images.get(devcontainer.container.image.id).labels[
        "dockyard.claude-code.version"
    ]
    assert pinned in result.stdout, result.stdout
    whoami = devcontainer.exec("id", "-u")
    assert whoami.stdout.strip() == str(AGENT_UID)


def test_container_has_dockyards_limits_and_hardening(devcontainer: DevContainer) -> None:
    host = devcontainer.container.attrs["HostConfig"]
    checks = {
        "capabilities dropped": host["CapDrop"] == ["ALL"] and not host.get("CapAdd"),
        "no-new-privileges": "no-new-privileges:true" in (host.get("SecurityOpt") or []),
        "not privileged": host["Privileged"] is False,
        "pids limit 1000": host["PidsLimit"] == 1000,
        "memory 8 GiB": host["Memory"] == 8 * 1024**3,
        "no swap on top": host["MemorySwap"] == host["Memory"],
        "cpu quota 4 CPUs": (host["CpuPeriod"], host["CpuQuota"]) == (100000, 400000),
        "nofile 1024/2048": {"Name": "nofile", "Soft": 1024, "Hard": 2048}
        in (host.get("Ulimits") or []),
        "user uid 1000": devcontainer.container.attrs["Config"]["User"] in ("1000:1000", "agent"),
    }
    problems = [name for name, ok in checks.items() if not ok]
    assert not problems, f"{problems}\nHostConfig: {json.dumps(host, indent=1)[:3000]}"


def test_mounts_config_checkpoints_and_the_project(devcontainer: DevContainer) -> None:
    mounts = {m["Destination"]: m for m in devcontainer.container.attrs["Mounts"]}
    for target in ("/config", "/checkpoints"):
        assert mounts[target]["Type"] == "volume", mounts.get(target)
    assert mounts["/workspace"]["Type"] == "bind"
    assert Path(mounts["/workspace"]["Source"]).resolve() == devcontainer.workspace.resolve()
    listing = devcontainer.container.exec_run(["ls", "/workspace"], user="agent").output
    assert b"README.md" in listing


def test_nothing_was_pulled_or_built(
    devcontainer: DevContainer, docker_client: docker.DockerClient, core_image: str
) -> None:
    # The CLI would build a derived image to change the user's uid or add features.
    assert devcontainer.container.image.id == docker_client.images.get(core_image).id


def test_stop_writes_a_checkpoint(
    devcontainer: DevContainer, docker_client: docker.DockerClient, core_image: str
) -> None:
    """Last in this module: it stops the container."""
    container = devcontainer.container
    container.stop(timeout=10)
    assert container.wait(timeout=30)["StatusCode"] == 0
    logs = container.logs().decode(errors="replace")
    assert re.search(r"checkpoint \S+ written", logs), logs[-2000:]
    volume = next(
        m["Name"] for m in container.attrs["Mounts"] if m["Destination"] == "/checkpoints"
    )
    # Copied out of a never-started helper: reading `cat`'s logs could lose the last line.
    helper = docker_client.containers.create(
        core_image,
        entrypoint=["true"],
        volumes={volume: {"bind": "/checkpoints", "mode": "ro"}},
        labels=LABELS,
        network_mode="none",
    )
    try:
        stream, _ = helper.get_archive("/checkpoints/devcontainer/latest/session.json")
        with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as archive:
            member = archive.extractfile("session.json")
            assert member is not None
            session = json.loads(member.read())
    finally:
        helper.remove(force=True)
    assert session["sessionId"] == "devcontainer"
    assert session["workspaceTarball"] == "written"
