"""Each role used alone (not through a playbook's up-front validation) applies its own
meta/value_checks.yml first: a malformed and an out-of-range value are both refused, named
with their key, before any other task of the role runs."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.support.ansible import LOCAL, REPO, VENV_BIN

BAD_TEXT = "bad value;`x`"
# Options a role needs before its first task (argument_specs' required ones).
REQUIRED = {"workspace_backup": {"workspace_backup_repository": "s3:minio.example:9000/bucket"}}


def checked_roles() -> list[str]:
    return sorted(
        p.parent.parent.name
        for p in (REPO / "roles").glob("*/meta/value_checks.yml")
        if p.parent.parent.name != "control_plane"  # its own validation (validate.yml)
    )


def bad_values(role: str) -> dict[str, Any]:
    """One malformed string and one number beyond its range, when the role checks those."""
    checks = yaml.safe_load((REPO / "roles" / role / "meta" / "value_checks.yml").read_text())
    specs = yaml.safe_load((REPO / "roles" / role / "meta" / "argument_specs.yml").read_text())
    options = specs["argument_specs"]["main"]["options"]
    values: dict[str, Any] = {}
    for key, check in checks.items():
        kind = options[key].get("type", "str")
        candidates: list[Any] = [BAD_TEXT] if kind in ("str", "path") else [7, 0, 99999999]
        rejected = [c for c in candidates if not re.search(check.get("pattern", ""), str(c))]
        if "pattern" in check and rejected:
            values[key] = rejected[0]
            break
    for key, check in checks.items():
        if "maximum" in check and options[key].get("type") in ("int", "float"):
            values[key] = int(check["maximum"]) + 1
            break
    return values


def test_every_role_refuses_bad_values_of_its_own_before_any_task(tmp_path: Path) -> None:
    roles = checked_roles()
    assert len(roles) >= 8
    # One host per role (all local) and one play: each host runs its role alone.
    hosts, wanted = {}, {}
    for role in roles:
        values = bad_values(role)
        assert values, role
        wanted[role] = values
        hosts[role] = {"ansible_connection": "local", **LOCAL, **REQUIRED.get(role, {}), **values}
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(yaml.safe_dump({"all": {"hosts": hosts}}))
    plays = [
        {
            "name": "Each role alone",
            "hosts": "all",
            "gather_facts": False,
            "tasks": [
                {
                    "name": "Apply the role",
                    "ansible.builtin.include_role": {"name": "{{ inventory_hostname }}"},
                }
            ],
        }
    ]
    playbook = tmp_path / "alone.yml"
    playbook.write_text(yaml.safe_dump(plays, sort_keys=False))
    run = subprocess.run(
        [str(VENV_BIN / "ansible-playbook"), "-i", str(inventory), str(playbook), "--check"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={
            **os.environ,
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
            "ANSIBLE_ROLES_PATH": str(REPO / "roles"),
            "ANSIBLE_CALLBACK_RESULT_FORMAT": "json",
        },
        check=False,
    )
    output = run.stdout + run.stderr
    assert run.returncode != 0, output[-3000:]
    failures = {
        host: json.loads(result)["msg"]
        for host, result in re.findall(r"^fatal: \[(\S+)\]: FAILED! => (\{.*\})$", output, re.M)
    }
    assert sorted(failures) == roles, output[-6000:]
    for role, values in wanted.items():
        for key, value in values.items():
            assert f"{key}: {json.dumps(str(value))} is not allowed (allowed: " in failures[role], (
                role,
                failures[role],
            )
    # Nothing of any role ran on a host before its check failed.
    assert "Refuse malformed and out-of-range variables of the calling role" in output
    # Nothing changed: the checks come before every task that changes anything.
    changed = dict(re.findall(r"^(\S+)\s+:\s+ok=\d+\s+changed=(\d+)", output, re.M))
    assert changed == dict.fromkeys(roles, "0"), changed
