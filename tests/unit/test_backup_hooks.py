"""Backups without an engine: what the helper container is given (secrets on stdin only),
how restic's failures are named, the host files' modes, and the hooks in the idle
monitor (backup before stop and before power-off, no power-off after a failed backup
unless told) and the host library. The same paths on the real engine, with real restic
and storage: tests/integration/test_backup_on_engine.py."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import typer

from dockyard import backup, errors, terminal
from dockyard import workspace_backup as command
from tests.support.scripts import load_script

idle = load_script("idle_monitor", "dockyard-idle-monitor.py")
host = idle.host
T0 = 1_800_000_000.0
MIN = 60.0
KEY_ID, SECRET = "AKIAHOOKTESTKEYID", "hook-test-secret-key-value"
VOLUME = {
    "Name": "dockyard-t-s1-workspace",
    "Labels": {
        "dockyard.volume": "workspace",
        "dockyard.session": "s1",
        "dockyard.stack": "t",
        "dockyard.managed": "true",
    },
}


class FakeEngine:
    """The docker CLI as backups use it, with restic's answers scripted per subcommand."""

    def __init__(self, restic: dict[str, list[tuple[int, str, str]]]) -> None:
        self.restic = restic
        self.calls: list[tuple[list[str], str | None]] = []

    def __call__(self, argv: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        args = list(argv)
        self.calls.append((args, kwargs.get("input")))
        if args[1:3] == ["volume", "inspect"]:
            return subprocess.CompletedProcess(args, 0, json.dumps([VOLUME]), "")
        if args[1:3] == ["volume", "ls"]:
            return subprocess.CompletedProcess(args, 0, VOLUME["Name"] + "\n", "")
        if args[1] == "ps":
            return subprocess.CompletedProcess(args, 0, "", "")
        if args[1] == "run":
            command = args[args.index("restic") + 1 :] if "restic" in args else []
            verb = next((a for a in command if not a.startswith("-") and "=" not in a), "")
            code, out, err = self.restic[verb].pop(0)
            return subprocess.CompletedProcess(args, code, out, err)
        raise AssertionError(f"unexpected docker call {args}")

    def helper_runs(self) -> list[tuple[list[str], str]]:
        return [(argv, stdin or "") for argv, stdin in self.calls if argv[1] == "run"]


@pytest.fixture
def settings(tmp_path: Path) -> backup.Settings:
    credentials = tmp_path / "credentials"
    credentials.mkdir(mode=0o700)
    keys = credentials / "s3-credentials"
    keys.write_text(f"[default]\naws_access_key_id = {KEY_ID}\naws_secret_access_key = {SECRET}\n")
    keys.chmod(0o600)
    return backup.Settings(
        repository="s3:http://127.0.0.1:9/bucket/pre",
        credentials_dir=str(credentials),
        cache_dir=str(tmp_path / "cache"),
    )


SUMMARY = json.dumps(
    {
        "message_type": "summary",
        "snapshot_id": "0123abcd",
        "total_files_processed": 3,
        "total_bytes_processed": 42,
        "data_added": 40,
    }
)
UNINITIALISED = "Fatal: unable to open config file: Stat: The specified key does not exist.\nIs there a repository at the following location?\ns3:http://x/y\n"


def test_a_first_backup_creates_a_private_password_and_passes_secrets_on_stdin_only(
    settings: backup.Settings,
) -> None:
    engine = FakeEngine(
        {
            "cat": [(1, "", UNINITIALISED)],
            "init": [(0, "created", "")],
            "backup": [(0, SUMMARY, "")],
        }
    )
    engines = backup.Backups(settings, environ={"NO_PROXY": "127.0.0.1"}, runner=engine)
    workspace = engines.workspaces()[0]
    result = engines.backup(workspace, "scheduled")
    assert (result.snapshot, result.files, result.bytes, result.added_bytes) == (
        "0123abcd",
        3,
        42,
        40,
    )
    password_file = Path(settings.credentials_dir) / "passwords" / "t" / "s1"
    password = password_file.read_text().strip()
    assert len(password) >= 40
    assert stat.S_IMODE(password_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(password_file.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(password_file.parent.parent.stat().st_mode) == 0o700
    runs = engine.helper_runs()
    assert [argv[argv.index("restic") + 1] for argv, _ in runs] == ["cat", "init", "backup"]
    for argv, stdin in runs:
        text = " ".join(argv)
        for secret in (password, KEY_ID, SECRET):
            assert secret not in text, f"{secret!r} in the helper's argv: {text}"
        assert f"AWS_ACCESS_KEY_ID={KEY_ID}\nAWS_SECRET_ACCESS_KEY={SECRET}\n\n" in stdin
        # The helper: root reading only (no host user's uid: issue 25.9), the host's
        # namespaces also under userns-remap, the host's restic read-only.
        for flag in (
            "--user 0:0 --cap-add DAC_READ_SEARCH",
            "--cap-drop ALL",
            "--read-only",
            "--pid host",
            "--userns host",
        ):
            assert flag in text
        assert "--user 1000" not in text
        assert f"{settings.restic}:/usr/local/bin/restic:ro" in argv
        assert "RESTIC_REPOSITORY=s3:http://127.0.0.1:9/bucket/pre/t/s1" in argv
        assert "NO_PROXY=127.0.0.1" in argv
    # The probe runs with a throwaway password; init and backup with the session's.
    assert not runs[0][1].endswith(f"\n{password}\n")
    assert runs[1][1].endswith(f"\n{password}\n")
    assert runs[2][1].endswith(f"\n{password}\n")
    backup_argv = runs[2][0]
    assert "dockyard-t-s1-workspace:/data:ro" in backup_argv


def test_a_repository_without_its_password_file_is_an_error_never_a_new_password(
    settings: backup.Settings,
) -> None:
    engine = FakeEngine({"cat": [(1, "", "Fatal: wrong password or no key found\n")]})
    engines = backup.Backups(settings, environ={}, runner=engine)
    with pytest.raises(backup.PasswordError) as caught:
        engines.backup(engines.workspaces()[0])
    assert "session s1" in str(caught.value)
    assert "exists but the password file" in str(caught.value)
    assert not (Path(settings.credentials_dir) / "passwords" / "t" / "s1").exists()


@pytest.mark.parametrize(
    ("stderr", "kind", "fragment"),
    [
        ("Fatal: wrong password or no key found\n", backup.PasswordError, "wrong password"),
        (
            'Fatal: unable to open config file: Stat: Get "http://127.0.0.1:9/b/?location=": '
            "dial tcp 127.0.0.1:9: connect: connection refused\nIs there a repository at the "
            "following location?\n",
            backup.StorageError,
            "unreachable (unable to open config file",
        ),
        (
            "Fatal: ... The AWS Access Key Id you provided does not exist",
            backup.StorageError,
            "refused the keys",
        ),
        (
            "unable to create lock in backend: repository is already locked by PID 7",
            backup.Busy,
            "locked",
        ),
        ("", backup.BackupError, "killed (SIGKILL)"),
    ],
)
def test_restics_failures_are_named(
    settings: backup.Settings, stderr: str, kind: type, fragment: str
) -> None:
    engines = backup.Backups(settings, environ={}, runner=FakeEngine({}))
    repo = backup.Repo("t", "s1")
    code = 137 if not stderr else 1
    error = engines._error(repo, "backup", subprocess.CompletedProcess([], code, "", stderr))
    assert type(error) is kind
    assert fragment in str(error)
    assert str(error).startswith("session s1 (stack t): backup failed")


def test_secret_files_others_can_read_are_refused(settings: backup.Settings) -> None:
    keys = Path(settings.credentials_dir) / "s3-credentials"
    keys.chmod(0o644)
    engines = backup.Backups(settings, environ={}, runner=FakeEngine({}))
    with pytest.raises(backup.PasswordError, match="mode 0644 lets others in"):
        engines.files.storage_keys()
    keys.chmod(0o600)
    Path(settings.credentials_dir).chmod(0o755)
    with pytest.raises(backup.PasswordError, match="mode 0755"):
        engines.files.credentials_dir()


def test_a_remote_engine_is_refused(settings: backup.Settings) -> None:
    with pytest.raises(backup.ConfigError, match="backups run on the Docker host"):
        backup.Backups(settings, environ={"DOCKER_HOST": "ssh://agent@far"})


# --- the host library and the idle monitor --------------------------------------------------


def test_backup_first_runs_the_hook_with_the_container_and_reason() -> None:
    seen: list[list[str]] = []

    def runner(argv: Sequence[str]) -> str:
        seen.append(list(argv))
        if "bad" in argv:
            raise host.CommandError(argv, 1, "ERROR: session bad: storage unreachable")
        return ""

    assert host.backup_first([], "env-a", "idle-stop", runner) is None
    assert seen == []
    assert host.backup_first(["hook-cmd", "hook"], "env-a", "idle-stop", runner) is None
    assert seen == [["hook-cmd", "hook", "env-a", "--reason", "idle-stop"]]
    why = host.backup_first(["hook-cmd", "hook"], "bad", "poweroff", runner)
    assert why is not None
    assert "storage unreachable" in why


class IdleEngine:
    """docker ps/stats/top/exec answers for idle environments; records every action."""

    def __init__(self, names: list[str], failing: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        self.names = names
        self.failing = failing
        self.actions: list[list[str]] = []

    def __call__(self, argv: Sequence[str]) -> str:
        args = list(argv)
        if args[0] == "docker" and args[1] == "ps":
            return "\n".join(self.names) + "\n"
        if args[0] == "docker" and args[1] == "stats":
            return "".join(f"{n} 0.00%\n" for n in self.names)
        if args[0] == "docker" and args[1] == "top":
            return "PID COMMAND\n1 bash\n"
        if args[0] == "docker" and args[1] == "exec":
            raise host.CommandError(args, 1, "no server running")
        if args[0] == "docker" and args[1] == "inspect":  # labels for the audit line
            return "{}"
        self.actions.append(args)
        if args[0] == "backup-hook" and args[1] in self.failing:
            raise host.CommandError(args, 1, f"ERROR: session {args[1]}: storage unreachable")
        return ""


def idle_config(tmp_path: Path, **extra: Any) -> Path:
    path = tmp_path / "idle.json"
    path.write_text(
        json.dumps(
            {"state_file": str(tmp_path / "state.json"), "backup_command": ["backup-hook"], **extra}
        )
    )
    return path


def test_idle_stop_backs_each_workspace_up_first(tmp_path: Path) -> None:
    engine = IdleEngine(["env-a", "env-b"], failing={"env-b"})
    path = idle_config(tmp_path)
    assert idle.main(["--config", str(path)], runner=engine, clock=lambda: T0) == 0
    assert idle.main(["--config", str(path)], runner=engine, clock=lambda: T0 + 31 * MIN) == 1
    assert engine.actions == [
        ["backup-hook", "env-a", "--reason", "idle-stop"],
        ["docker", "stop", "env-a"],
        ["backup-hook", "env-b", "--reason", "idle-stop"],
        # The volume stays on the host: a failed backup is reported, the stop goes on.
        ["docker", "stop", "env-b"],
    ]


def test_no_power_off_after_a_failed_backup_unless_told(tmp_path: Path) -> None:
    engine = IdleEngine(["env-a", "env-b"], failing={"env-b"})
    path = idle_config(tmp_path, action="poweroff", poweroff_command=["fake-poweroff"])
    idle.main(["--config", str(path)], runner=engine, clock=lambda: T0)
    assert idle.main(["--config", str(path)], runner=engine, clock=lambda: T0 + 31 * MIN) == 1
    assert engine.actions == [
        ["backup-hook", "env-a", "--reason", "poweroff"],
        ["backup-hook", "env-b", "--reason", "poweroff"],
    ]
    engine.actions.clear()
    told = idle_config(
        tmp_path,
        action="poweroff",
        poweroff_command=["fake-poweroff"],
        poweroff_without_backup=True,
    )
    assert idle.main(["--config", str(told)], runner=engine, clock=lambda: T0 + 32 * MIN) == 1
    assert engine.actions[-1] == ["fake-poweroff"]
    engine.actions.clear()
    engine.failing = set()
    assert idle.main(["--config", str(path)], runner=engine, clock=lambda: T0 + 33 * MIN) == 0
    assert engine.actions[-1] == ["fake-poweroff"]


@pytest.mark.parametrize("command", ["backup-hook", [""], [1], {"argv": []}])
def test_backup_command_must_be_an_argv_list(tmp_path: Path, command: Any) -> None:
    path = tmp_path / "idle.json"
    path.write_text(json.dumps({"backup_command": command}))
    assert idle.main(["--config", str(path), "--check-config"]) == 2


def test_the_host_state_file_survives_a_rewrite(tmp_path: Path) -> None:
    state = command.HostState(last_success={"t/s1": T0}, last_failure={"t/s2": "x"})
    path = tmp_path / "state.json"
    state.save(path)
    assert command.HostState.load(path) == state
    assert not any(name.startswith(".state.") for name in os.listdir(tmp_path))


# --- the error root -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "kind", "code", "status"),
    [
        (backup.BackupError("x"), errors.Failed, 1, 502),
        (backup.StorageError("x"), errors.Failed, 1, 502),
        (backup.ConfigError("x"), errors.InvalidInput, 2, 422),
        (backup.NotFound("x"), errors.NotFound, 4, 404),
        (backup.NotEmpty("x"), errors.Conflict, 1, 409),
        (backup.Busy("x"), errors.Conflict, 1, 409),
    ],
)
def test_backup_errors_are_kinds_of_the_error_root(
    error: backup.BackupError, kind: type, code: int, status: int
) -> None:
    """Every face reports a backup failure by the root's kind: the CLI's one handler, the
    host command's exit code, the HTTP status to come."""
    assert isinstance(error, kind)
    assert isinstance(error, backup.BackupError)  # callers still catch the engine's root
    assert (error.exit_code, error.http_status) == (code, status)
    with pytest.raises(typer.Exit) as caught, terminal.errors(as_json=True):
        raise error
    assert caught.value.exit_code == code
