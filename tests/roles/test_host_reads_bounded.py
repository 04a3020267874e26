"""Root host scripts bound what they read from an environment (issue 25 item 3), on the
engine.

The agent inside an environment is hostile. What it can really do to the host scripts'
probes: every probe runs in its container as the agent's own uid, so the agent sees the
probe's processes in /proc, can open their stdout (``/proc/<pid>/fd/1``) and write into it
or keep it open, and can stop them (SIGSTOP); it also owns the tmux server socket the idle
monitor asks, and /run/secrets, whose tar refresh reads. :data:`AGENT` does the first two
as a small watcher started as the agent: ``flood`` writes into the probe's stdout forever,
``hold`` stops the probe and keeps its stdout open.

Against one flooding, one holding and one healthy environment, the health report and the
idle monitor (each run as the host runs it, a separate process) finish, report the
hostile two with the bound they hit, measure the healthy one, stay small in memory (max
peak RSS of the script's process), and leave no probe process in the hostile
containers. Refresh refuses an oversize /run/secrets before it stops anything.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest
from docker.models.containers import Container

from tests.support.ansible import TargetFleet
from tests.support.engine import RUN_ID, exec_ok, wait_for

pytestmark = pytest.mark.docker

REPO = Path(__file__).resolve().parents[2]
HEALTH = REPO / "roles" / "env_health" / "files" / "dockyard-health.py"
IDLE = REPO / "roles" / "idle_monitor" / "files" / "dockyard-idle-monitor.py"
LABEL = "dockyard.bounds-test"
# The healthy environment's probe must end within it: it counts from the exec's create, so
# on a loaded 2-core machine a few seconds can go to the engine alone. The holding
# environment's probe takes all of it (the tests wait that long, once each).
PROBE_TIMEOUT_S = 8
SLOW_DF = (
    "printf '#!/bin/sh\\nsleep 0.3\\nexec /bin/df \"$@\"\\n' > /usr/local/bin/df"
    " && chmod 755 /usr/local/bin/df && command -v df | grep -qx /usr/local/bin/df"
)
CATCH_ATTEMPTS = 3  # health report runs until both hostile agents caught its probe
# A run still going after this is stalled: every bound the scripts set is far below it
# (and below the 120 s a single read could wait before the fix).
STALLED_S = 90
# The scripts' own memory: a few tens of MB of Python; an unbounded read of a flood is
# hundreds within seconds.
MAX_RSS_KB = 64 * 1024
HEALTH_MARKER = "memory.events"  # in the health probe's command line (INSIDE_SCRIPT)
IDLE_MARKER = "list-clients"  # in the idle monitor's tmux probe

# The hostile agent. It skips itself (and the flooders it forks) by the tag below.
AGENT = r"""
import os, signal, sys, time
TAG = "HOSTILE-AGENT"
mode, marker = sys.argv[1], sys.argv[2].encode()


def ident(name):
    # pid and start time: pids are reused, a process is not.
    try:
        with open(f"/proc/{name}/stat", "rb") as f:
            return name, f.read().rpartition(b")")[2].split()[19]
    except OSError:
        return name, None


seen = {ident(name) for name in os.listdir("/proc") if name.isdigit()}
held = []
open("/tmp/agent-ready", "w").close()
while True:
    for name in os.listdir("/proc"):
        if not name.isdigit() or (key := ident(name)) in seen:
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                cmd = f.read()
            # Not seen for good until it matches: an exec starts as `runc init` and
            # only then becomes the probe, under the same pid.
            if marker not in cmd or TAG.encode() in cmd:
                continue
            seen.add(key)
            fd = os.open(f"/proc/{name}/fd/1", os.O_WRONLY | os.O_NOCTTY)
        except OSError:
            continue
        if mode == "hold":
            try:
                os.kill(int(name), signal.SIGSTOP)
            except OSError:
                pass
            held.append(fd)
        elif os.fork() == 0:
            chunk = b"flood " * 10000
            while True:
                try:
                    os.write(fd, chunk)
                except OSError:
                    time.sleep(0.05)
        with open("/tmp/agent-caught", "a") as f:
            f.write(f"{name} {cmd[:40]!r}\n")
    time.sleep(0.001)
