"""The host roles on a real host: systemd as PID 1 and the host's own Docker engine
(tests/support/systemd_host.py), where the other tests only reach the cron and
background paths.

site.yml converges a host that already has a daemon.json of its own (data-root, a
registry mirror, an extra runtime): they are kept and in effect; the engine and the
schedules run under systemd and survive a reboot-like restart; the second run changes
nothing; check mode succeeds on a converged and on a fresh host and changes nothing."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

import docker
import pytest
import yaml

from tests.support import systemd_host
from tests.support.ansible import REPO, PlaybookRun, run_playbook
from tests.support.engine import wait_for
from tests.support.images import DEFAULT_BASE
from tests.support.systemd_host import ENGINE_DATA, SystemdHost

pytestmark = [pytest.mark.docker, pytest.mark.slow]

# agent_tooling downloads the agent CLIs from npm: proven on the core image
# (test_site_playbook.py); nothing in it depends on the init system.
ARGS = ["--skip-tags", "agent_tooling"]
# A stand-in for a Python with dockyard installed: records how the boot unit calls it.
STORAGE_PYTHON = "/usr/local/bin/dockyard-python-standin"
STORAGE_CALLS = "/var/lib/dockyard-standin-calls"
VARIABLES = {"env_health_interval_minutes": 10, "docker_host_storage_python": STORAGE_PYTHON}
MIRROR = "http://127.0.0.1:5999"
TIMERS = ["dockyard-health.timer", "dockyard-idle-monitor.timer"]


@dataclass
class Converged:
    host: SystemdHost
    runtime_path: str
    first: PlaybookRun
    second: PlaybookRun


def own_daemon_json(runtime_path: str) -> dict[str, object]:
    return {
        "data-root": ENGINE_DATA,
        "registry-mirrors": [MIRROR],
        "runtimes": {"standin-nvidia": {"path": runtime_path}},
    }


def site(host: SystemdHost, *args: str, check: bool = True) -> PlaybookRun:
    return run_playbook(
        "site.yml", inventory=host.inventory, extra_vars=VARIABLES, args=[*ARGS, *args], check=check
    )


@pytest.fixture(scope="module")
def converged(
    docker_client: docker.DockerClient, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Converged]:
    for host in systemd_host.started(docker_client, tmp_path_factory.mktemp("systemd")):
        runtime_path = host.sh("command -v runc").strip()
        host.sh("mkdir -p /etc/docker")
        host.sh(
            f"printf '#!/bin/sh\\necho \"$(cut -d. -f1 /proc/uptime) $*\" >> {STORAGE_CALLS}\\n'"
            f" > {STORAGE_PYTHON} && chmod 755 {STORAGE_PYTHON}"
        )
        host.sh(
            f"cat > /etc/docker/daemon.json <<'EOF'\n{json.dumps(own_daemon_json(runtime_path))}\nEOF"
        )
        first = site(host)
        second = site(host)
        yield Converged(host, runtime_path, first, second)


def test_engine_keeps_the_hosts_own_daemon_json(converged: Converged) -> None:
    host = converged.host
    daemon = json.loads(host.sh("cat /etc/docker/daemon.json"))
    # The host's own keys stay, as they were.
    assert daemon["data-root"] == ENGINE_DATA
    assert daemon["registry-mirrors"] == [MIRROR]
    assert daemon["runtimes"] == {"standin-nvidia": {"path": converged.runtime_path}}
    # The role's keys are merged in; host-wide defaults dockyard does not need are not.
    assert daemon["live-restore"] is True
    assert daemon["log-opts"] == {"max-file": "3", "max-size": "10m"}
    assert "default-ulimits" not in daemon
    # ... and in effect: the engine the role (re)started under systemd reads them.
    info = json.loads(host.sh("docker info --format '{{json .}}'"))
    assert info["DockerRootDir"] == ENGINE_DATA
    assert info["RegistryConfig"]["Mirrors"] == [MIRROR + "/"]
    assert "standin-nvidia" in info["Runtimes"]
    assert info["LiveRestoreEnabled"] is True
    assert host.sh("systemctl is-enabled docker.service").strip() == "enabled"
    assert host.sh("systemctl is-active docker.service").strip() == "active"


def test_second_run_changes_nothing(converged: Converged) -> None:
    assert sum(converged.first.changed().values()) > 0
    assert converged.second.changed() == {converged.host.container.name: 0}, (
        converged.second.output[-3000:]
    )


def test_schedules_are_timers_that_run_their_jobs(converged: Converged) -> None:
    host = converged.host
    for timer in TIMERS:
        assert host.sh(f"systemctl is-enabled {timer}").strip() == "enabled"
        assert host.sh(f"systemctl is-active {timer}").strip() == "active"
    assert host.sh("ls /etc/cron.d").split() == [] or "dockyard" not in host.sh("ls /etc/cron.d")
    # The health job runs under systemd as it would from its timer, and writes its report.
    host.sh("rm -f /var/lib/dockyard/health/report.json")
    host.exec("systemctl", "start", "dockyard-health.service")
    result = host.sh("systemctl show -p Result --value dockyard-health.service").strip()
    assert result == "success"
    report = json.loads(host.sh("cat /var/lib/dockyard/health/report.json"))
    assert isinstance(report, dict)


PREVIEW_PLAYBOOK = """\
- name: Preview URLs on the systemd host
  hosts: docker_hosts
  gather_subset: [min]
  become: true
  roles:
    - role: preview_proxy
      vars:
        preview_proxy_domain: preview.test
