"""roles/host_common on this machine, without touching it: its comparison module against
files in a temporary directory, and its schedule templates rendered by Ansible itself
(systemd units checked by systemd-analyze, the cron line read back as /bin/sh would)."""

from __future__ import annotations

import grp
import hashlib
import os
import pwd
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.ansible import REPO, run_module
from tests.support.engine import require_docker

ROLE = REPO / "roles" / "host_common"
SCHEDULE = {
    "name": "dockyard-demo",
    "description": "demo job",
    # A space, a systemd specifier, a variable and a quote: each must reach the script as is.
    "command": ["/usr/bin/python3", "/opt/demo dir/job.py", "--ratio", "50%", "$HOME", "it's"],
    "interval_minutes": 120,
    "boot_delay": "5min",
    "after": ["nftables.service"],
}


def render(template: str, tmp_path: Path, schedule: dict[str, Any]) -> str:
    dest = tmp_path / template.removeprefix("dockyard-job.")
    result = run_module(
        "ansible.builtin.template",
        {"src": str(ROLE / "templates" / template), "dest": str(dest)},
        extra_vars={"host_common_schedule": schedule},
    )
    assert not result.get("failed"), result
    return dest.read_text()


def test_systemd_units_are_valid_and_pass_the_command_through(tmp_path: Path) -> None:
    service = render("dockyard-job.service.j2", tmp_path, SCHEDULE)
    timer = render("dockyard-job.timer.j2", tmp_path, SCHEDULE)
    assert (
        'ExecStart=/usr/bin/python3 "/opt/demo dir/job.py" --ratio 50%% $$HOME "it\'s"\n'
    ) in service
    assert "SyslogIdentifier=dockyard-demo\n" in service
    assert "After=docker.service nftables.service\n" in service
    # The cron line's wall-clock schedule (every 2 hours on the hour), not 120 min after
    # each run: one meaning for both schedulers.
    assert "OnCalendar=*-*-* 00/2:00:00\n" in timer
    assert "OnBootSec=5min\n" in timer
    if shutil.which("systemd-analyze") is None:
        # A skip on a developer's machine; under CI (.ci/run installs Debian's systemd
        # package for it) the units must be verified.
        message = "systemd-analyze is not installed here (apt-get install systemd)"
        if os.environ.get("CI") == "true" or require_docker():
            pytest.fail(message)
        pytest.skip(message)
    units = tmp_path / "units"
    units.mkdir()
    (units / "dockyard-demo.service").write_text(service)
    (units / "dockyard-demo.timer").write_text(timer)
    check = subprocess.run(
        ["systemd-analyze", "verify", str(units / "dockyard-demo.timer")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 0, check.stderr
    assert "dockyard-demo" not in check.stderr, check.stderr


@pytest.mark.parametrize(
    ("minutes", "calendar"),
    [(1, "*:*:00"), (15, "*:00/15:00"), (60, "*:00:00"), (120, "00/2:00:00"), (1440, "00:00:00")],
)
def test_timer_runs_on_the_cron_lines_schedule(tmp_path: Path, minutes: int, calendar: str) -> None:
    timer = render("dockyard-job.timer.j2", tmp_path, {**SCHEDULE, "interval_minutes": minutes})
    assert f"OnCalendar=*-*-* {calendar}\n" in timer
    if shutil.which("systemd-analyze") is not None:
        # systemd's own reading of the expression: the next elapses are `minutes` apart.
        check = subprocess.run(
            ["systemd-analyze", "calendar", "--iterations=3", f"*-*-* {calendar}"],
            capture_output=True,
            text=True,
            check=True,
        )
        assert "Next elapse" in check.stdout


@pytest.mark.parametrize("minutes", [7, 45, 90, 100, 0, 1441])
def test_an_interval_cron_cannot_express_is_refused(tmp_path: Path, minutes: int) -> None:
    """A 90-minute job would run hourly from cron and every 90 min from a timer: refused
    under either scheduler, by the role itself (not only the site playbook's pre-check)."""
    for scheduler in ("cron", "systemd"):
        playbook = tmp_path / f"schedule-{scheduler}.yml"
        playbook.write_text(
            yaml.safe_dump(
                [
                    {
                        "hosts": "localhost",
                        "gather_facts": False,
                        "tasks": [
                            {
                                "ansible.builtin.include_role": {
                                    "name": "host_common",
                                    "tasks_from": "state",
                                },
                                "vars": {
                                    "host_common_schedule": {
                                        **SCHEDULE,
                                        "interval_minutes": minutes,
                                    },
                                    "host_common_scheduler": scheduler,
                                },
                            }
                        ],
                    }
                ]
            )
        )
        result = subprocess.run(
            [
                str(Path(sys.executable).parent / "ansible-playbook"),
                "-i",
                "localhost,",
                "-c",
                "local",
                "-e",
                f"ansible_python_interpreter={sys.executable}",
                str(playbook),
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=False,
            env={**os.environ, "ANSIBLE_NOCOLOR": "1"},
        )
        assert result.returncode != 0, result.stdout
        assert f"dockyard-demo: interval_minutes {minutes} is not allowed" in result.stdout, (
            result.stdout
        )
        assert "allowed: minutes that divide the hour" in result.stdout


@pytest.mark.parametrize(
    ("minutes", "when"),
    [(1, "* *"), (15, "*/15 *"), (60, "0 *"), (120, "0 */2"), (1440, "0 */24")],
)
def test_cron_line_runs_the_command_as_given(tmp_path: Path, minutes: int, when: str) -> None:
    text = render("dockyard-job.cron.j2", tmp_path, {**SCHEDULE, "interval_minutes": minutes})
    (line,) = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert text.endswith("\n")
    assert line.startswith(f"{when} * * * root ")
    command = line.removeprefix(f"{when} * * * root ")
    assert command.endswith(" 2>&1 | logger -t dockyard-demo")
    # cron turns an unescaped % into a newline, then hands the line to /bin/sh.
    assert "%" not in command.replace("\\%", "")
    words = command.removesuffix(" 2>&1 | logger -t dockyard-demo").replace("\\%", "%")
    assert shlex.split(words) == SCHEDULE["command"]


def sha1(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()  # noqa: S324 - Ansible's file checksum


def compare(**state: Any) -> list[str]:
    owner = pwd.getpwuid(os.getuid()).pw_name
    group = grp.getgrgid(os.getgid()).gr_name
    result = run_module(
        "host_state",
        {"owner": owner, "group": group, **state},
        module_path=REPO / "plugins" / "modules",
    )
    assert not result.get("failed"), result
    assert result["changed"] is False
    return list(result["drift"])


def test_comparison_names_every_kind_of_drift_and_none_once_repaired(tmp_path: Path) -> None:
    directory, config, link = tmp_path / "etc", tmp_path / "etc" / "job.json", tmp_path / "job"
    directory.mkdir(mode=0o700)
    config.write_text('{"edited": true}\n')
    config.chmod(0o600)
    link.symlink_to("/bin/false")
    stale = tmp_path / "stale.cron"
    stale.write_text("* * * * * root true\n")
    wanted = '{"interval": 15}\n'
    state = {
        "packages": ["dpkg", "dockyard-no-such-package"],
        "directories": [str(directory), str(tmp_path / "missing")],
        "files": [{"path": str(config), "checksum": sha1(wanted), "mode": "0644"}],
        "links": [{"path": str(link), "src": "/bin/true"}],
        "absent": [str(stale)],
        "checks": [
            {"argv": ["true"]},
            {"argv": ["sh", "-c", "echo 1.2.3"], "stdout_contains": "1.2.3"},
            {"argv": ["sh", "-c", "echo 1.2.2"], "stdout_contains": "1.2.3"},
            {"argv": ["false"]},
            {"argv": [str(tmp_path / "no-such-command")]},
        ],
    }
    drift = compare(**state)
    assert drift[:8] == [
        "package dockyard-no-such-package is not installed",
        f"{directory}: mode 0700, not 0755",
        f"{tmp_path / 'missing'}: not a directory",
        f"{config}: content differs",
        f"{config}: mode 0600, not 0644",
        f"{link}: points at /bin/false, not /bin/true",
        f"{stale}: should not exist",
        "sh -c echo 1.2.2: output lacks '1.2.3'",
    ]
    assert drift[8] == "false: exit 1"
    assert drift[9].startswith(f"{tmp_path / 'no-such-command'}: ")
    assert len(drift) == 10

    directory.chmod(0o755)
    (tmp_path / "missing").mkdir(mode=0o755)
    (tmp_path / "missing").chmod(0o755)
    config.write_text(wanted)
    config.chmod(0o644)
    link.unlink()
    link.symlink_to("/bin/true")
    stale.unlink()
    state["packages"] = ["dpkg"]
    state["checks"] = state["checks"][:2]
    assert compare(**state) == []
    # The owner is compared too.
    group = grp.getgrgid(os.getgid()).gr_name
    me = f"{pwd.getpwuid(os.getuid()).pw_name}:{group}"
    assert compare(**state, owner="nobody") == [
        f"{path}: owned by {me}, not nobody:{group}"
        for path in (directory, tmp_path / "missing", config)
    ]


# --- The package's host modules ------------------------------------------------------------


def package_files() -> list[str]:
    variables = yaml.safe_load((ROLE / "vars" / "main.yml").read_text())
    return list(variables["host_common_package_files"])


def install_package(root: Path) -> Path:
    """host_common's package files copied as it installs them: <root>/dockyard/..."""
    for path in package_files():
        dest = root / "dockyard" / path
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(REPO / "components" / path, dest)
    return root


def test_the_package_files_are_closed_under_imports_and_stdlib_only(tmp_path: Path) -> None:
    """Every module host_common installs imports, from that copy alone, under a Python
    without site-packages (as the host's system python3 without dockyard installed)."""
    root = install_package(tmp_path)
    modules = [
        "dockyard." + p.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
        for p in package_files()
        if p.endswith(".py")
    ]
    code = (
        f"import importlib, sys; sys.path.insert(0, {str(root)!r}); "
        f"[importlib.import_module(m) for m in {modules!r}]; "
        "import dockyard; print(dockyard.__file__)"
    )
    result = subprocess.run(
        [sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == str(root / "dockyard" / "__init__.py")


def test_the_backup_launcher_runs_the_installed_package(tmp_path: Path) -> None:
    """The workspace_backup role's command beside the package tree, as on a host: the
    script's directory (sys.path[0]) holds dockyard/, no site-packages."""
    root = install_package(tmp_path)
    launcher = root / "workspace-backup"
    shutil.copyfile(
        REPO / "roles" / "workspace_backup" / "files" / "dockyard-workspace-backup.py", launcher
    )
    config = tmp_path / "c.json"
    config.write_text('{"repository": "s3:https://h.example/bucket"}')
    ok = subprocess.run(
        [sys.executable, "-E", "-s", "-S", str(launcher), "--config", str(config), "--check-config"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    config.write_text('{"repository": "s3:https://h.example/bucket", "keep_dayly": 1}')
    bad = subprocess.run(
        [sys.executable, "-E", "-s", "-S", str(launcher), "--config", str(config), "--check-config"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert bad.returncode == 2
    assert "unknown keys ['keep_dayly']" in bad.stderr


PLATFORM_PLAYBOOK = """\
- hosts: localhost
  gather_facts: false
  tasks:
    - ansible.builtin.include_role: {name: host_common, tasks_from: state}
"""


def platform_run(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    playbook = tmp_path / "platform.yml"
    playbook.write_text(PLATFORM_PLAYBOOK)
    return subprocess.run(
        [
            str(Path(sys.executable).parent / "ansible-playbook"),
            "-i",
            "localhost,",
            "-c",
            "local",
            "-e",
            f"ansible_python_interpreter={sys.executable}",
            *extra,
            str(playbook),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "ANSIBLE_NOCOLOR": "1"},
    )


def test_a_role_used_alone_gathers_its_facts_and_refuses_other_platforms(tmp_path: Path) -> None:
    # No facts gathered by the play: the role reads them itself (this machine is Debian).
    alone = platform_run(tmp_path)
    assert alone.returncode == 0, alone.stdout
    assert "TASK [host_common : Gather the facts the roles read when they are missing]" in (
        alone.stdout
    )
    other = platform_run(
        tmp_path,
        "-e",
        '{"ansible_facts": {"os_family": "RedHat", "distribution": "Fedora", "service_mgr": "systemd"}}',
    )
    assert other.returncode != 0
    assert "Fedora (os_family RedHat) is not supported (allowed: the Debian family" in other.stdout
