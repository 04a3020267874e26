"""The up-front validation every shipped playbook runs before a role changes anything
(playbooks/tasks/validate-roles.yml): a variable named with a role's prefix that the role
does not have is refused with a did-you-mean, and numbers outside their range are refused
(meta/value_checks.yml), all problems of all roles in one run.

The tasks file runs for real (ansible-playbook, this machine, -c local) from a throwaway
playbook that includes nothing else, so a check that let a value through changes nothing."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.ansible import LOCAL, VENV_BIN

REPO = Path(__file__).resolve().parents[2]
ROLES = sorted(p.parent.parent.name for p in (REPO / "roles").glob("*/meta/argument_specs.yml"))
# host_common is internal (the other roles include it); no playbook gives it variables.
VALIDATED = [role for role in ROLES if role != "host_common"]
CANARY = "ghp_validationCanary0123456789abcdefABCD"


def options(role: str) -> dict[str, dict[str, Any]]:
    spec = yaml.safe_load((REPO / "roles" / role / "meta" / "argument_specs.yml").read_text())
    return spec["argument_specs"]["main"]["options"]


def value_checks(role: str) -> dict[str, dict[str, Any]]:
    path = REPO / "roles" / role / "meta" / "value_checks.yml"
    return yaml.safe_load(path.read_text()) if path.exists() else {}


def validate(tmp_path: Path, roles: list[str], extra: dict[str, Any]) -> tuple[int, str]:
    """Run only validate-roles.yml for ``roles`` with ``extra`` as extra vars."""
    (tmp_path / "playbooks").mkdir(exist_ok=True)
    for name, target in (
        ("roles", REPO / "roles"),
        ("playbooks/tasks", REPO / "playbooks" / "tasks"),
    ):
        link = tmp_path / name
        if not link.exists():
            link.symlink_to(target)
    playbook = tmp_path / "playbooks" / "check.yml"
    playbook.write_text(
        yaml.safe_dump(
            [
                {
                    "name": "Validate only",
                    "hosts": "all",
                    "gather_facts": False,
                    "tasks": [
                        {
                            "name": "Validate role variables",
                            "ansible.builtin.include_tasks": "tasks/validate-roles.yml",
                            "vars": {"dockyard_validate_roles": roles},
                        }
                    ],
                }
            ]
        )
    )
    run = subprocess.run(
        [
            str(VENV_BIN / "ansible-playbook"),
            "-i",
            "localhost,",
            "-c",
            "local",
            str(playbook),
            "-e",
            json.dumps({**LOCAL, **extra}),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={
            **os.environ,
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
            "ANSIBLE_CALLBACK_RESULT_FORMAT": "json",
        },
        check=False,
    )
    return run.returncode, run.stdout + run.stderr


def problems(output: str) -> list[str]:
    """The list the last task fails with."""
    match = re.search(r"FAILED! => (\{.*\})\s*$", output, re.M)
    assert match, output[-3000:]
    return json.loads(match.group(1))["msg"].splitlines()


def typo(name: str, prefix: str) -> str:
    """``name`` with two letters of its own part swapped (a transposition typo)."""
    rest = name[len(prefix) :]
    i = max(1, len(rest) // 2 - 1)
    swapped = rest[:i] + rest[i + 1] + rest[i] + rest[i + 2 :]
    if swapped == rest:  # a doubled letter: drop one instead
        swapped = rest[:i] + rest[i + 1 :]
    return prefix + swapped


def test_the_issue_cases_are_refused_with_their_fix(tmp_path: Path) -> None:
    rc, output = validate(
        tmp_path,
        ["idle_monitor", "env_health"],
        {"idle_monitor_actoin": "poweroff", "env_health_max_disk_pct": 150},
    )
    assert rc != 0
    assert sorted(problems(output)) == [
        'env_health_max_disk_pct: "150" is not allowed (allowed: a percentage 1-100)',
        "idle_monitor_actoin: not a variable of the role idle_monitor"
        " (did you mean idle_monitor_action?)",
    ]


@pytest.mark.slow
def test_every_misspelled_option_of_every_role_is_refused_naming_the_option(
    tmp_path: Path,
) -> None:
    """One transposition typo per option, all roles in one run: each is reported with the
    option it misspells, and never with its value (it could be a token)."""
    typos = {}
    for role in VALIDATED:
        for option in options(role):
            misspelled = typo(option, f"{role}_")
            assert misspelled not in options(role), misspelled
            typos[misspelled] = (role, option)
    rc, output = validate(tmp_path, VALIDATED, dict.fromkeys(typos, CANARY))
    assert rc != 0
    found = problems(output)
    expected = [
        f"{name}: not a variable of the role {role} (did you mean {option}?)"
        for name, (role, option) in typos.items()
    ]
    assert sorted(found) == sorted(expected)
    assert CANARY not in output


def test_a_name_unlike_any_option_lists_the_roles_variables(tmp_path: Path) -> None:
    rc, output = validate(tmp_path, ["idle_monitor"], {"idle_monitor_zzzz": 1})
    assert rc != 0
    (message,) = problems(output)
    assert message.startswith("idle_monitor_zzzz: not a variable of the role idle_monitor")
    assert all(option in message for option in options("idle_monitor"))


def test_names_the_role_defines_itself_and_other_roles_prefixes_pass(tmp_path: Path) -> None:
    """A role's registered results and vars/ names (left by an earlier play in the same run)
    are not typos; neither is a variable of a role the play does not run."""
    rc, output = validate(
        tmp_path,
        ["docker_host", "env_health"],
        {
            "docker_host_started": {"changed": False},  # register: in roles/docker_host/tasks
            "docker_host_daemon_json_path": "/etc/docker/daemon.json",  # vars/main.yml
            "env_health_run": {"stdout": "{}"},
            "idle_monitor_actoin": "stop",  # idle_monitor is not validated here
        },
    )
    assert rc == 0, output[-3000:]


def test_every_number_option_has_a_range(tmp_path: Path) -> None:
    """The class: every int or float option of every role is bounded in value_checks.yml
    (by minimum/maximum or by a pattern), so `..._pct=150` cannot pass anywhere."""
    unbounded = [
        f"{role}: {name}"
        for role in VALIDATED
        for name, spec in options(role).items()
        if spec.get("type") in ("int", "float")
        and not {"minimum", "maximum"} <= set(value_checks(role).get(name, {}))
        and "pattern" not in value_checks(role).get(name, {})
    ]
    assert unbounded == []


def _ranges() -> dict[str, dict[str, Any]]:
    return {
        name: check
        for role in VALIDATED
        for name, check in value_checks(role).items()
        if "minimum" in check
    }


def test_every_range_refuses_values_just_outside_and_accepts_its_bounds(tmp_path: Path) -> None:
    ranges = _ranges()
    assert len(ranges) >= 15
    step = {name: 0.01 if isinstance(c["minimum"], float) else 1 for name, c in ranges.items()}
    outside = {}
    for name, check in ranges.items():
        outside[name] = check["minimum"] - step[name]
    rc, output = validate(tmp_path, VALIDATED, outside)
    assert rc != 0
    below = problems(output)
    rc, output = validate(
        tmp_path, VALIDATED, {n: c["maximum"] + step[n] for n, c in ranges.items()}
    )
    assert rc != 0
    above = problems(output)
    for found in (below, above):
        assert sorted(p.split(":", 1)[0] for p in found) == sorted(ranges)
    rc, output = validate(tmp_path, VALIDATED, {n: c["minimum"] for n, c in ranges.items()})
    assert rc == 0, output[-3000:]
    rc, output = validate(tmp_path, VALIDATED, {n: c["maximum"] for n, c in ranges.items()})
    assert rc == 0, output[-3000:]


def test_non_numbers_in_a_range_are_refused(tmp_path: Path) -> None:
    rc, output = validate(
        tmp_path,
        ["env_health", "idle_monitor"],
        {"env_health_max_memory_pct": "nan", "idle_monitor_cpu_threshold": "inf"},
    )
    assert rc != 0
    names = [p.split(":", 1)[0] for p in problems(output)]
    assert "env_health_max_memory_pct" in names
    assert "idle_monitor_cpu_threshold" in names


def test_type_errors_and_name_errors_come_in_one_run(tmp_path: Path) -> None:
    rc, output = validate(
        tmp_path,
        ["idle_monitor", "env_health"],
        {"idle_monitor_action": "sleep", "env_health_max_disk_pc": 90},
    )
    assert rc != 0
    assert sorted(problems(output)) == [
        "env_health_max_disk_pc: not a variable of the role env_health"
        " (did you mean env_health_max_disk_pct?)",
        "idle_monitor: value of idle_monitor_action must be one of: stop, pause, hibernate,"
        " poweroff, got: sleep",
    ]


def test_every_playbook_that_runs_roles_validates_them_first() -> None:
    """Each shipped playbook that runs a role includes validate-roles.yml in pre_tasks,
    naming at least the roles its plays list."""
    missing = []
    for path in sorted((REPO / "playbooks").glob("*.yml")):
        for play in yaml.safe_load(path.read_text()):
            if "import_playbook" in play or "ansible.builtin.import_playbook" in play:
                continue
            roles = [r["role"] if isinstance(r, dict) else r for r in play.get("roles", [])]
            text = json.dumps(play)
            roles += re.findall(r'"name": "([a-z_]+)", "tasks_from"', text)
            if not roles:
                continue
            includes = [
                t
                for t in play.get("pre_tasks", [])
                if t.get("ansible.builtin.include_tasks") == "tasks/validate-roles.yml"
            ]
            if not includes:
                missing.append(f"{path.name}: no validation")
                continue
            named = json.dumps(includes[0]["vars"]["dockyard_validate_roles"])
            missing += [f"{path.name}: {r}" for r in roles if r not in named]
    assert missing == []