"""
CADDY = "dockyard-preview-caddy.service"
CADDY_UP = (
    "import urllib.request; urllib.request.urlopen('http://127.0.0.1:2019/config/', timeout=5)"
)


@pytest.fixture(scope="module")
def preview(converged: Converged, tmp_path_factory: pytest.TempPathFactory) -> list[PlaybookRun]:
    """The preview proxy role on the converged host, run twice."""
    playbook = tmp_path_factory.mktemp("preview") / "preview.yml"
    playbook.write_text(PREVIEW_PLAYBOOK)
    return [run_playbook(str(playbook), inventory=converged.host.inventory) for _ in range(2)]


def caddy_serves(host: SystemdHost) -> bool:
    return host.exec("python3", "-c", CADDY_UP, check=False)[0] == 0


def test_preview_caddy_is_a_service_of_its_own(
    converged: Converged, preview: list[PlaybookRun]
) -> None:
    host = converged.host
    assert preview[1].changed() == {host.container.name: 0}, preview[1].output[-3000:]
    assert host.sh(f"systemctl is-enabled {CADDY}").strip() == "enabled"
    assert host.sh(f"systemctl is-active {CADDY}").strip() == "active"
    assert caddy_serves(host)


def test_preview_caddy_outlives_the_watcher_job_that_started_it(
    converged: Converged, preview: list[PlaybookRun]
) -> None:
    """The watcher's job is a oneshot service: what it leaves in its own cgroup is killed
    when it exits. Caddy, started by that job, must be in a unit of its own."""
    host = converged.host
    host.exec("systemctl", "stop", "dockyard-preview-proxy.timer")  # no run of its own meanwhile
    try:
        host.exec("systemctl", "stop", CADDY)
        assert not caddy_serves(host)
        # Blocks until the job exits (it watches for 55 s, starting Caddy at once).
        host.exec("systemctl", "start", "dockyard-preview-proxy.service")
        job = host.sh("systemctl show -p Result -p ActiveState dockyard-preview-proxy.service")
        assert "Result=success" in job, job
        assert "ActiveState=inactive" in job, job
        assert host.sh(f"systemctl is-active {CADDY}", check=False).strip() == "active"
        assert caddy_serves(host)
        caddy_cgroup = host.sh(f"systemctl show -p ControlGroup --value {CADDY}").strip()
        assert caddy_cgroup.endswith(CADDY), caddy_cgroup
    finally:
        host.exec("systemctl", "start", "dockyard-preview-proxy.timer")


def test_engine_and_timers_come_back_after_a_reboot(
    converged: Converged, preview: list[PlaybookRun]
) -> None:
    host = converged.host
    host.reboot()
    assert host.sh("systemctl is-active docker.service").strip() == "active"
    for timer in TIMERS:
        assert host.sh(f"systemctl is-active {timer}").strip() == "active"
    # Caddy comes back at boot with the last configuration (before the watcher's first run).
    wait_for(lambda: caddy_serves(host), 90, what="preview Caddy after the reboot")
    assert host.sh(f"systemctl is-active {CADDY}").strip() == "active"
    # Still converged: nothing to change after the reboot.
    again = site(host)
    assert again.changed() == {host.container.name: 0}, again.output[-3000:]


EGRESS_VARIABLES = {"egress_guard_upstream_dns": ["192.0.2.53"]}
FORWARDER = "dockyard-egress-dns@{key}.service"
BOOT_UNIT = "dockyard-egress-guard-boot.service"


@dataclass
class Egress:
    runs: list[PlaybookRun]
    network_key: str


@pytest.fixture(scope="module")
def egress(converged: Converged) -> Egress:
    """An allowlisted network with a restart-policy container in the host's own engine, then
    playbooks/egress.yml twice. Its rules live in the host's network namespace only."""
    host = converged.host
    host.load_image(DEFAULT_BASE)
    allow = json.dumps(["example.com:443", "192.0.2.0/24:80"])
    network = host.sh(
        "docker network create --label dockyard.egress=allowlist "
        f"--label 'dockyard.egress.allow={allow}' egress-allow"
    ).strip()
    host.exec(
        "docker", "run", "-d", "--name", "allowed", "--restart", "unless-stopped",
        "--network", "egress-allow", DEFAULT_BASE, "sleep", "infinity",
    )  # fmt: skip
    runs = [
        run_playbook("egress.yml", inventory=host.inventory, extra_vars=EGRESS_VARIABLES)
        for _ in range(2)
    ]
    return Egress(runs, network[:12])


