"""playbooks/site.yml on a real host stand-in: a container from the core image, reached
over the docker connection as root. docker_host is proven on the CI machine itself
(tests/roles/test_docker_host.py); here the other host roles run.

The roles compare the host with their desired state in one call and skip their change
tasks when nothing differs (roles/host_common); the drift test proves that skipping is
honest: whatever is changed by hand between two runs is put back by the next one."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest
import yaml
from docker.models.containers import Container

from dockyard.image import pinned_versions
from tests.support.ansible import REPO, PlaybookRun, TargetFleet, run_playbook
from tests.support.engine import exec_ok
from tests.support.scripts import load_script

pytestmark = [pytest.mark.docker, pytest.mark.slow]

VARIABLES = {
    "ansible_become": False,
    "agent_tooling_prefix": "/opt/site-test-agents",
    "agent_tooling_bin_dir": "/usr/local/sbin",
    "env_health_max_disk_pct": 70,
    "env_health_interval_minutes": 10,
    "idle_monitor_idle_minutes": 45,
    "idle_monitor_action": "poweroff",
    "idle_monitor_poweroff_command": ["/usr/local/bin/site-test-poweroff"],
}
ARGS = ["--skip-tags", "docker_host", "-e", "dockyard_docker_hosts=dockyard"]
LIBEXEC = "/usr/local/libexec/dockyard"
# What the health configuration must say with VARIABLES (the rest: the role's defaults).
HEALTH_CONFIG = {
    "label": "dockyard.managed=true",
    "report_file": "/var/lib/dockyard/health/report.json",
    "max_age_hours": 72.0,
    "max_disk_pct": 70.0,
    "max_memory_pct": 90.0,
    "max_failed_checks": 3,
    "refresh": False,
    "manifest_dir": "",
}
health_script = load_script("env_health", "dockyard-health.py")


@dataclass
class Prepared:
    host: Container
    inventory: Path
    first: PlaybookRun
    second: PlaybookRun

    def run(self) -> PlaybookRun:
        return run_playbook("site.yml", inventory=self.inventory, extra_vars=VARIABLES, args=ARGS)


@pytest.fixture(scope="module")
def prepared(
    docker_client: docker.DockerClient, core_image: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Prepared]:
    """One host, site.yml run twice; the tests of this module share it."""
    fleet = TargetFleet(docker_client, core_image, tmp_path_factory.mktemp("site"), [])
    try:
        (host,) = fleet.start()
        inventory = fleet.inventory([host])
        first = run_playbook("site.yml", inventory=inventory, extra_vars=VARIABLES, args=ARGS)
        second = run_playbook("site.yml", inventory=inventory, extra_vars=VARIABLES, args=ARGS)
        yield Prepared(host, inventory, first, second)
    finally:
        for container in fleet.containers:
            container.remove(force=True, v=True)


def sha1(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()  # noqa: S324 - a content id, as Ansible's


def assert_prepared(host: Container) -> None:
    """Everything site.yml promises on this host, read from the host itself."""
    versions = pinned_versions()
    found = exec_ok(
        host,
        [
            "bash",
            "-c",
            "/usr/local/sbin/claude --version 2>/dev/null; /usr/local/sbin/codex --version 2>/dev/null",
        ],
    )
    assert found.splitlines() == [
        f"{versions['CLAUDE_CODE_VERSION']} (Claude Code)",
        f"codex-cli {versions['CODEX_VERSION']}",
    ]
    assert exec_ok(host, ["readlink", "/usr/local/sbin/codex"]).strip() == (
        f"/opt/site-test-agents/codex/{versions['CODEX_VERSION']}/bin/codex"
    )

    health = json.loads(exec_ok(host, ["cat", "/etc/dockyard/health.json"]))
    # Every key the script reads (tests/unit/test_contracts.py pins which), these values.
    assert set(health) == set(health_script.DEFAULTS) - {"workspace"}
    assert {key: health[key] for key in HEALTH_CONFIG} == HEALTH_CONFIG
    idle = json.loads(exec_ok(host, ["cat", "/etc/dockyard/idle-monitor.json"]))
    assert (idle["idle_minutes"], idle["action"], idle["poweroff_command"]) == (
        45,
        "poweroff",
        ["/usr/local/bin/site-test-poweroff"],
    )
    # No systemd in the container: both run from cron, their output to syslog.
    cron = exec_ok(
        host, ["bash", "-c", "cat /etc/cron.d/dockyard-health /etc/cron.d/dockyard-idle-monitor"]
    )
    assert (
        f"*/10 * * * * root /usr/bin/python3 {LIBEXEC}/health-report --config /etc/dockyard/health.json"
        " 2>&1 | logger -t dockyard-health\n"
    ) in cron
    assert (
        f"* * * * * root /usr/bin/python3 {LIBEXEC}/idle-monitor --config /etc/dockyard/idle-monitor.json"
        " 2>&1 | logger -t dockyard-idle-monitor\n"
    ) in cron
    modes = exec_ok(
        host,
        ["bash", "-c", f"cd {LIBEXEC} && stat -c '%n %a %U' health-report idle-monitor dockyard"],
    )
    assert modes.splitlines() == [
        "health-report 755 root",
        "idle-monitor 755 root",
        "dockyard 755 root",
    ]
    # Beside the scripts, the package's host modules as host_common installs them: each the
    # repository's own file (its one home), root's and 0644; the retired single-file
    # library is gone.
    files = package_files()
    listing = exec_ok(
        host,
        ["bash", "-c", f"cd {LIBEXEC}/dockyard && stat -c '%n %a %U' {' '.join(files)}"
         f" && sha1sum {' '.join(files)} && ! test -e {LIBEXEC}/dockyard_host.py"],
    )  # fmt: skip
    assert listing.splitlines() == [f"{path} 644 root" for path in files] + [
        f"{sha1(REPO / 'components' / path)}  {path}" for path in files
    ]
    # The installed scripts run from where they are, with the package beside them, under
    # the host's python3 (which has no jsonschema: the stdlib validator is the one used).
    exec_ok(
        host,
        [
            "bash",
            "-c",
            f"python3 {LIBEXEC}/health-report --config /etc/dockyard/health.json --check-config"
            f" && python3 {LIBEXEC}/idle-monitor --config /etc/dockyard/idle-monitor.json --check-config"
            f' && cd / && python3 -c \'import sys; sys.path[:0] = ["{LIBEXEC}"];'
            ' from dockyard import host as h; assert h.VALIDATOR == "stdlib", h.VALIDATOR;'
            ' assert h.schema_path().parent.as_posix() == sys.path[0] + "/dockyard";'
            " assert h.__file__.startswith(sys.path[0])'",
        ],
    )


def package_files() -> list[str]:
    variables = yaml.safe_load((REPO / "roles" / "host_common" / "vars" / "main.yml").read_text())
    return list(variables["host_common_package_files"])


def test_site_playbook_prepares_a_host_and_is_idempotent(prepared: Prepared) -> None:
    host = prepared.host
    assert prepared.first.changed()[host.name] > 0
    assert prepared.second.changed() == {host.name: 0}, prepared.second.output[-4000:]
    assert_prepared(host)


# What an unchanged host costs: fact gathering and one comparison per role (the only
# round trips), the rest runs on the controller. A task added to this path is a cost on
# every run of every host: it belongs here only on purpose (benchmarks/ansible_site.py).
UNCHANGED_PATH = [
    "Gathering Facts",
    "Validate the variables of every role in this play",
    "Refuse unknown, malformed and out-of-range variables of these roles",
    "agent_tooling : Validating arguments against arg spec 'main'",
    # Each role checks its own values first (a role used alone is as strict as the
    # playbook); agent_tooling records its directory for its version defaults before.
    "agent_tooling : Record this role's directory",
    "host_common : Refuse malformed and out-of-range variables of the calling role",
    "agent_tooling : Fail on a platform without agent CLI builds",
    "agent_tooling : Decide the pinned state of the agent tooling",
    "host_common : Validating arguments against arg spec 'state'",
    # Every use of host_common checks the platform, and a scheduled one its interval
    # (a role used alone is as strict as the playbook): two asserts, no engine call.
    "host_common : Refuse an unsupported operating system",
    "host_common : Compare the host with the state this role manages",
    "env_health : Validating arguments against arg spec 'main'",
    "host_common : Refuse malformed and out-of-range variables of the calling role",
    "host_common : Validating arguments against arg spec 'main'",
    "host_common : Refuse an unsupported operating system",
    "host_common : Refuse a schedule interval cron cannot express",
    "host_common : Compare the host with the state this role manages",
    "idle_monitor : Validating arguments against arg spec 'main'",
    "host_common : Refuse malformed and out-of-range variables of the calling role",
    "host_common : Validating arguments against arg spec 'main'",
    "host_common : Refuse an unsupported operating system",
    "host_common : Refuse a schedule interval cron cannot express",
    "host_common : Compare the host with the state this role manages",
]


def test_a_second_run_compares_once_per_role_and_changes_nothing(prepared: Prepared) -> None:
    ran = [name.split(" - ")[0] for name in prepared.second.tasks_run()]
    assert ran == UNCHANGED_PATH, prepared.second.output[-6000:]


DRIFT = [
    "rm /usr/local/sbin/claude",
    "ln -sfn /bin/true /usr/local/sbin/codex",
    "echo '{}' > /etc/dockyard/health.json",
    f"chmod 0700 {LIBEXEC}/idle-monitor",
    f"echo '# edited' >> {LIBEXEC}/dockyard/host/engine.py",
    f"echo '# retired' > {LIBEXEC}/dockyard_host.py",
    f"rm {LIBEXEC}/dockyard/manifest.schema.json",
    "rm /etc/cron.d/dockyard-health",
    "chown nobody /etc/dockyard/idle-monitor.json",
]


def test_drift_between_runs_is_repaired(prepared: Prepared) -> None:
    host = prepared.host
    exec_ok(host, ["bash", "-euc", " && ".join(DRIFT)], user="root")
    repair = prepared.run()
    assert repair.changed()[host.name] > 0, repair.output[-4000:]
    assert_prepared(host)
    assert prepared.run().changed() == {host.name: 0}


def test_bad_role_variables_fail_before_any_change(fleet: TargetFleet) -> None:
    (host,) = fleet.start()
    inventory = fleet.inventory([host])
    run = run_playbook(
        "site.yml",
        inventory=inventory,
        extra_vars={
            **VARIABLES,
            "idle_monitor_action": "sleep",
            "env_health_max_failed_checks": "three",
        },
        args=ARGS,
        check=False,
    )
    assert run.rc != 0
    # Both roles' problems in one run, before the first role (agent_tooling) acted.
    assert (
        "value of idle_monitor_action must be one of: stop, pause, hibernate, poweroff, got: sleep"
        in run.output
    )
    assert "argument 'env_health_max_failed_checks' is of type" in run.output
    assert run.changed() == {host.name: 0}
    written = exec_ok(
        host,
        [
            "bash",
            "-c",
            "ls -d /etc/dockyard/health.json /etc/dockyard/idle-monitor.json /opt/site-test-agents"
            f" {LIBEXEC} 2>/dev/null | wc -l",
        ],
    )
    assert written.strip() == "0"
