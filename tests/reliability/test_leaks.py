"""Zero tolerance for secret leaks. A stack whose secrets hold canary values unique to
this run is realised and exercised (checkpoint on stop, restart, the playbooks that touch
environments); then every place a value could end up is searched for every canary. The
only allowed homes: the files in /run/secrets, the agent's own process environment (its
tmux session exports them) and the one upload input the harness hands the engine.

Playbooks scanned: environments.yml (agent_config, git_credentials — the token's path),
health.yml and refresh.yml (refresh carries /run/secrets into the new container).
docker-host.yml and site.yml configure the host and never read an environment's secret.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from tests.support.ansible import LOCAL, manifest_inventory, run_playbook
from tests.support.engine import exec_ok, is_ready, wait_for
from tests.support.hardening import assert_hardened
from tests.support.stacks import (
    CANARIES,
    RUNSC_PROC_ENVIRON_READABLE,
    Deployed,
    runsc_cannot,
)

pytestmark = [pytest.mark.docker, pytest.mark.slow]

NEEDLES = {name: value.encode() for name, value in CANARIES.items()}
SECRET_FILES = {f"run/secrets/{name}" for name in CANARIES}


@pytest.fixture(scope="module")
def stack(deploy: Any) -> Deployed:
    values = {
        "healthcheck": {"interval": "2s", "startPeriod": "2s"},
        "limits": {"cpus": 1, "memory": "512m"},
        "environments": [
            {
                "sessionId": "leak-claude",
                "ports": [3000],
                "env": {"APP_MODE": "scan"},
                "secrets": ["ANTHROPIC_API_KEY", "GITHUB_TOKEN"],
            },
            {
                "sessionId": "leak-codex",
                "backend": "codex",
                "secrets": ["OPENAI_API_KEY", "GITHUB_TOKEN"],
            },
        ],
    }
    deployed = deploy("leaks", values, CANARIES)
    deployed.wait_ready()
    # Stop (checkpoint written) and start again: the SIGTERM path is scanned too.
    for session in deployed.manifests:
        container = deployed.container(session)
        container.stop(timeout=10)
        container.start()
    deployed.wait_ready()
    return deployed


def hits(where: str, data: bytes) -> list[str]:
    return [f"{name} in {where}" for name, needle in NEEDLES.items() if needle in data]


def stream_hits(where: str, chunks: Iterable[bytes]) -> list[str]:
    """Search a byte stream without holding it: keep an overlap the size of a canary."""
    overlap = max(len(n) for n in NEEDLES.values())
    found: set[str] = set()
    tail = b""
    for chunk in chunks:
        window = tail + chunk
        found.update(hits(where, window))
        tail = window[-overlap:]
    return sorted(found)


def tar_members(chunks: Iterable[bytes]) -> Iterator[tuple[str, bytes]]:
    with tarfile.open(fileobj=io.BytesIO(b"".join(chunks)), mode="r|*") as archive:
        for member in archive:
            if member.isfile():
                handle = archive.extractfile(member)
                yield member.name, handle.read() if handle else b""


def test_the_scan_finds_a_planted_canary(
    stack: Deployed, docker_client: docker.DockerClient
) -> None:
    """The scan can fail: a canary written where it must not be is found."""
    # By name, not by the stack's state: the scan below refreshes the environments, and
    # this test must hold whichever runs first.
    container = docker_client.containers.get(f"dockyard-{stack.stack}-leak-codex")
    exec_ok(
        container,
        ["bash", "-c", 'printf "%s" "$(cat /run/secrets/OPENAI_API_KEY)" > /config/codex/oops'],
    )
    try:
        chunks, _ = container.get_archive("/config")
        planted = [h for name, data in tar_members(chunks) for h in hits(name, data)]
    finally:
        exec_ok(container, ["rm", "/config/codex/oops"])
    assert planted == ["OPENAI_API_KEY in config/codex/oops"]


# What another user in the container can see of processes.
OTHER_USER_VIEW = (
    "for p in /proc/[0-9]*; do cat $p/environ $p/cmdline; echo; done 2>/dev/null; ps auxeww"
)


@runsc_cannot(RUNSC_PROC_ENVIRON_READABLE)
def test_another_user_inside_sees_no_canary(
    stack: Deployed, docker_client: docker.DockerClient
) -> None:
    found: list[str] = []
    for session in stack.manifests:
        # By name: the scan below refreshes the environments, whichever runs first.
        container = docker_client.containers.get(f"dockyard-{stack.stack}-{session}")
        wait_for(lambda c=container: is_ready(c), 60, what=f"{session} ready")
        other = container.exec_run(["bash", "-c", OTHER_USER_VIEW], user="65534:65534")
        found += hits(f"process list/environ as uid 65534 in {container.name}", other.output)
    assert not found, "secret values leaked:\n  " + "\n  ".join(found)


def test_no_canary_in_the_images(stack: Deployed, docker_client: docker.DockerClient) -> None:
    """Every layer (docker save), the history and the inspect of the environments' images.
    Not re-run on gVisor (Makefile RUNSC_SKIP): the images are built before any
    environment runs and no runtime writes to an image, so runsc cannot change them."""
    found: list[str] = []
    # By name, not by the stack's state: the scan below refreshes the environments, and
    # this test must hold whichever runs first (a refresh keeps the image).
    containers = [
        docker_client.containers.get(f"dockyard-{stack.stack}-{s}") for s in stack.manifests
    ]
    for image_id in {c.image.id for c in containers}:
        image = docker_client.images.get(image_id)
        found += stream_hits(f"image {image.tags} layers", image.save(named=False))
        found += hits(f"image {image.tags} history", json.dumps(image.history()).encode())
        found += hits(f"image {image.tags} inspect", json.dumps(image.attrs).encode())
    assert not found, "secret values leaked:\n  " + "\n  ".join(found)


def test_no_canary_anywhere_it_must_not_be(
    stack: Deployed, docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    found: list[str] = []
    containers = {s: stack.container(s) for s in stack.manifests}
    for container in containers.values():
        assert_hardened(container)

    # The images: test_no_canary_in_the_images.
    for session, container in containers.items():
        container.reload()
        found += hits(f"docker inspect {container.name}", json.dumps(container.attrs).encode())
        found += hits(f"logs {container.name}", container.logs())
        found += hits(f"manifest file {session}", stack.manifest_file(session).read_bytes())
        # Files: config tree, workspace, checkpoints, home and /tmp — all but the secrets.
        for path in ("/config", "/workspace", "/checkpoints", "/home/agent", "/tmp", "/etc"):
            chunks, _ = container.get_archive(path)
            for name, data in tar_members(chunks):
                found += hits(f"{container.name}:{path} file {name}", data)
        # Everything else the container layer gained.
        for change in container.diff() or []:
            path = change["Path"]
            if path.lstrip("/") in SECRET_FILES or path.startswith(("/proc", "/sys", "/dev")):
                continue
            try:
                chunks, stat = container.get_archive(path)
            except docker.errors.NotFound:
                continue
            if stat["mode"] & 0x80000000:  # a directory: its files are listed on their own
                continue
            for name, data in tar_members(chunks):
                found += hits(f"{container.name} layer file {path} ({name})", data)

    for network in docker_client.networks.list(filters={"label": f"dockyard.stack={stack.stack}"}):
        found += hits(f"docker inspect network {network.name}", json.dumps(network.attrs).encode())
    for volume in docker_client.volumes.list(filters={"label": f"dockyard.stack={stack.stack}"}):
        found += hits(f"docker inspect volume {volume.name}", json.dumps(volume.attrs).encode())
    found += hits("stack exports", json.dumps(stack.manifests).encode())
    found += hits("harness log", "\n".join(stack.state.log).encode())
    for realised in stack.state.resources.values():
        inputs = {k: v for k, v in realised.inputs.items() if k != "uploads"}
        found += hits(f"harness inputs {realised.name}", json.dumps(inputs, default=str).encode())
        found += hits(
            f"harness outputs {realised.name}", json.dumps(realised.outputs, default=str).encode()
        )

    # Playbooks, verbose, against these environments and this host.
    inventory = manifest_inventory(
        stack.cwd / "leaks.dockyard_manifests.yml", stack.manifest_file("x").parent
    )
    envs = run_playbook(
        "environments.yml",
        inventory=inventory,
        extra_vars={"agent_config_project_name": "scan"},
        args=["-v"],
    )
    found += hits("ansible-playbook environments.yml -v output", envs.output.encode())
    report = tmp_path / "report.json"
    hosts = tmp_path / "hosts.ini"
    variables = " ".join(f"{k}={v}" for k, v in LOCAL.items())
    hosts.write_text(f"[docker_hosts]\nlocalhost ansible_connection=local {variables}\n")
    for playbook in ("health.yml", "refresh.yml"):
        run = run_playbook(
            playbook,
            inventory=hosts,
            extra_vars={
                "env_health_label": f"dockyard.stack={stack.stack}",
                "env_health_report_file": str(report),
                # Past the age threshold at once: refresh.yml recreates both environments.
                "env_health_max_age_hours": 0.0001,
            },
            args=["-v"],
        )
        found += hits(f"ansible-playbook {playbook} -v output", run.output.encode())
    found += hits("health report file", report.read_bytes())
    # The refreshed containers got the secrets carried over (still only as files).
    for session in stack.manifests:
        fresh = docker_client.containers.get(f"dockyard-{stack.stack}-{session}")
        assert fresh.id != containers[session].id
        found += hits(f"docker inspect refreshed {fresh.name}", json.dumps(fresh.attrs).encode())
        wait_for(lambda c=fresh: is_ready(c), 60, what=f"refreshed {session} ready")
        found += hits(f"logs refreshed {fresh.name}", fresh.logs())
    claude = docker_client.containers.get(f"dockyard-{stack.stack}-leak-claude")
    exec_ok(claude, ["test", "-s", "/run/secrets/ANTHROPIC_API_KEY"])

    assert not found, "secret values leaked:\n  " + "\n  ".join(found)
