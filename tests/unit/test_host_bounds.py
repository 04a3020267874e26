"""Bounded reads of the host library and what the health report and idle monitor make of
an overrun (issue 25 item 3), without an engine: a command that floods or keeps its
stdout open, an Engine API socket that floods, holds or drips, and the scripts' verdicts.
The same bounds against hostile agents on a real engine: tests/roles/test_host_reads_bounded.py.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from dockyard import host
from tests.support.scripts import load_script

health = load_script("env_health", "dockyard-health.py")
idle = load_script("idle_monitor", "dockyard-idle-monitor.py")


# --- run() --------------------------------------------------------------------------------


def test_a_flooding_command_is_killed_at_its_output_cap() -> None:
    with pytest.raises(host.CommandOverrun) as caught:
        host.run(["yes", "flood"], max_bytes=2**20)
    assert caught.value.returncode == 125
    assert caught.value.bound == f"output over {2**20} bytes"
    assert "yes flood failed (125): output over 1048576 bytes; killed" in str(caught.value)


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return True
    return state in ("Z", "X")


def test_a_command_that_keeps_stdout_open_is_killed_with_its_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "grandchild"
    # The grandchild keeps stdout open after its parent is gone: one total deadline, and
    # the whole process group goes.
    script = f"sleep 60 & echo $! > {pidfile}; exec sleep 60"
    with pytest.raises(host.CommandOverrun) as caught:
        host.run(["sh", "-c", script], timeout=1)
    assert caught.value.returncode == 124
    assert caught.value.bound == "no end within 1 s"
    grandchild = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while not _gone(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _gone(grandchild), f"pid {grandchild} survived"


def test_large_stdin_and_stdout_pass_within_the_bounds() -> None:
    text = "x" * (5 * 2**20)
    assert host.run(["cat"], stdin=text) == text


def test_a_failing_command_still_names_its_stderr() -> None:
    with pytest.raises(host.CommandError) as caught:
        host.run(["sh", "-c", "echo nope >&2; exit 3"])
    assert not isinstance(caught.value, host.Overrun)
    assert (caught.value.returncode, caught.value.stderr) == (3, "nope\n")


# --- Engine.request -------------------------------------------------------------------------


class FakeEngine:
    """A unix socket that answers every request with ``behaviour``: flood (endless body),
    hold (headers, then nothing), drip (one byte every 0.1 s, for ever)."""

    def __init__(self, path: Path, behaviour: str) -> None:
        self.server = socket.socket(socket.AF_UNIX)
        self.server.bind(str(path))
        self.server.listen(8)
        self.behaviour = behaviour
        self.stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            conn.recv(65536)
            try:
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-tar\r\n\r\n")
                while not self.stop.is_set():
                    if self.behaviour == "flood":
                        conn.sendall(b"f" * 65536)
                    elif self.behaviour == "drip":
                        conn.sendall(b"d")
                        time.sleep(0.1)
                    else:
                        time.sleep(0.1)
            except OSError:
                return

    def close(self) -> None:
        self.stop.set()
        self.server.close()


@pytest.fixture
def fake_engine(tmp_path: Path) -> Iterator[Any]:
    servers: list[FakeEngine] = []

    def start(behaviour: str) -> host.Engine:
        path = tmp_path / f"{behaviour}.sock"
        servers.append(FakeEngine(path, behaviour))
        return host.Engine(str(path))

    yield start
    for server in servers:
        server.close()


def test_a_flooding_answer_stops_at_its_cap(fake_engine: Any) -> None:
    with pytest.raises(host.EngineOverrun) as caught:
        fake_engine("flood").request(
            "GET", "/containers/x/archive?path=/run/secrets", max_bytes=4096
        )
    assert (caught.value.bound, caught.value.time_up) == ("output over 4096 bytes", False)
    assert str(caught.value) == "GET /containers/x/archive: answer over 4096 bytes"


def test_an_answer_held_open_ends_at_the_deadline(fake_engine: Any) -> None:
    with pytest.raises(host.EngineOverrun) as caught:
        fake_engine("hold").request("GET", "/x", deadline_s=0.5)
    assert (caught.value.bound, caught.value.time_up) == ("no end within 0.5 s", True)


def test_a_drip_feed_ends_at_the_total_deadline_not_a_per_read_one(fake_engine: Any) -> None:
    # Every read gets a byte well within any per-read timeout; only a total one ends it.
    with pytest.raises(host.EngineOverrun) as caught:
        fake_engine("drip").request("GET", "/x", deadline_s=1)
    assert caught.value.bound == "no end within 1 s"


# --- kill_process_tree ----------------------------------------------------------------------


def test_kill_process_tree_kills_the_exec_and_its_descendants(tmp_path: Path) -> None:
    pidfile = tmp_path / "child"
    root = subprocess.Popen(["sh", "-c", f"sleep 60 & echo $! > {pidfile}; wait"])
    try:
        deadline = time.monotonic() + 5
        while not pidfile.exists() or not pidfile.read_text().strip():
            assert time.monotonic() < deadline, "no child started"
            time.sleep(0.02)
        child = int(pidfile.read_text())
        # Our own pid stands in for the container's init: the same pid namespace.
        assert host.kill_process_tree(root.pid, os.getpid()) == "killed 2 process(es) of the exec"
        assert root.wait(5) == -9
        deadline = time.monotonic() + 5
        while not _gone(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _gone(child)
    finally:
        root.kill()
        root.wait()


def test_kill_exec_waits_for_the_pid_the_engine_records_after_marking_the_exec_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The engine says Running before it records the pid: a flood that hits its cap at
    # once met Pid 0 and was left running (seen on CI). The kill must wait for the pid.
    answers = [{"Running": True, "Pid": 0, "ContainerID": "c"}] * 3
    victim = subprocess.Popen(["sleep", "60"])
    answers.append({"Running": True, "Pid": victim.pid, "ContainerID": "c"})
    engine = host.Engine.__new__(host.Engine)
    monkeypatch.setattr(engine, "request", lambda *a, **k: answers.pop(0), raising=False)
    monkeypatch.setattr(
        engine, "inspect", lambda _id: {"State": {"Pid": os.getpid()}}, raising=False
    )
    try:
        assert engine.kill_exec("e") == "killed 1 process(es) of the exec"
        assert victim.wait(5) == -9
        assert answers == []
    finally:
        victim.kill()
        victim.wait()


def test_kill_process_tree_refuses_a_pid_outside_the_containers_namespace() -> None:
    if not shutil.which("unshare"):
        pytest.skip("no unshare(1) here")
    # A process in a pid namespace of its own plays "the container's init".
    other = subprocess.Popen(["unshare", "--pid", "--fork", "sleep", "60"])
    victim = subprocess.Popen(["sleep", "60"])
    try:
        time.sleep(0.3)
        inner = [
            int(p) for p in os.listdir("/proc") if p.isdigit() and _parent(int(p)) == other.pid
        ]
        if not inner or os.readlink(f"/proc/{inner[0]}/ns/pid") == os.readlink("/proc/self/ns/pid"):
            pytest.skip("cannot make a pid namespace here")
        verdict = host.kill_process_tree(victim.pid, inner[0])
        assert verdict == (
            "not killed from the host (its pid is not in the container's pid namespace)"
        )
        assert victim.poll() is None
        assert host.kill_process_tree(inner[0], inner[0]).startswith("not killed from the host")
    finally:
        for proc in (other, victim):
            proc.kill()
            proc.wait()


def _parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])
    except (OSError, ValueError):
        return 0


# --- What the scripts make of an overrun ------------------------------------------------------


class ScriptedEngine:
    """The Engine calls health.collect makes, answered from a table; ``exec_bounded``
    returns the ExecResult (or raises the error) given per container."""

    def __init__(self, execs: dict[str, Any], broken: frozenset[str] = frozenset()) -> None:
        self.execs = execs
        self.broken = broken

    def containers(self, selector: str) -> list[dict[str, Any]]:
        return [
            {"Id": name, "Names": [f"/{name}"], "State": "running", "Created": 0, "Labels": {}}
            for name in sorted(self.execs)
        ]

    def inspect(self, ref: str) -> dict[str, Any]:
        if ref in self.broken:
            raise host.EngineError(f"GET /containers/{ref}/json: no end within 120 s")
        return {
            "Id": ref,
            "Name": f"/{ref}",
            "Created": "2026-12-06T10:00:00.000000000Z",
            "State": {"Status": "running", "Health": {"Status": "healthy"}},
            "HostConfig": {"Memory": 2**30},
            "Config": {"Labels": {}},
        }

    def request(self, method: str, path: str, **_: Any) -> dict[str, Any]:
        assert "/stats" in path, path
        return {"memory_stats": {"usage": 2**28, "stats": {"inactive_file": 0}}}

    def exec_bounded(self, ref: str, cmd: list[str], **bounds: Any) -> host.ExecResult:
        assert bounds["max_bytes"] == health.PROBE_MAX_BYTES
        answer = self.execs[ref]
        if isinstance(answer, Exception):
            raise answer
        return answer  # type: ignore[no-any-return]


DF = "Filesystem 1024-blocks Used Available Capacity Mounted on\n/dev/x 100 42 58 42% /workspace\noom_kill 0\n"


def test_health_reports_an_overrun_probe_as_unknown_and_reads_the_others() -> None:
    engine = ScriptedEngine(
        {
            "flooding": host.ExecResult(
                None, "flood", "output over 65536 bytes; killed 2 process(es) of the exec"
            ),
            "healthy": host.ExecResult(0, DF.split("\n", 1)[1], None),
            "holding": host.ExecResult(
                None, "", "no end within 3 s; killed 3 process(es) of the exec"
            ),
            "capped": host.EngineError("POST /exec/x/start: 500 cannot fork"),
            "vanished": host.ExecResult(0, "", None),
        },
        broken=frozenset({"vanished"}),
    )
    statuses = {
        s.name: s
        for s in health.collect(engine, "x=y", "/workspace", datetime.now(UTC), probe_timeout=3)
    }
    assert (statuses["healthy"].probe, statuses["healthy"].disk_pct) == ("ok", 42.0)
    assert statuses["flooding"].probe == (
        "unknown: probe output over 65536 bytes; killed 2 process(es) of the exec"
    )
    assert (
        statuses["holding"].probe
        == "unknown: probe no end within 3 s; killed 3 process(es) of the exec"
    )
    assert statuses["capped"].probe == (
        "unknown: probe could not run: POST /exec/x/start: 500 cannot fork"
    )
    assert statuses["vanished"].probe.startswith("unknown: inspect: GET /containers/vanished/json")
    for name in ("flooding", "holding", "capped", "vanished"):
        assert statuses[name].disk_pct is None, name
    assert "probe=unknown: probe no end within 3 s" in health.log_line(statuses["holding"])
    metrics = health.metrics(list(statuses.values()), datetime.now(UTC))
    assert (
        'dockyard_environment_measured{environment="holding",session="",stack="",tenant=""} 0.0'
        in metrics
    )
    assert (
        'dockyard_environment_measured{environment="healthy",session="",stack="",tenant=""} 1.0'
        in metrics
    )


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (
            host.CommandOverrun(["docker"], "no end within 13 s", time_up=True),
            (
                0,
                "tmux probe no end within 13 s; docker CLI killed; killed 2 process(es) of the exec",
            ),
        ),
        (host.CommandError(["docker"], 137, ""), (0, "tmux probe killed inside after 8 s")),
        (host.CommandError(["docker"], 124, ""), (0, "tmux probe killed inside after 8 s")),
        (host.CommandError(["docker"], 1, "no server running"), (0, None)),
    ],
)
def test_idle_tmux_probe_verdicts(raised: Exception, expected: tuple[int, str | None]) -> None:
    argvs: list[list[str]] = []

    def runner(argv: Any) -> str:
        argvs.append(list(argv))
        raise raised

    killed: list[str] = []

    def killer(name: str) -> str:
        killed.append(name)
        return "killed 2 process(es) of the exec"

    assert idle._tmux_clients("docker", "env-a", runner, 8, killer) == expected
    assert argvs == [
        ["docker", "exec", "-u", "1000", "env-a", "timeout", "-s", "KILL", "8", *idle.TMUX_PROBE]
    ]
    assert killed == (["env-a"] if isinstance(raised, host.Overrun) else [])


def test_an_environment_the_idle_monitor_could_not_read_is_never_stopped() -> None:
    unknown = idle.Reading("env-a", 0, 0, 0.0, unknown="tmux probe output over 65536 bytes")
    decision = idle.decide(
        [unknown], {"env-a": 0.0}, 10_000.0, idle_minutes=1, cpu_threshold=5, action="stop"
    )
    assert decision.stop == []
    assert decision.notes == ["env-a: busy (unknown: tmux probe output over 65536 bytes)"]
    poweroff = idle.decide(
        [unknown], {"env-a": 0.0}, 10_000.0, idle_minutes=1, cpu_threshold=5, action="poweroff"
    )
    assert poweroff.poweroff is False
