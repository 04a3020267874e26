"""health.yml and refresh.yml against real environments on this engine (R-HOST-3)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
from docker.models.containers import Container

from tests.support.agent_runner import secrets_tar
from tests.support.ansible import LOCAL, run_playbook
from tests.support.engine import LABELS, exec_ok, is_ready, unique_name, wait_for
from tests.support.stacks import Deployed

pytestmark = pytest.mark.docker

TOKEN = "ghp_health_canary_77aa"


@pytest.fixture(scope="module")
def stack(deploy: Any) -> Deployed:
    values = {
        "healthcheck": {"interval": "2s", "startPeriod": "3s"},
        "environments": [
            {"sessionId": "h-one", "limits": {"memory": "300m"}},
            {"sessionId": "h-two", "backend": "codex"},
        ],
    }
    return deploy("health", values)


@pytest.fixture
def filled(
    stack: Deployed, docker_client: docker.DockerClient, core_image: str
) -> Iterator[Container]:
    """An environment whose tmpfs workspace is over 80 % full, with data in its config
    volume and a secret file, labelled into the stack. One per test (a refresh replaces
    it), removed after the test whatever it became."""
    labels = {
        **LABELS,
        "dockyard.managed": "true",
        "dockyard.stack": stack.stack,
        "dockyard.session": "h-full",
    }
    volume = docker_client.volumes.create(unique_name("cfg"), labels=labels)
    container = docker_client.containers.create(
        core_image,
        name=f"dockyard-{stack.stack}-h-full",
        labels=labels,
        environment={"DOCKYARD_BACKEND": "claude"},
        tmpfs={"/workspace": "rw,size=4m,uid=1000,gid=1000"},
        volumes={volume.name: {"bind": "/config", "mode": "rw"}},
        mem_limit="256m",
        pids_limit=300,
        cap_drop=["ALL"],
        security_opt=["no-new-privileges:true"],
        restart_policy={"Name": "unless-stopped"},
    )
    container.put_archive("/", secrets_tar({"GITHUB_TOKEN": TOKEN}))
    container.start()
    wait_for(lambda: is_ready(container), 120, what="ready")
    exec_ok(
        container,
        [
            "bash",
            "-c",
            "echo keep-me > /config/env/notes.env && head -c 3800k /dev/zero > /workspace/fill",
        ],
    )
    try:
        yield container
    finally:
        for leftover in docker_client.containers.list(
            all=True, filters={"label": "dockyard.session=h-full", "name": container.name}
        ):
            leftover.remove(force=True)
        volume.remove(force=True)


@pytest.fixture(scope="module")
def inventory(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("health") / "hosts.ini"
    variables = " ".join(f"{k}={v}" for k, v in LOCAL.items())
    path.write_text(f"[docker_hosts]\nlocalhost ansible_connection=local {variables}\n")
    return path


def health_vars(stack: Deployed, report: Path) -> dict[str, Any]:
    return {
        "env_health_label": f"dockyard.stack={stack.stack}",
        "env_health_report_file": str(report),
    }


def docker_stats_mb(container: Container) -> float:
    stats = container.stats(stream=False)
    memory = stats["memory_stats"]
    cache = memory.get("stats", {}).get(
        "total_inactive_file", memory.get("stats", {}).get("inactive_file", 0)
    )
    return (memory["usage"] - cache) / 2**20


def test_health_report_matches_the_engine(
    stack: Deployed, filled: Container, inventory: Path, tmp_path: Path
) -> None:
    report_file = tmp_path / "report.json"
    run = run_playbook(
        "health.yml", inventory=inventory, extra_vars=health_vars(stack, report_file)
    )
    assert run.changed() == {"localhost": 0}
    report = json.loads(report_file.read_text())
    assert report["thresholds"] == {
        "max_age_hours": 72.0,
        "max_disk_pct": 80.0,
        "max_memory_pct": 90.0,
        "max_failed_checks": 3,
    }
    by_name = {env["name"]: env for env in report["environments"]}
    expected = {stack.container(s).name for s in stack.manifests} | {filled.name}
    assert set(by_name) == expected
    for name, env in by_name.items():
        container = stack.client.containers.get(name)
        assert env["id"] == container.id
        assert env["status"] == container.status == "running"
        assert env["memory_limit_mb"] == container.attrs["HostConfig"]["Memory"] / 2**20
        assert abs(env["memory_used_mb"] - docker_stats_mb(container)) < 8, (name, env)
        assert env["memory_pct"] == pytest.approx(
            100 * env["memory_used_mb"] / env["memory_limit_mb"], abs=0.1
        )
        assert 0 <= env["age_hours"] < 0.5
        df = exec_ok(container, ["df", "-P", "/workspace"]).splitlines()[-1].split()
        # Read a moment apart; a volume's disk is the engine's, shared with other writers.
        assert abs(env["disk_pct"] - float(df[4].rstrip("%"))) <= 1, (name, env, df)
    full = by_name[filled.name]
    assert re.fullmatch(r"disk 9\d% > 80%", full["refresh_reasons"][0]), full
    assert full["action"] == "reported"
    for name in expected - {filled.name}:
        assert by_name[name]["refresh_reasons"] == []
    # The table printed by the play has a row per environment (the callback may fold lines).
    flat = " ".join(run.output.split())
    assert re.search(
        rf"{re.escape(filled.name)}\s+running\s+\S+\s+0\.\d\s+.*disk 9\d% > 80%\s+reported",
        flat,
    ), run.output[-3000:]


def test_refresh_recreates_only_what_is_past_a_threshold(
    stack: Deployed, filled: Container, inventory: Path, tmp_path: Path
) -> None:
    before = {stack.container(s).name: stack.container(s).id for s in stack.manifests}
    run = run_playbook(
        "refresh.yml", inventory=inventory, extra_vars=health_vars(stack, tmp_path / "r.json")
    )
    assert run.changed() == {"localhost": 1}
    assert TOKEN not in run.output
    fresh = stack.client.containers.get(filled.name)
    assert fresh.id != filled.id
    with pytest.raises(docker.errors.NotFound):
        filled.reload()
    wait_for(
        lambda: is_ready(fresh),
        120,
        what="refreshed env ready",
    )
    assert exec_ok(fresh, ["cat", "/config/env/notes.env"]).strip() == "keep-me"
    assert (
        exec_ok(fresh, ["stat", "-c", "%a %U", "/run/secrets/GITHUB_TOKEN"]).strip() == "400 agent"
    )
    assert exec_ok(fresh, ["cat", "/run/secrets/GITHUB_TOKEN"]) == TOKEN
    host = fresh.attrs["HostConfig"]
    assert (host["Memory"], host["PidsLimit"], host["CapDrop"]) == (256 * 2**20, 300, ["ALL"])
    assert {stack.container(s).name: stack.container(s).id for s in stack.manifests} == before
    report = json.loads((tmp_path / "r.json").read_text())
    actions = {env["name"]: env["action"] for env in report["environments"]}
    assert actions[filled.name] == f"refreshed as {fresh.id[:12]}"
