"""playbooks/backup.yml (the workspace_backup role) on a host stand-in: a container from the
core image reached over the docker connection as root, as tests/roles/test_site_playbook.py
does. Everything the role promises is read back from the host; a second run changes
nothing; a bad repository is refused without printing it; the keys never reach the
playbook's output."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest
import yaml
from docker.models.containers import Container

from tests.support.ansible import REPO, PlaybookRun, TargetFleet, run_playbook
from tests.support.engine import exec_ok

pytestmark = [pytest.mark.docker, pytest.mark.slow]

KEY_ID = "AKIAROLETESTKEYID01"
SECRET = "role-test-secret-access-key-value"
REPOSITORY = "s3:https://s3.example.test/dockyard-ci/backups"
VARIABLES = {
    "ansible_become": False,
    "workspace_backup_repository": REPOSITORY,
    "workspace_backup_s3_access_key_id": KEY_ID,
    "workspace_backup_s3_secret_access_key": SECRET,
    "workspace_backup_interval_minutes": 30,
    "workspace_backup_keep_last": 12,
    "workspace_backup_read_data_subset": "5%",
}
ARGS = ["-e", "dockyard_docker_hosts=dockyard"]
COMMAND = "/usr/local/libexec/dockyard/workspace-backup"
LIBRARY = "/usr/local/libexec/dockyard"


def package_files() -> list[str]:
    variables = yaml.safe_load((REPO / "roles" / "host_common" / "vars" / "main.yml").read_text())
    return list(variables["host_common_package_files"])


@dataclass
class Prepared:
    host: Container
    inventory: Path
    first: PlaybookRun
    second: PlaybookRun


@pytest.fixture(scope="module")
def prepared(
    docker_client: docker.DockerClient, core_image: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Prepared]:
    fleet = TargetFleet(docker_client, core_image, tmp_path_factory.mktemp("backup-role"), [])
    try:
        (host,) = fleet.start()
        inventory = fleet.inventory([host])
        first = run_playbook("backup.yml", inventory=inventory, extra_vars=VARIABLES, args=ARGS)
        second = run_playbook("backup.yml", inventory=inventory, extra_vars=VARIABLES, args=ARGS)
        yield Prepared(host, inventory, first, second)
    finally:
        for container in fleet.containers:
            container.remove(force=True, v=True)


def test_the_host_has_restic_the_command_its_configuration_and_schedule(
    prepared: Prepared,
) -> None:
    host = prepared.host
    assert exec_ok(host, ["restic", "version"]).startswith("restic ")
    installed = exec_ok(host, ["cat", COMMAND])
    launcher = REPO / "roles" / "workspace_backup" / "files" / "dockyard-workspace-backup.py"
    assert installed == launcher.read_text()
    assert exec_ok(host, ["stat", "-c", "%a %U", COMMAND]).split() == ["755", "root"]
    # Beside it, the package's host modules (the engine, the command, the host library it
    # writes the audit trail with), each the repository's own file.
    for path in package_files():
        copy = exec_ok(host, ["cat", f"{LIBRARY}/dockyard/{path}"])
        assert copy == (REPO / "components" / path).read_text(), path
    config = json.loads(exec_ok(host, ["cat", "/etc/dockyard/workspace-backup.json"]))
    assert config == {
        "repository": REPOSITORY,
        "region": "",
        "credentials_dir": "/etc/dockyard/backup",
        "cache_dir": "/var/cache/dockyard/backup",
        "image": "debian:bookworm-slim",
        "restic": "/usr/bin/restic",
        "label": "dockyard.managed=true",
        "keep_last": 12,
        "keep_daily": 7,
        "keep_weekly": 4,
        "maintenance_hours": 24,
        "read_data_subset": "5%",
    }
    # The installed command, under the host's python3, accepts its configuration.
    exec_ok(
        host,
        ["/usr/bin/python3", COMMAND, "--config", "/etc/dockyard/workspace-backup.json",
         "--check-config"],
    )  # fmt: skip
    # No systemd in the container: cron, output to syslog.
    cron = exec_ok(host, ["cat", "/etc/cron.d/dockyard-workspace-backup"])
    assert (
        f"*/30 * * * * root /usr/bin/python3 {COMMAND} --config "
        "/etc/dockyard/workspace-backup.json run 2>&1 | logger -t dockyard-workspace-backup\n"
    ) in cron


def test_credentials_are_private_to_root_and_never_printed(prepared: Prepared) -> None:
    host = prepared.host
    assert exec_ok(host, ["stat", "-c", "%a %U:%G", "/etc/dockyard/backup"], "root").split() == [
        "700",
        "root:root",
    ]
    keys = "/etc/dockyard/backup/s3-credentials"
    assert exec_ok(host, ["stat", "-c", "%a %U:%G", keys], "root").split() == ["600", "root:root"]
    assert exec_ok(host, ["cat", keys], "root") == (
        f"[default]\naws_access_key_id = {KEY_ID}\naws_secret_access_key = {SECRET}\n"
    )
    # The agent user of the host stand-in cannot even list the directory.
    denied = host.exec_run(["ls", "/etc/dockyard/backup"], user="1000")
    assert denied.exit_code != 0
    for run in (prepared.first, prepared.second):
        assert SECRET not in run.output


def test_a_second_run_changes_nothing(prepared: Prepared) -> None:
    assert prepared.first.changed()[prepared.host.name] > 0
    assert prepared.second.changed() == {prepared.host.name: 0}


def test_a_repository_with_a_key_in_it_is_refused_without_printing_it(prepared: Prepared) -> None:
    pasted = f"s3:https://{KEY_ID}:{SECRET}@s3.example.test/dockyard-ci"
    run = run_playbook(
        "backup.yml",
        inventory=prepared.inventory,
        extra_vars={**VARIABLES, "workspace_backup_repository": pasted},
        args=ARGS,
        check=False,
    )
    assert run.rc != 0
    assert f"workspace_backup_repository: <a value of {len(pasted)} characters> is not allowed" in (
        run.output
    )
    assert SECRET not in run.output
    config = json.loads(exec_ok(prepared.host, ["cat", "/etc/dockyard/workspace-backup.json"]))
    assert config["repository"] == REPOSITORY
