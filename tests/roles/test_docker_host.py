"""docker_host on this machine: .ci/run prepares CI's engine with the role; this reruns it
and checks it is idempotent and its configuration is in effect."""

from __future__ import annotations

import json
import os
from pathlib import Path

import docker
import pytest

from tests.support.ansible import LOCAL, run_playbook

DAEMON_JSON = Path("/etc/docker/daemon.json")
RECORD = Path("/etc/docker/dockyard-daemon-keys.json")

pytestmark = [
    pytest.mark.docker,
    pytest.mark.skipif(
        os.environ.get("DOCKYARD_HOST_ROLE_TEST") != "1",
        reason="reconfigures this machine's own Docker engine; .ci/run sets DOCKYARD_HOST_ROLE_TEST=1",
    ),
]


def test_second_run_changes_nothing_and_config_is_live(docker_client: docker.DockerClient) -> None:
    # The same variables as the run that prepared this host (.ci/run): with gVisor where
    # the engine has it registered, so the second run is a true rerun.
    gvisor = "runsc" in (docker_client.info().get("Runtimes") or {})
    before = json.loads(DAEMON_JSON.read_text())
    run = run_playbook(
        "docker-host.yml",
        inventory="localhost,",
        connection="local",
        extra_vars={
            **LOCAL,
            "docker_host_bootstrap_base_image": True,
            "docker_host_gvisor": gvisor,
        },
    )
    assert run.changed() == {"localhost": 0}, run.output[-3000:]
    daemon = json.loads(DAEMON_JSON.read_text())
    record = json.loads(RECORD.read_text())
    runtimes = daemon.pop("runtimes", {})
    if gvisor:
        assert runtimes["runsc"]["path"] == "/usr/bin/runsc"
        assert "--platform=ptrace" in runtimes["runsc"]["runtimeArgs"]
    else:
        assert not any(path.startswith("runtimes/") for path in record)
    # What the role manages, and nothing else: a host-wide nofile default is opt-in
    # (docker_host_default_nofile), so it is not among the role's keys here.
    managed = {key: daemon[key] for key in record if "/" not in key}
    assert managed == {
        "default-address-pools": [{"base": "172.16.0.0/12", "size": 24}],
        "live-restore": True,
        "log-driver": "json-file",
        "log-opts": {"max-file": "3", "max-size": "10m"},
    }
    # Keys the role did not write (a machine's own default-ulimits, data-root...) stay as
    # they were before the run.
    assert {k: v for k, v in daemon.items() if k not in record} == {
        k: v for k, v in before.items() if k not in record and k != "runtimes"
    }
    info = docker_client.info()
    assert info["LiveRestoreEnabled"] is True
    assert info["LoggingDriver"] == "json-file"
    docker_client.images.get("debian:bookworm-slim")


def test_bad_variables_fail_before_any_change() -> None:
    run = run_playbook(
        "docker-host.yml",
        inventory="localhost,",
        connection="local",
        extra_vars={
            **LOCAL,
            "docker_host_package_source": "snap",
            "docker_host_log_max_file": "many",
        },
        check=False,
    )
    assert run.rc != 0
    assert (
        "value of docker_host_package_source must be one of: distro, docker, got: snap"
        in run.output
    )
    assert "docker_host_log_max_file" in run.output
    assert run.changed() == {"localhost": 0}
