"""roles/workspace_backup against what it installs: dockyard.workspace_backup (with the
package's host modules) as the host's ``workspace-backup`` command. The role's defaults are
the command's defaults, the configuration it writes has exactly the keys the command reads,
its value checks accept exactly what the command accepts, and the engine's label names are
the contract's, which the host library reads too."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from dockyard import backup, contract
from dockyard import workspace_backup as command
from dockyard.backup import engine, model
from tests.support.scripts import load_script

REPO = Path(__file__).resolve().parents[2]
ROLE = REPO / "roles" / "workspace_backup"
host = load_script("idle_monitor", "dockyard-idle-monitor.py").host
# Fixed by the role (vars/main.yml), not a variable: the binary Debian's package installs.
FIXED = {"restic"}


def role_file(*parts: str) -> Any:
    return yaml.safe_load((ROLE.joinpath(*parts)).read_text())


def test_role_defaults_are_the_commands_defaults() -> None:
    defaults = role_file("defaults", "main.yml")
    differ = {
        key: {"command": value, "role": defaults.get(f"workspace_backup_{key}")}
        for key, value in command.HOST_DEFAULTS.items()
        if key not in FIXED and defaults.get(f"workspace_backup_{key}") != value
    }
    assert differ == {}
    assert command.HOST_DEFAULTS["restic"] == "/usr/bin/restic"


def test_the_configuration_written_has_exactly_the_keys_the_command_reads() -> None:
    written = role_file("vars", "main.yml")["workspace_backup_config"]
    assert set(written) == set(command.HOST_DEFAULTS)
    assert written["restic"] == command.HOST_DEFAULTS["restic"]


def test_the_role_installs_the_packages_command_and_its_checks_run_it() -> None:
    variables = role_file("vars", "main.yml")
    tasks = (ROLE / "tasks" / "main.yml").read_text()
    # The launcher runs the package's command; host_common installs the package beside it.
    launcher = (ROLE / "files" / "dockyard-workspace-backup.py").read_text()
    assert "from dockyard.workspace_backup import main" in launcher
    assert "src: dockyard-workspace-backup.py" in tasks
    assert 'host_common_library_dir: "{{ workspace_backup_script | dirname }}"' in tasks
    assert "workspace_backup_command + ['--check-config']" in tasks
    assert "workspace_backup_command + ['run']" in tasks
    # The hook the docs tell inventories to give the idle monitor and the refresh path.
    hook = [
        variables["workspace_backup_python"],
        variables["workspace_backup_script"],
        "--config",
        variables["workspace_backup_config_file"],
        "hook",
    ]
    docs = (REPO / "docs" / "backup.md").read_text()
    assert f"idle_monitor_backup_command: [{', '.join(hook)}]" in docs
    assert f"env_health_refresh_backup_command: [{', '.join(hook)}]" in docs
    parser = command.build_parser()
    args = parser.parse_args(["--config", "/c.json", "hook", "env-1", "--reason", "idle-stop"])
    assert (args.command, args.container, args.reason) == ("hook", "env-1", "idle-stop")


def accepted(check: dict[str, str], value: str) -> bool:
    # playbooks/tasks/validate-roles.yml: `value is regex(pattern)`, which is re.search.
    return bool(re.search(check["pattern"], value))


REPOSITORIES = [
    "s3:s3.amazonaws.com/acme", "s3:https://s3.amazonaws.com/acme/a/b", "s3:http://127.0.0.1:9000/bkt",
    "s3:https://[fd00::1]:9000/bkt/", "s3:https://x.r2.cloudflarestorage.com/d.b-k",
    "s3:https://h/bkt/./x", "s3:https://h/bkt/../x", "s3:https://h/bkt/..", "s3:https://h/bkt/.",
    "s3:https://h/bkt/...x", "s3:https://u:p@h/bkt", "s3:https://h/bkt?x=1", "s3:https://h/bk",
    "s3:https://h/Bkt", "s3:https://h/bkt\n", "s3:https://h/bkt/a b", "/srv/repo", "s3:",
    "s3:https://h:99999/bkt", "s3:https://h:0/bkt", "S3:https://h/bkt", "s3:ftp://h/bkt",
    "s3:https://h/" + "b" * 63, "s3:https://h/" + "b" * 64, "s3:https://h/bkt/" + "p" * 129,
    "s3:https://-h/bkt", "s3:https://h/bkt//x",
]  # fmt: skip


def test_repository_value_check_is_the_commands_grammar() -> None:
    # Checked by the role's first task (never printing the value), not validate-roles.
    assert "workspace_backup_repository" not in role_file("meta", "value_checks.yml")
    check = {"pattern": role_file("vars", "main.yml")["workspace_backup_repository_pattern"]}
    differ = {
        text: {"value check": ok, "command": backup.repository_ok(text)}
        for text in REPOSITORIES
        if (ok := accepted(check, text)) != backup.repository_ok(text)
    }
    assert differ == {}
    assert {True, False} == {backup.repository_ok(text) for text in REPOSITORIES}


@pytest.mark.parametrize(
    ("key", "corpus", "command"),
    [
        (
            "workspace_backup_region",
            ["", "us-east-1", "auto", "EU", "eu west", "-x", "a" * 32, "a" * 33, "x\n"],
            lambda v: v == "" or bool(backup.REGION.fullmatch(v)),
        ),
        (
            "workspace_backup_read_data_subset",
            ["", "5%", "2.5%", "100%", "101%", "1/10", "0/10", "1/0", "ten", "5%\n"],
            lambda v: bool(backup.READ_DATA_SUBSET.fullmatch(v)),
        ),
        (
            "workspace_backup_label",
            ["dockyard.managed=true", "dockyard.stack=team", "x", "X=1", "x=1; rm", "", "a=b\n"],
            lambda v: _selector_ok(v),
        ),
    ],
)
def test_value_checks_are_the_commands_grammar(key: str, corpus: list[str], command: Any) -> None:
    check = role_file("meta", "value_checks.yml")[key]
    differ = {v: accepted(check, v) for v in corpus if accepted(check, v) != command(v)}
    assert differ == {}


def _selector_ok(text: str) -> bool:
    try:
        backup.check_selector(text)
    except backup.ConfigError:
        return False
    return True


def test_label_names_and_grammar_are_the_contracts() -> None:
    # One spelling: the engine and the command read the contract, as the host library does.
    for name in ("LABEL_MANAGED", "LABEL_VOLUME", "LABEL_SESSION", "LABEL_STACK"):
        assert getattr(engine, name) is getattr(contract, name), name
    assert engine.MANAGED_SELECTOR is contract.MANAGED_SELECTOR
    assert command.MANAGED_SELECTOR is contract.MANAGED_SELECTOR
    assert model.LABEL_KEY is contract.LABEL_KEY
    assert model.SELECTOR_VALUE is contract.SELECTOR_VALUE
    assert host.MANAGED_SELECTOR == contract.MANAGED_SELECTOR


def test_host_configuration_is_checked_like_the_role_documents(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text(
        '{"repository": "s3:https://h.example/bucket", "keep_last": 0, "keep_daily": 0, "keep_weekly": 0}'
    )
    with pytest.raises(backup.ConfigError, match="all 0"):
        command.load_host_config(str(path))
    path.write_text('{"repository": "s3:https://h.example/bucket", "keep_dayly": 3}')
    with pytest.raises(backup.ConfigError, match=r"unknown keys \['keep_dayly'\]"):
        command.load_host_config(str(path))
    path.write_text('{"repository": "s3:https://h.example/bucket", "label": "x=1; id"}')
    with pytest.raises(backup.ConfigError, match="label selector"):
        command.load_host_config(str(path))
    path.write_text('{"repository": "s3:https://h.example/bucket"}')
    settings, config = command.load_host_config(str(path))
    assert settings.repository == "s3:https://h.example/bucket"
    assert config["keep_last"] == command.HOST_DEFAULTS["keep_last"]
    assert command.main(["--config", str(path), "--check-config"]) == 0
    path.write_text('{"repository": ""}')
    assert command.main(["--config", str(path), "--check-config"]) == 2
