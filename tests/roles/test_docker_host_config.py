"""docker_host's daemon.json merge on this machine, without touching its engine: the
role's configure tasks against a daemon.json in a temporary directory (the handlers that
would restart an engine are told one was just started)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from tests.support.ansible import LOCAL, PlaybookRun, run_playbook

HOST_OWN = {
    "data-root": "/srv/engine",
    "registry-mirrors": ["https://mirror.example.internal"],
    "runtimes": {"nvidia": {"path": "nvidia-container-runtime", "runtimeArgs": []}},
}


def configure(tmp_path: Path, **variables: Any) -> PlaybookRun:
    playbook = tmp_path / "configure.yml"
    playbook.write_text(
        yaml.safe_dump(
            [
                {
                    "hosts": "localhost",
                    "gather_facts": False,
                    "tasks": [
                        {
                            "name": "Merge daemon.json",
                            "ansible.builtin.include_role": {
                                "name": "docker_host",
                                "tasks_from": "configure",
                            },
                        }
                    ],
                }
            ]
        )
    )
    return run_playbook(
        str(playbook),
        inventory="localhost,",
        connection="local",
        extra_vars={
            **LOCAL,
            "docker_host_daemon_json_path": str(tmp_path / "daemon.json"),
            "docker_host_daemon_record_path": str(tmp_path / "record.json"),
            # No engine is restarted or signalled: as if one had just been started.
            "docker_host_started": {"changed": True},
            **variables,
        },
        check=False,
    )


def daemon(tmp_path: Path) -> dict[str, Any]:
    return dict(json.loads((tmp_path / "daemon.json").read_text()))


def test_the_hosts_own_keys_stay_and_the_roles_are_merged(tmp_path: Path) -> None:
    (tmp_path / "daemon.json").write_text(json.dumps(HOST_OWN))
    first = configure(tmp_path, docker_host_gvisor=True, docker_host_gvisor_network="host")
    assert first.rc == 0, first.output[-3000:]
    merged = daemon(tmp_path)
    assert merged["data-root"] == HOST_OWN["data-root"]
    assert merged["registry-mirrors"] == HOST_OWN["registry-mirrors"]
    # The host's runtime stays beside the one the role registers.
    assert merged["runtimes"]["nvidia"] == HOST_OWN["runtimes"]["nvidia"]
    assert merged["runtimes"]["runsc"]["path"] == "/usr/bin/runsc"
    assert merged["live-restore"] is True
    assert merged["log-opts"] == {"max-size": "10m", "max-file": "3"}
    # Host-wide defaults dockyard's containers do not need are opt-in.
    assert "default-ulimits" not in merged
    again = configure(tmp_path, docker_host_gvisor=True, docker_host_gvisor_network="host")
    assert again.changed() == {"localhost": 0}, again.output[-3000:]


def test_opt_in_defaults_come_and_go_with_their_variable(tmp_path: Path) -> None:
    (tmp_path / "daemon.json").write_text(json.dumps(HOST_OWN))
    assert configure(tmp_path, docker_host_default_nofile=True).rc == 0
    assert daemon(tmp_path)["default-ulimits"] == {
        "nofile": {"Name": "nofile", "Soft": 1024, "Hard": 2048}
    }
    # Turned off again: the role removes what it wrote, and only that.
    assert configure(tmp_path).rc == 0
    after = daemon(tmp_path)
    assert "default-ulimits" not in after
    assert after["data-root"] == HOST_OWN["data-root"]


def test_a_managed_key_someone_else_set_is_reported_not_replaced(tmp_path: Path) -> None:
    own = {**HOST_OWN, "log-opts": {"max-size": "50m", "max-file": "3"}, "live-restore": False}
    (tmp_path / "daemon.json").write_text(json.dumps(own))
    run = configure(tmp_path)
    assert run.rc != 0
    output = " ".join(run.output.split())  # the messages as one line, however wrapped
    assert (
        'log-opts is {"max-size": "50m", "max-file": "3"} in place, the role would set '
        '{"max-size": "10m", "max-file": "3"}'
    ) in output
    assert "live-restore is false in place, the role would set true" in output
    assert daemon(tmp_path) == own
    # Named through the role's variables, the values in place are the role's own.
    kept = configure(tmp_path, docker_host_live_restore=False, docker_host_log_max_size="50m")
    assert kept.rc == 0, kept.output[-3000:]
    assert daemon(tmp_path) == {
        **own,
        "log-driver": "json-file",
        "default-address-pools": [{"base": "172.16.0.0/12", "size": 24}],
    }