def monotonic(host: SystemdHost, unit: str, prop: str) -> int:
    return int(host.sh(f"systemctl show -p {prop} --value {unit}").strip())


def test_egress_forwarders_are_services_of_their_own(converged: Converged, egress: Egress) -> None:
    host = converged.host
    assert egress.runs[1].changed() == {host.container.name: 0}, egress.runs[1].output[-3000:]
    forwarder = FORWARDER.format(key=egress.network_key)
    assert host.sh(f"systemctl is-enabled {forwarder} {BOOT_UNIT}").split() == ["enabled"] * 2
    # The guard's timer job (a oneshot) restarts a forwarder that is down; once the job
    # has exited the forwarder still runs, in its own unit's cgroup.
    host.exec("systemctl", "stop", "dockyard-egress-guard.timer")
    try:
        host.exec("systemctl", "stop", forwarder)
        host.exec("systemctl", "start", "dockyard-egress-guard.service")
        job = host.sh("systemctl show -p Result -p ActiveState dockyard-egress-guard.service")
        assert "Result=success" in job, job
        assert "ActiveState=inactive" in job, job
        assert host.sh(f"systemctl is-active {forwarder}", check=False).strip() == "active"
        cgroup = host.sh(f"systemctl show -p ControlGroup --value {forwarder}").strip()
        assert cgroup.endswith("/" + forwarder), cgroup
        pid = host.sh(f"systemctl show -p MainPID --value {forwarder}").strip()
        assert "dnsmasq" in host.sh(f"cat /proc/{pid}/cmdline | tr '\\0' ' '")
    finally:
        host.exec("systemctl", "start", "dockyard-egress-guard.timer")


