"""The idle monitor against real containers: agent processes and attached tmux clients
keep an environment, idle ones are stopped, and power-off goes through the configured
command (a harmless one here). Containers are selected by this test's own label, so the
monitor never sees anything else on the engine."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.support.ansible import TargetFleet
from tests.support.engine import RUN_ID, exec_ok, wait_for
from tests.support.scripts import load_script

pytestmark = pytest.mark.docker

idle = load_script("idle_monitor", "dockyard-idle-monitor.py")
T0 = 1_800_000_000.0


def config(tmp_path: Path, label: str, **extra: object) -> Path:
    path = tmp_path / "idle.json"
    path.write_text(
        json.dumps(
            {
                "state_file": str(tmp_path / "state.json"),
                "label": label,
                "idle_minutes": 30,
                **extra,
            }
        )
    )
    return path


def test_agent_process_and_tmux_client_keep_environments_idle_ones_stop(
    fleet: TargetFleet, tmp_path: Path
) -> None:
    label = f"dockyard.idle-test={RUN_ID}-stop"
    agent, attached, quiet = fleet.start(3, labels={"dockyard.idle-test": f"{RUN_ID}-stop"})
    # A process whose command name is `claude`, as the real CLI's is.
    agent.exec_run(
        ["bash", "-c", "ln -s /bin/sleep /tmp/claude && /tmp/claude 600"], detach=True, user="1000"
    )
    # A tmux client attached to the session (needs a terminal, as a human's would).
    subprocess.Popen(
        ["docker", "exec", "-t", "-u", "1000", attached.name, "tmux", "attach", "-t", "main"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for(
        lambda: "claude" in exec_ok(agent, ["ps", "-eo", "comm"]).split(),
        60,
        what="fake agent process",
    )
    wait_for(
        lambda: exec_ok(attached, ["tmux", "list-clients"], user="1000").strip() != "",
        60,
        what="tmux client",
    )

    path = config(tmp_path, label)
    assert idle.main(["--config", str(path)], clock=lambda: T0) == 0
    assert idle.main(["--config", str(path)], clock=lambda: T0 + 31 * 60) == 0
    for container in (agent, attached, quiet):
        container.reload()
    assert (agent.status, attached.status, quiet.status) == ("running", "running", "exited")
    assert set(json.loads((tmp_path / "state.json").read_text())) == {agent.name, attached.name}


def test_poweroff_when_all_idle_runs_the_injected_command(
    fleet: TargetFleet, tmp_path: Path
) -> None:
    label = f"dockyard.idle-test={RUN_ID}-off"
    fleet.start(2, labels={"dockyard.idle-test": f"{RUN_ID}-off"})
    marker = tmp_path / "powered-off"
    path = config(tmp_path, label, action="poweroff", poweroff_command=["touch", str(marker)])
    idle.main(["--config", str(path)], clock=lambda: T0)
    assert not marker.exists()
    idle.main(["--config", str(path)], clock=lambda: T0 + 30 * 60)
    assert marker.exists()
