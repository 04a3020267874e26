"""Suspend when idle (issue 29 item 4): the idle monitor's ``pause`` and ``hibernate``
actions, with the fake docker CLI of tests/unit/test_idle_monitor.py (paused environments
are left out of the readings the way ``docker ps --filter status=running`` leaves them)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import pytest

from dockyard.sessions import hibernate
from tests.support.scripts import load_script
from tests.unit.test_idle_monitor import FakeDocker

idle = load_script("idle_monitor", "dockyard-idle-monitor.py")
MIN = 60.0
T0 = 1_800_000_000.0


class SuspendingDocker(FakeDocker):
    """FakeDocker whose containers can be paused: ``ps --filter status=running`` skips
    them, as the engine does; ``pause`` and ``checkpoint create`` move them."""

    def __init__(self, containers: dict[str, dict], refuse_checkpoint: str = "") -> None:
        super().__init__(containers)
        self.paused: set[str] = set()
        self.refuse_checkpoint = refuse_checkpoint

    def __call__(self, argv: Sequence[str]) -> str:
        args = list(argv)
        if args[1] == "ps":
            running_only = "status=running" in args
            names = [n for n in self.containers if not (running_only and n in self.paused)]
            return "\n".join(names) + "\n"
        if args[1] == "pause":
            self.paused.add(args[2])
        if args[1:3] == ["checkpoint", "create"] and self.refuse_checkpoint:
            self.actions.append(args)
            raise idle.host.CommandError(args, 1, self.refuse_checkpoint)
        return super().__call__(argv)


def _config(tmp_path: Path, action: str, **extra: object) -> tuple[Path, Path]:
    config, state = tmp_path / "idle.json", tmp_path / "state.json"
    config.write_text(json.dumps({"state_file": str(state), "action": action, **extra}))
    return config, state


def _audit(action: str) -> list[dict]:
    lines = Path(os.environ["DOCKYARD_AUDIT_LOG"]).read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["action"] == action]


QUIET = {"cpu": "0.0", "procs": ["bash"], "clients": 0}
BUSY = {"cpu": "0.0", "procs": ["bash", "claude"], "clients": 0}


@pytest.mark.parametrize("action", ["pause", "hibernate"])
def test_suspending_actions_pick_the_idle_environments_like_stop(action: str) -> None:
    quiet = idle.Reading("a", 0, 0, 0.0)
    busy = idle.Reading("b", 1, 0, 0.0)
    decision = idle.decide(
        [quiet, busy],
        {"a": T0, "b": T0},
        T0 + 31 * MIN,
        idle_minutes=30,
        cpu_threshold=5,
        action=action,
    )
    assert (decision.stop, decision.poweroff) == (["a"], False)


def test_pause_mode_pauses_instead_of_stopping_and_leaves_paused_ones_alone(
    tmp_path: Path,
) -> None:
    config, state = _config(tmp_path, "pause", backup_command=["/usr/local/bin/backup"])
    fake = SuspendingDocker({"env-a": dict(QUIET), "env-b": dict(BUSY)})
    assert idle.main(["--config", str(config)], runner=fake, clock=lambda: T0) == 0
    assert idle.main(["--config", str(config)], runner=fake, clock=lambda: T0 + 31 * MIN) == 0
    # Paused, not stopped; no backup before a pause (nothing leaves the host's memory).
    assert fake.actions == [["docker", "pause", "env-a"]]
    assert json.loads(state.read_text()) == {"env-b": T0 + 31 * MIN}
    # Paused, it is not read again: nothing more is done to it, however long it sleeps.
    for later in (91, 125, 160):
        now = T0 + later * MIN
        assert idle.main(["--config", str(config)], runner=fake, clock=lambda t=now: t) == 0
    assert fake.actions == [["docker", "pause", "env-a"]]
    assert "env-a" not in json.loads(state.read_text())
    paused = [e for e in _audit("idle-pause") if e["session"] == "a"]
    assert paused
    assert (paused[-1]["result"], paused[-1]["detail"]) == ("ok", "idle")


def test_hibernate_mode_backs_up_then_checkpoints_with_dockyards_name(tmp_path: Path) -> None:
    config, _ = _config(tmp_path, "hibernate", backup_command=["/usr/local/bin/backup"])
    fake = SuspendingDocker({"env-a": dict(QUIET)})
    idle.main(["--config", str(config)], runner=fake, clock=lambda: T0)
    assert idle.main(["--config", str(config)], runner=fake, clock=lambda: T0 + 31 * MIN) == 0
    assert fake.actions == [
        ["/usr/local/bin/backup", "env-a", "--reason", "idle-stop"],
        ["docker", "checkpoint", "rm", "env-a", "dockyard-hibernate"],
        ["docker", "checkpoint", "create", "env-a", "dockyard-hibernate"],
    ]
    assert _audit("idle-hibernate")[-1]["result"] == "ok"


def test_a_checkpoint_the_host_refuses_is_reported_and_the_environment_left_running(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config, state = _config(tmp_path, "hibernate")
    why = "Error response from daemon: This experimental feature is disabled by default."
    fake = SuspendingDocker({"env-a": dict(QUIET)}, refuse_checkpoint=why)
    idle.main(["--config", str(config)], runner=fake, clock=lambda: T0)
    assert idle.main(["--config", str(config)], runner=fake, clock=lambda: T0 + 31 * MIN) == 1
    assert "ERROR: dockyard-idle: hibernate of env-a failed" in capsys.readouterr().err
    assert json.loads(state.read_text()) == {"env-a": T0}  # still watched: it still runs
    failed = _audit("idle-hibernate")[-1]
    assert failed["result"] == "error"
    assert "experimental feature is disabled" in failed["detail"]


def test_the_checkpoint_name_is_the_one_resume_restores() -> None:
    assert idle.CHECKPOINT == hibernate.CHECKPOINT


def _version(experimental: str, criu_fails: str = "") -> FakeDocker:
    class Probe(FakeDocker):
        def __call__(self, argv: Sequence[str]) -> str:
            args = list(argv)
            if args[1] == "version":
                return experimental + "\n"
            if args[-1] == "check":
                if criu_fails:
                    raise idle.host.CommandError(args, 1, criu_fails)
                return "Looks good.\n"
            raise AssertionError(f"--check-config ran {args}")

    return Probe({})


def test_check_config_refuses_hibernate_where_the_host_cannot_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(idle.shutil, "which", lambda name: f"/usr/sbin/{name}")
    config, _ = _config(tmp_path, "hibernate")
    vdso = "Error (criu/vdso.c:613): vdso: Failed to fill self vdso symtable"
    args = ["--config", str(config), "--check-config"]
    assert idle.main(args, runner=_version("false", vdso)) == 2
    err = capsys.readouterr().err
    assert "ERROR: action 'hibernate' is not possible on this host" in err
    assert "the engine does not run in experimental mode (Server.Experimental: false" in err
    assert f"`criu check` fails: {vdso}" in err
    assert "(allowed here: stop, pause, poweroff)" in err
    assert idle.main(args, runner=_version("true")) == 0
    # pause needs nothing of the host beyond the engine: nothing is probed.
    pause_config, _ = _config(tmp_path, "pause")
    assert idle.main(["--config", str(pause_config), "--check-config"], runner=_version("x")) == 0


def test_check_config_without_criu_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(idle.shutil, "which", lambda name: None)
    monkeypatch.setattr(idle, "CRIU", ())
    config, _ = _config(tmp_path, "hibernate")
    assert idle.main(["--config", str(config), "--check-config"], runner=_version("true")) == 2
    assert "criu is not installed" in capsys.readouterr().err