def test_the_fence_is_in_place_before_the_engine_restarts_containers_at_boot(
    converged: Converged, egress: Egress
) -> None:
    host = converged.host
    forwarder = FORWARDER.format(key=egress.network_key)
    host.reboot()
    # The allowlisted environment came back with the engine (restart policy) ...
    wait_for(
        lambda: (
            host.sh("docker inspect -f '{{.State.Running}}' allowed", check=False).strip() == "true"
        ),
        120,
        what="the allowlisted container after the reboot",
    )
    # ... and the table and its forwarder were there before the engine started: restored
    # at boot, not by the timer (its first run is 30 s after boot).
    assert "dockyard_egress" in host.sh("nft list tables")
    engine_start = monotonic(host, "docker.service", "ExecMainStartTimestampMonotonic")
    restored = monotonic(host, BOOT_UNIT, "ExecMainExitTimestampMonotonic")
    assert 0 < restored <= engine_start, (restored, engine_start)
    assert host.sh(f"systemctl is-active {forwarder}").strip() == "active"
    forwarder_start = monotonic(host, forwarder, "ExecMainStartTimestampMonotonic")
    assert 0 < forwarder_start <= engine_start, (forwarder_start, engine_start)
    assert host.sh("systemctl show -p NRestarts --value " + forwarder).strip() == "0"
    # Still converged, once the timer's first run since boot (30 s after it) is over: two
    # guards at once would each see the other's work.
    job = "dockyard-egress-guard.service"
    wait_for(
        lambda: (
            monotonic(host, job, "ExecMainExitTimestampMonotonic") > 0
            and host.sh(f"systemctl is-active {job}", check=False).strip() != "activating"
        ),
        180,
        what="the guard's first timer job since boot",
    )
    again = run_playbook("egress.yml", inventory=host.inventory, extra_vars=EGRESS_VARIABLES)
    assert again.changed() == {host.container.name: 0}, (
        again.tasks_changed(),
        again.output[-3000:],
    )


def test_bounded_disks_are_re_attached_at_boot_once_the_engine_runs(
    converged: Converged, preview: list[PlaybookRun], egress: Egress
) -> None:
    """docker_host's boot unit runs `python -m dockyard.storage attach` (here a stand-in
    that records its arguments) after docker.service, at every boot (the reboots of the
    tests before this one; site.yml only enabled it: one call per boot)."""
    host = converged.host
    unit = "dockyard-storage-attach.service"
    assert host.sh(f"systemctl is-enabled {unit}").strip() == "enabled"
    calls = host.sh(f"cat {STORAGE_CALLS}", check=False).strip().splitlines()
    if not calls:  # run on its own: no reboot yet (site.yml only enabled the unit)
        host.reboot()
        calls = host.sh(f"cat {STORAGE_CALLS}").strip().splitlines()
    assert calls, "the unit never ran"
    assert {call.split(" ", 1)[1] for call in calls} == {"-m dockyard.storage attach"}, calls
    assert host.sh(f"systemctl show -p Result --value {unit}").strip() == "success"
    engine_up = monotonic(host, "docker.service", "ActiveEnterTimestampMonotonic")
    attached = monotonic(host, unit, "ExecMainStartTimestampMonotonic")
    assert 0 < engine_up <= attached, (engine_up, attached)


def test_check_mode_on_a_converged_host_succeeds_and_changes_nothing(converged: Converged) -> None:
    run = site(converged.host, "--check")
    assert run.changed() == {converged.host.container.name: 0}, run.output[-3000:]


