"""Idle decisions from fake readings and a fake clock (R-HOST-1)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import pytest

from tests.support.scripts import load_script

idle = load_script("idle_monitor", "dockyard-idle-monitor.py")
Reading = idle.Reading
MIN = 60.0
T0 = 1_800_000_000.0


def quiet(name: str, cpu: float = 0.5) -> object:
    return Reading(name, agent_processes=0, tmux_clients=0, cpu_percent=cpu)


def decide(readings: list, state: dict, now: float, action: str = "stop") -> object:
    return idle.decide(readings, state, now, idle_minutes=30, cpu_threshold=5.0, action=action)


def test_new_environment_gets_the_full_idle_period() -> None:
    decision = decide([quiet("a")], {}, T0)
    assert decision.stop == []
    assert decision.state == {"a": T0}


def test_quiet_for_the_idle_period_is_stopped() -> None:
    assert decide([quiet("a")], {"a": T0}, T0 + 29 * MIN).stop == []
    decision = decide([quiet("a")], {"a": T0}, T0 + 30 * MIN)
    assert decision.stop == ["a"]
    assert decision.notes == ["a: idle for 30 min"]


@pytest.mark.parametrize(
    ("reading", "why"),
    [
        (Reading("a", 1, 0, 0.0), "1 agent process(es)"),
        (Reading("a", 0, 2, 0.0), "2 tmux client(s) attached"),
        (Reading("a", 0, 0, 37.5), "cpu 37.5% > 5%"),
    ],
)
def test_agent_process_tmux_client_or_cpu_keeps_it_busy(reading: object, why: str) -> None:
    decision = decide([reading], {"a": T0}, T0 + 5 * 60 * MIN)
    assert decision.stop == []
    assert decision.state == {"a": T0 + 5 * 60 * MIN}
    assert decision.notes == [f"a: busy ({why})"]


def test_cpu_at_the_threshold_is_not_busy() -> None:
    assert decide([quiet("a", cpu=5.0)], {"a": T0}, T0 + 31 * MIN).stop == ["a"]


def test_only_idle_environments_are_stopped() -> None:
    readings = [quiet("a"), Reading("b", 1, 0, 0.0), quiet("c")]
    decision = decide(readings, {"a": T0, "b": T0, "c": T0 + 20 * MIN}, T0 + 31 * MIN)
    assert decision.stop == ["a"]
    assert decision.state == {"a": T0, "b": T0 + 31 * MIN, "c": T0 + 20 * MIN}


def test_poweroff_only_when_all_are_idle() -> None:
    state = {"a": T0, "b": T0}
    some_busy = decide([quiet("a"), Reading("b", 0, 1, 0.0)], state, T0 + 40 * MIN, "poweroff")
    assert (some_busy.poweroff, some_busy.stop) == (False, [])
    all_idle = decide([quiet("a"), quiet("b")], state, T0 + 40 * MIN, "poweroff")
    assert (all_idle.poweroff, all_idle.stop) == (True, [])
    assert decide([], {}, T0, "poweroff").poweroff is False  # no environments: leave it up


def test_vanished_environments_leave_the_state() -> None:
    assert decide([quiet("a")], {"a": T0, "gone": T0}, T0 + MIN).state == {"a": T0}


def test_unknown_action_is_refused() -> None:
    with pytest.raises(
        ValueError,
        match=r"action 'sleep' is not allowed \(allowed: stop, pause, hibernate, poweroff\)",
    ):
        decide([], {}, T0, "sleep")


class FakeDocker:
    """Answers the docker CLI calls the monitor makes; records the ones that act."""

    def __init__(self, containers: dict[str, dict]) -> None:
        self.containers = containers
        self.actions: list[list[str]] = []

    def __call__(self, argv: Sequence[str]) -> str:
        args = list(argv)
        if args[1] == "ps":
            return "\n".join(self.containers) + "\n"
        if args[1] == "stats":
            return "".join(f"{n} {c['cpu']}%\n" for n, c in self.containers.items())
        if args[1] == "top":
            procs = self.containers[args[2]]["procs"]
            return "PID COMMAND\n" + "".join(f"{100 + i} {p}\n" for i, p in enumerate(procs))
        if args[1] == "exec":
            clients = self.containers[args[4]]["clients"]
            if clients is None:  # no tmux server: `tmux list-clients` fails
                raise idle.host.CommandError(args, 1, "no server running on /tmp/tmux-1000/default")
            return "\n".join(f"/dev/pts/{i}" for i in range(clients))
        if args[1] == "inspect":  # the labels an audit line names the session by
            return json.dumps(
                {"dockyard.session": args[-1].removeprefix("env-"), "dockyard.stack": "dev"}
            )
        self.actions.append(args)
        return ""


def test_main_reads_decides_stops_and_remembers(tmp_path: Path) -> None:
    config = tmp_path / "idle.json"
    state = tmp_path / "state" / "idle.json"
    config.write_text(json.dumps({"state_file": str(state), "idle_minutes": 30}))
    fake = FakeDocker(
        {
            "env-a": {"cpu": "0.10", "procs": ["bash", "tmux: server", "sleep"], "clients": None},
            "env-b": {"cpu": "0.00", "procs": ["bash", "claude"], "clients": 0},
            "env-c": {"cpu": "0.00", "procs": ["bash"], "clients": 1},
        }
    )
    assert idle.main(["--config", str(config)], runner=fake, clock=lambda: T0) == 0
    assert fake.actions == []
    assert idle.main(["--config", str(config)], runner=fake, clock=lambda: T0 + 31 * MIN) == 0
    assert fake.actions == [["docker", "stop", "env-a"]]
    assert json.loads(state.read_text()) == {"env-b": T0 + 31 * MIN, "env-c": T0 + 31 * MIN}
    # The stop is in the audit trail, named by the container's labels.
    lines = [
        json.loads(line) for line in Path(os.environ["DOCKYARD_AUDIT_LOG"]).read_text().splitlines()
    ]
    stops = [e for e in lines if e["action"] == "idle-stop" and e["session"] == "a"]
    assert stops
    assert (stops[-1]["stack"], stops[-1]["result"], stops[-1]["actor"]) == (
        "dev",
        "ok",
        "host:dockyard-idle-monitor",
    )


def test_main_powers_off_through_the_configured_command(tmp_path: Path) -> None:
    config = tmp_path / "idle.json"
    config.write_text(
        json.dumps(
            {
                "state_file": str(tmp_path / "s.json"),
                "action": "poweroff",
                "poweroff_command": ["/usr/local/bin/fake-poweroff", "--now"],
            }
        )
    )
    fake = FakeDocker({"env-a": {"cpu": "0.0", "procs": ["bash"], "clients": 0}})
    idle.main(["--config", str(config)], runner=fake, clock=lambda: T0)
    idle.main(["--config", str(config)], runner=fake, clock=lambda: T0 + 30 * MIN)
    assert fake.actions == [["/usr/local/bin/fake-poweroff", "--now"]]


def test_dry_run_changes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "idle.json"
    state = tmp_path / "s.json"
    state.write_text(json.dumps({"env-a": T0}))
    config.write_text(json.dumps({"state_file": str(state)}))
    fake = FakeDocker({"env-a": {"cpu": "0.0", "procs": [], "clients": 0}})
    idle.main(["--config", str(config), "--dry-run"], runner=fake, clock=lambda: T0 + 60 * MIN)
    assert fake.actions == []
    assert "would stop ['env-a']" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (
            {"action": "sleep"},
            "action 'sleep' is not allowed (allowed: stop, pause, hibernate, poweroff)",
        ),
        ({"idle_minute": 5}, "unknown keys ['idle_minute']"),
        (
            {"poweroff_command": "systemctl poweroff"},
            'poweroff_command: "systemctl poweroff" is not allowed (allowed: a list)',
        ),
        (
            {"poweroff_command": []},
            "poweroff_command: [] is not allowed (allowed: a non-empty argv list of strings)",
        ),
        ({"idle_minutes": "30"}, 'idle_minutes: "30" is not allowed (allowed: a whole number)'),
        ({"idle_minutes": 0}, "idle_minutes 0 / cpu_threshold 5.0 are not allowed"),
        ({"label": "dockyard.managed=true\n"}, 'label selector: "dockyard.managed=true\\n"'),
    ],
)
def test_bad_config_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], config: dict, message: str
) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps(config))
    fake = FakeDocker({})
    assert idle.main(["--config", str(path)], runner=fake) == 2
    assert message in capsys.readouterr().err
    assert fake.actions == []


def test_check_config_reads_nothing_from_the_engine(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps({**idle.DEFAULTS, "poweroff_command": ["/bin/true"]}))

    def no_engine(argv: Sequence[str]) -> str:
        raise AssertionError(f"--check-config ran {argv}")

    assert idle.main(["--config", str(path), "--check-config"], runner=no_engine) == 0


def test_an_engine_that_cannot_be_read_is_an_error_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"state_file": str(tmp_path / "s.json"), "docker": "/nonexistent"}))
    assert idle.main(["--config", str(path)]) == 1
    assert "ERROR: cannot read the environments: /nonexistent ps --filter failed (127)" in (
        capsys.readouterr().err
    )
    assert not (tmp_path / "s.json").exists()