"""

# A tmux "server" the agent puts where the idle monitor's `tmux list-clients` connects:
# it accepts and never answers (the real server keeps running under another name).
FAKE_TMUX = r"""
import os, socket
TAG = "HOSTILE-AGENT"
path = "/tmp/tmux-1000/default"
os.rename(path, "/tmp/tmux-1000/real")
s = socket.socket(socket.AF_UNIX)
s.bind(path)
s.listen(64)
held = []
while True:
    held.append(s.accept()[0])
"""


# Runs a host script as __main__ in this very process, then records the process's own
# peak RSS in the file named by argv[1]: VmHWM, the high-water mark of this program's
# memory (getrusage's ru_maxrss would also count the forked copy of pytest before exec,
# and wait4's the docker CLIs the script starts).
MEASURE = """
import runpy, sys
record, script = sys.argv[1], sys.argv[2]
sys.argv = sys.argv[2:]
try:
    runpy.run_path(script, run_name="__main__")
finally:
    with open("/proc/self/status") as status, open(record, "w") as handle:
        peak = [line.split()[1] for line in status if line.startswith("VmHWM:")]
        handle.write(peak[0] if peak else "")
"""


@pytest.fixture(autouse=True)
def _remove_what_a_refresh_made(docker_client: docker.DockerClient) -> Iterator[None]:
    """The fleet removes the containers it started; a refresh (should one happen when
    this test fails) makes new ones under the same labels."""
    yield
    for container in docker_client.containers.list(all=True, filters={"label": LABEL}):
        if container.labels.get(LABEL, "").startswith(RUN_ID):
            container.remove(force=True, v=True)


@dataclass
class Measured:
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    max_rss_kb: int  # the script's own process (VmHWM)


def run_measured(script: Path, *args: str) -> Measured:
    """Run a host script as the host does (its own process); its exit, output, wall time
    and max RSS. A run past STALLED_S is killed and fails the test."""
    with tempfile.NamedTemporaryFile(suffix=".maxrss") as record:
        argv = [sys.executable, "-c", MEASURE, record.name, str(script), *args]
        measured = _run(argv)
        own = Path(record.name).read_text()
    assert own.isdigit(), f"{script.name} recorded no max RSS; stderr: {measured.stderr}"
    measured.max_rss_kb = int(own)
    return measured


def _run(argv: list[str]) -> Measured:
    started = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = bytearray(), bytearray()
    readers = [
        threading.Thread(target=lambda s=stream, b=buf: b.extend(s.read()), daemon=True)
        for stream, buf in ((proc.stdout, out), (proc.stderr, err))
    ]
    for reader in readers:
        reader.start()
    stalled = threading.Event()
    timer = threading.Timer(STALLED_S, lambda: (stalled.set(), proc.kill()))
    timer.start()
    _, status = os.waitpid(proc.pid, 0)
    timer.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)
    for reader in readers:
        reader.join(10)
    seconds = time.monotonic() - started
    if stalled.is_set():
        pytest.fail(
            f"{Path(argv[4]).name} stalled: killed after {STALLED_S} s; "
            f"output: {out[-2000:].decode(errors='replace')}"
        )
    return Measured(
        proc.returncode,
        out.decode(errors="replace"),
        err.decode(errors="replace"),
        seconds,
        0,
    )


def start_agent(container: Container, mode: str, marker: str) -> None:
    container.exec_run(["python3", "-c", AGENT, mode, marker], user="1000", detach=True)
    wait_for(
        lambda: container.exec_run(["test", "-f", "/tmp/agent-ready"]).exit_code == 0,
        60,
        what=f"hostile agent in {container.name}",
    )


def caught(container: Container) -> str:
    """What the agent caught (empty: it missed the probe, and the test proves nothing)."""
    result = container.exec_run(["cat", "/tmp/agent-caught"])
    return (result.output or b"").decode(errors="replace") if result.exit_code == 0 else ""


def probe_processes(container: Container, marker: str) -> list[str]:
    """Processes of the probe still in ``container`` (the agent's own are not)."""
    rows = container.top(ps_args="-eo pid,stat,args")["Processes"] or []
    return [" ".join(row) for row in rows if marker in row[-1] and "HOSTILE-AGENT" not in row[-1]]


def test_health_report_bounds_a_flooding_and_a_holding_environment(
    fleet: TargetFleet, tmp_path: Path
) -> None:
    value = f"{RUN_ID}-health"
    healthy, flooding, holding = fleet.start(3, labels={LABEL: value})
    start_agent(flooding, "flood", HEALTH_MARKER)
    start_agent(holding, "hold", HEALTH_MARKER)
    # Scaffolding, not the attack: the probe lives a few milliseconds, and a watcher polling
    # /proc on a loaded 2-core machine can miss it (CI did, once). A `df` that takes 0.3 s,
    # first in PATH (as an agent that owns a directory early in PATH could arrange), keeps it
    # alive long enough to be caught; the verdicts do not depend on how long it lives.
    for container in (flooding, holding):
        exec_ok(container, ["sh", "-c", SLOW_DF], user="root")
    config = tmp_path / "health.json"
    config.write_text(
        json.dumps(
            {
                "probe_timeout_seconds": PROBE_TIMEOUT_S,
                "report_file": str(tmp_path / "report.json"),
                "metrics_file": str(tmp_path / "dockyard.prom"),
            }
        )
    )

    # The health probe lives a few milliseconds: an agent descheduled on a loaded machine
    # can miss it, and then the run proves nothing. Such a run is repeated (the report
    # changes nothing), at most CATCH_ATTEMPTS times; the verdicts are checked on a run the
    # agents did catch.
    for _ in range(CATCH_ATTEMPTS):
        for container in (flooding, holding):
            exec_ok(container, ["rm", "-f", "/tmp/agent-caught"])
        run = run_measured(HEALTH, "--config", str(config), "--label", f"{LABEL}={value}", "--json")
        assert run.returncode == 0, run.stderr
        if caught(flooding) and caught(holding):
            break

    print(f"health report: {run.seconds:.1f} s, max RSS {run.max_rss_kb // 1024} MB (script)")
    assert caught(flooding), f"the flooding agent never caught the probe in {CATCH_ATTEMPTS} runs"
    assert caught(holding), f"the holding agent never caught the probe in {CATCH_ATTEMPTS} runs"
    report = {env["name"]: env for env in json.loads(run.stdout)["environments"]}
    assert report[healthy.name]["probe"] == "ok"
    assert report[healthy.name]["disk_pct"] is not None
    assert report[healthy.name]["oom_kills"] == 0
    flood = report[flooding.name]
    # The flood is written by the agent's own process (not the probe's descendant), so the
    # probe itself may have finished by the time the cap is hit: then there is nothing of
    # the probe's left to kill, and the verdict says so instead of claiming a kill.
    bound = "unknown: probe output over 65536 bytes; "
    assert flood["probe"].startswith(bound), flood
    assert flood["probe"][len(bound) :].startswith(("killed ", "it had exited")), flood
    hold = report[holding.name]
    assert hold["probe"].startswith(f"unknown: probe no end within {PROBE_TIMEOUT_S} s; killed "), (
        hold
    )
    assert (flood["disk_pct"], hold["disk_pct"]) == (None, None)
    assert (
        f'dockyard_environment_measured{{environment="{holding.name}"'
        in (tmp_path / "dockyard.prom").read_text()
    )
    assert run.max_rss_kb < MAX_RSS_KB, f"max RSS {run.max_rss_kb} kB"
    # Killed inside the container too, not only the client side.
    for container in (flooding, holding):
        wait_for(
            lambda c=container: probe_processes(c, HEALTH_MARKER) == [],
            30,
            what=lambda c=container: f"probe left in {c.name}: {probe_processes(c, HEALTH_MARKER)}",
        )


def test_idle_monitor_bounds_a_flooding_and_a_holding_environment(
    fleet: TargetFleet, tmp_path: Path
) -> None:
    value = f"{RUN_ID}-idle"
    quiet, flooding, holding = fleet.start(3, labels={LABEL: value})
    for container, mode in ((flooding, "flood"), (holding, "hold")):
        container.exec_run(["python3", "-c", FAKE_TMUX], user="1000", detach=True)
        wait_for(
            lambda c=container: c.exec_run(["test", "-e", "/tmp/tmux-1000/real"]).exit_code == 0,
            60,
            what=f"fake tmux server in {container.name}",
        )
        start_agent(container, mode, IDLE_MARKER)
    # All three were last busy 31 minutes ago: without an answer from its probe, an
    # environment would be stopped as idle.
    state = tmp_path / "state.json"
    last_busy = time.time() - 31 * 60
    state.write_text(json.dumps({c.name: last_busy for c in (quiet, flooding, holding)}))
    config = tmp_path / "idle.json"
    config.write_text(
        json.dumps(
            {
                "state_file": str(state),
                "label": f"{LABEL}={value}",
                "idle_minutes": 30,
                "probe_timeout_seconds": PROBE_TIMEOUT_S,
            }
        )
    )

    run = run_measured(IDLE, "--config", str(config))

    assert run.returncode == 0, run.stderr
    print(f"idle monitor: {run.seconds:.1f} s, max RSS {run.max_rss_kb // 1024} MB (script)")
    assert caught(flooding), "the flooding agent never caught the probe"
    assert caught(holding), "the holding agent never caught the probe"
    lines = run.stdout.splitlines()
    notes = {
        line.split(": ", 2)[1]: line.split(": ", 2)[2] for line in lines if line.count(": ") >= 2
    }
    assert notes[flooding.name].startswith(
        "busy (unknown: tmux probe output over 65536 bytes; docker CLI killed; "
    ), run.stdout
    slack = PROBE_TIMEOUT_S + 5  # the docker CLI's own start-up (CLI_SLACK_S)
    # The agent stopped the in-container `timeout` too: only the host's kill ends it.
    assert notes[holding.name].startswith(
        f"busy (unknown: tmux probe no end within {slack:g} s; docker CLI killed; killed "
    ), run.stdout
    assert f"dockyard-idle: stopped {quiet.name}" in lines, run.stdout
    for container in (quiet, flooding, holding):
        container.reload()
    assert (quiet.status, flooding.status, holding.status) == ("exited", "running", "running")
    assert run.max_rss_kb < MAX_RSS_KB, f"max RSS {run.max_rss_kb} kB"
    # The in-container `timeout` killed what the host's kill of the docker CLI left.
    for container in (flooding, holding):
        wait_for(
            lambda c=container: probe_processes(c, IDLE_MARKER) == [],
            PROBE_TIMEOUT_S + 30,
            what=lambda c=container: f"probe left in {c.name}: {probe_processes(c, IDLE_MARKER)}",
        )


def test_refresh_refuses_an_oversize_secrets_dir_before_stopping_anything(
    fleet: TargetFleet, tmp_path: Path
) -> None:
    value = f"{RUN_ID}-refresh"
    (env,) = fleet.start(1, labels={LABEL: value})
    # The agent owns /run/secrets: a 64 MiB sparse file costs it no disk, and the tar of
    # the directory the engine streams carries every byte.
    exec_ok(env, ["truncate", "-s", "64M", "/run/secrets/padding"], user="1000")
    # Past the disk threshold, so the report wants a refresh.
    exec_ok(env, ["dd", "if=/dev/zero", "of=/workspace/fill", "bs=1M", "count=4"], user="1000")
    env.reload()
    started_at = env.attrs["State"]["StartedAt"]

    config = tmp_path / "health.json"
    config.write_text(
        json.dumps({"report_file": str(tmp_path / "report.json"), "metrics_file": ""})
    )

    run = run_measured(
        HEALTH,
        *("--config", str(config), "--label", f"{LABEL}={value}"),
        *("--refresh", "--max-disk-pct", "1", "--json"),
    )

    assert run.returncode == 1, run.stderr
    print(f"refresh: {run.seconds:.1f} s, max RSS {run.max_rss_kb // 1024} MB (script)")
    (entry,) = json.loads(run.stdout)["environments"]
    assert entry["action"] == (
        f"refresh failed: /run/secrets of {env.name}: output over 8388608 bytes as a tar "
        "(allowed: at most 8388608 bytes within 60 s; nothing was stopped)"
    )
    env.reload()
    assert (env.status, env.attrs["State"]["StartedAt"]) == ("running", started_at)
    assert run.max_rss_kb < MAX_RSS_KB, f"max RSS {run.max_rss_kb} kB"