def test_a_managed_key_set_by_someone_else_is_reported_not_replaced(converged: Converged) -> None:
    host = converged.host
    before = host.sh("cat /etc/docker/daemon.json")
    edited = {**json.loads(before), "live-restore": False}
    host.sh(f"cat > /etc/docker/daemon.json <<'EOF'\n{json.dumps(edited)}\nEOF")
    try:
        run = run_playbook("docker_host.yml", inventory=host.inventory, check=False)
        assert run.rc != 0
        assert "live-restore is false in place, the role would set true" in run.output
        assert json.loads(host.sh("cat /etc/docker/daemon.json")) == edited
        # Kept by naming the value in place: then the role agrees with the host.
        kept = run_playbook(
            "docker_host.yml",
            inventory=host.inventory,
            extra_vars={"docker_host_live_restore": False},
        )
        assert json.loads(host.sh("cat /etc/docker/daemon.json"))["live-restore"] is False
        assert kept.rc == 0
    finally:
        host.sh(f"cat > /etc/docker/daemon.json <<'EOF'\n{before}EOF")
        run_playbook("docker_host.yml", inventory=host.inventory)


@pytest.fixture(scope="module")
def fresh(
    docker_client: docker.DockerClient, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SystemdHost]:
    """A host nothing has run on yet (the tests below run in this order on it)."""
    yield from systemd_host.started(docker_client, tmp_path_factory.mktemp("fresh"))


def test_check_mode_on_a_fresh_host_reports_changes_and_makes_none(fresh: SystemdHost) -> None:
    run = site(fresh, "--check")
    assert run.changed()[fresh.container.name] > 0, run.output[-3000:]
    assert "docker_host : Ensure the Docker daemon configuration is in place" in run.tasks_changed()
    assert fresh.exec("test", "-e", "/etc/docker/daemon.json", check=False)[0] != 0
    timer = "/etc/systemd/system/dockyard-health.timer"
    assert fresh.exec("test", "-e", timer, check=False)[0] != 0
    assert fresh.sh("systemctl is-enabled docker.service", check=False).strip() == "disabled"


def test_docker_package_source_adds_the_repository_and_reads_it(fresh: SystemdHost) -> None:
    """The docker package source on a host without python3-debian and with a fresh apt
    cache: the repository is added, apt reads it at once, and its package installs.
    Debian's own contrib component stands in for Docker's repository (download.docker.com
    is not reachable here); the host's sources have only main, so the package below can
    only come from the added repository."""
    fresh.sh("apt-get update -qq")
    assert "python3-debian" not in fresh.sh("dpkg-query -W -f '${Package}\\n' 'python3-*'")
    run = run_playbook(
        "docker_host.yml",
        inventory=fresh.inventory,
        extra_vars={
            "docker_host_package_source": "docker",
            "docker_host_docker_repo_url": "http://deb.debian.org/debian",
            "docker_host_docker_repo_components": ["contrib"],
            "docker_host_docker_repo_key": "/usr/share/keyrings/debian-archive-keyring.gpg",
            "docker_host_docker_packages": ["b43-fwcutter"],
        },
    )
    assert run.rc == 0
    installed = fresh.sh(
        "dpkg-query -W -f '${db:Status-Abbrev}${Package}\\n' python3-debian b43-fwcutter"
    )
    assert sorted(installed.splitlines()) == ["ii b43-fwcutter", "ii python3-debian"], installed
    assert "Types: deb" in fresh.sh("cat /etc/apt/sources.list.d/docker.sources")


def test_playbooks_that_change_hosts_become_root() -> None:
    for name in (
        "site.yml",
        "health.yml",
        "refresh.yml",
        "egress.yml",
        "docker_host.yml",
        "backup.yml",
    ):
        plays = yaml.safe_load((REPO / "playbooks" / name).read_text())
        for play in plays:
            if any(key.endswith("import_playbook") for key in play):
                continue
            assert play.get("become") is True, f"{name}: play {play.get('name')!r} has no become"


def test_role_metadata_claims_only_the_tested_platform() -> None:
    for meta in sorted((REPO / "roles").glob("*/meta/main.yml")):
        platforms = yaml.safe_load(meta.read_text())["galaxy_info"]["platforms"]
        assert platforms == [{"name": "Debian", "versions": ["bookworm"]}], meta
    hosts = (REPO / "docs" / "hosts.md").read_text()
    assert "**Ubuntu** (22.04 jammy, 24.04 noble) is untested" in hosts
