"""playbooks/site.yml on a real host stand-in: a container from the core image, reached
over the docker connection as root. docker_host is proven on the CI machine itself
(tests/roles/test_docker_host.py); here the other host roles run twice."""

from __future__ import annotations

import json

import pytest

from tests.roles.conftest import TargetFleet, run_playbook
from tests.support.engine import exec_ok

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


def test_site_playbook_prepares_a_host_and_is_idempotent(fleet: TargetFleet) -> None:
    (host,) = fleet.start()
    inventory = fleet.inventory([host])
    args = ["--skip-tags", "docker_host", "-e", "dockyard_docker_hosts=dockyard"]
    first = run_playbook("site.yml", inventory=inventory, extra_vars=VARIABLES, args=args)
    second = run_playbook("site.yml", inventory=inventory, extra_vars=VARIABLES, args=args)
    assert first.changed()[host.name] > 0
    assert second.changed() == {host.name: 0}, second.output[-4000:]

    versions = exec_ok(
        host,
        [
            "bash",
            "-c",
            "/usr/local/sbin/claude --version 2>/dev/null; /usr/local/sbin/codex --version 2>/dev/null",
        ],
    )
    assert versions.splitlines() == ["2.1.330 (Claude Code)", "codex-cli 0.169.0"]
    assert (
        exec_ok(host, ["readlink", "/usr/local/sbin/codex"]).strip()
        == "/opt/site-test-agents/codex/0.169.0/bin/codex"
    )

    health = json.loads(exec_ok(host, ["cat", "/etc/dockyard/health.json"]))
    assert health == {
        "label": "dockyard.managed=true",
        "report_file": "/var/lib/dockyard/health/report.json",
        "max_age_hours": 72.0,
        "max_disk_pct": 70.0,
        "max_memory_pct": 90.0,
        "max_failed_checks": 3,
        "refresh": False,
        "manifest_dir": "",
    }
    idle = json.loads(exec_ok(host, ["cat", "/etc/dockyard/idle-monitor.json"]))
    assert (idle["idle_minutes"], idle["action"], idle["poweroff_command"]) == (
        45,
        "poweroff",
        ["/usr/local/bin/site-test-poweroff"],
    )
    # No systemd in the container: both run from cron.
    cron = exec_ok(
        host, ["bash", "-c", "cat /etc/cron.d/dockyard-health /etc/cron.d/dockyard-idle-monitor"]
    )
    assert (
        "*/10 * * * * root /usr/bin/python3 /usr/local/libexec/dockyard/health-report --config /etc/dockyard/health.json"
        in cron
    )
    assert (
        "* * * * * root /usr/bin/python3 /usr/local/libexec/dockyard/idle-monitor --config /etc/dockyard/idle-monitor.json"
        in cron
    )
    modes = exec_ok(
        host,
        [
            "stat",
            "-c",
            "%n %a %U",
            "/usr/local/libexec/dockyard/health-report",
            "/usr/local/libexec/dockyard/idle-monitor",
        ],
    )
    assert modes.splitlines() == [
        "/usr/local/libexec/dockyard/health-report 755 root",
        "/usr/local/libexec/dockyard/idle-monitor 755 root",
    ]


def test_bad_role_variables_fail_before_any_change(fleet: TargetFleet) -> None:
    (host,) = fleet.start()
    inventory = fleet.inventory([host])
    run = run_playbook(
        "site.yml",
        inventory=inventory,
        extra_vars={
            **VARIABLES,
            "idle_monitor_action": "hibernate",
            "env_health_max_failed_checks": "three",
        },
        args=["--skip-tags", "docker_host", "-e", "dockyard_docker_hosts=dockyard"],
        check=False,
    )
    assert run.rc != 0
    # Both roles' problems in one run, before the first role (agent_tooling) acted.
    assert (
        "value of idle_monitor_action must be one of: stop, poweroff, got: hibernate" in run.output
    )
    assert "argument 'env_health_max_failed_checks' is of type" in run.output
    assert run.changed() == {host.name: 0}
    written = exec_ok(
        host,
        [
            "bash",
            "-c",
            "ls -d /etc/dockyard/health.json /etc/dockyard/idle-monitor.json /opt/site-test-agents"
            " /usr/local/libexec/dockyard 2>/dev/null | wc -l",
        ],
    )
    assert written.strip() == "0"
