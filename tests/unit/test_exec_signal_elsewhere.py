"""A signal to an exec this process did not start (another server replica's, on any host,
on runc or gVisor): the engine's record must vouch for it and name its launcher's tag,
and the signal goes, inside the container, to the groups led by a process holding that
tag (dockyard.sessions.workspace_exec) — with a fake engine, and the in-container script
run here under /bin/sh on processes this test starts;
tests/integration/test_exec_signal_elsewhere_on_engine.py proves it on the real engine
from another process, on runc and on gVisor."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from dockyard.errors import NotFound
from dockyard.sessions.workspace_container import Limits
from dockyard.sessions.workspace_exec import (
    GROUP_KILL,
    LAUNCHER,
    TAG_PREFIX,
    TAG_VARIABLE,
    ExecVerbs,
)

CONTAINER = "c" * 64
EXEC = "e" * 64
TAG = "0123456789abcdef" * 2


class Engine:
    def __init__(self, info: dict[str, Any]) -> None:
        self.info = info
        self.asked: list[str] = []

    def exec_inspect(self, exec_id: str) -> dict[str, Any]:
        self.asked.append(exec_id)
        if exec_id != EXEC:
            raise RuntimeError("404 no such exec")
        return self.info


def running(**changed: Any) -> dict[str, Any]:
    info: dict[str, Any] = {
        "Running": True,
        "ContainerID": CONTAINER,
        "Pid": 4242,
        "ProcessConfig": {
            "entrypoint": "/bin/sh",
            "arguments": ["-c", LAUNCHER, TAG_PREFIX + TAG, "sleep", "300"],
            "user": "1000:1000",
        },
    }
    config = changed.pop("config", {})
    info.update(changed)
    info["ProcessConfig"] = {**info["ProcessConfig"], **config}
    return info


def verbs(info: dict[str, Any], code: int = 0) -> tuple[ExecVerbs, Engine, list[list[str]]]:
    engine = Engine(info)
    made = ExecVerbs(
        SimpleNamespace(session_id="s1"),  # type: ignore[arg-type]
        {"container": {"id": CONTAINER}},
        SimpleNamespace(api=engine),
        Limits(),
    )
    ran: list[list[str]] = []

    def run(argv: list[str], stdin: bytes | None = None) -> tuple[bytes, bytes, int | None]:
        ran.append(argv)
        return b"", b"", code

    made._run = run  # type: ignore[method-assign]
    return made, engine, ran


def test_a_running_launcher_exec_in_this_container_is_signalled_by_its_tag() -> None:
    made, engine, ran = verbs(running())
    made.signal(EXEC, "sigterm")
    assert engine.asked == [EXEC]
    assert ran == [["/bin/sh", "-c", GROUP_KILL, "sh", "TERM", TAG]]


@pytest.mark.parametrize(
    "info",
    [
        running(Running=False),
        running(ContainerID="d" * 64),  # another session's container
        running(config={"user": "0:0"}),
        running(config={"entrypoint": "/bin/bash"}),
        running(config={"arguments": ["-c", "kill -s TERM -- -1", TAG_PREFIX + TAG]}),
        running(config={"arguments": ["-c", LAUNCHER, "sh", "sleep", "300"]}),  # no tag
        running(config={"arguments": ["-c", LAUNCHER, TAG_PREFIX + "x;kill -9 -1"]}),
        running(config={"arguments": ["-c", LAUNCHER]}),
    ],
    ids=[
        "ended",
        "other-container",
        "root",
        "entrypoint",
        "not-launcher",
        "untagged",
        "bad-tag",
        "short",
    ],
)
def test_what_the_engine_does_not_vouch_for_is_not_found(info: dict[str, Any]) -> None:
    made, _, ran = verbs(info)
    with pytest.raises(NotFound, match="no running exec"):
        made.signal(EXEC, "TERM")
    assert ran == []


def test_ids_that_are_not_exec_ids_never_reach_the_engine() -> None:
    made, engine, ran = verbs(running())
    for exec_id in ("../containers/x", "E" * 64, "e" * 63, "f" * 64):
        with pytest.raises(NotFound):
            made.signal(exec_id, "TERM")
    assert engine.asked == ["f" * 64]  # the one well-formed id, unknown to the engine
    assert ran == []


def test_no_tagged_group_inside_the_container_is_not_found() -> None:
    made, _, ran = verbs(running(), code=3)
    with pytest.raises(NotFound):
        made.signal(EXEC, "TERM")
    assert len(ran) == 1


NEEDS_ROOT = pytest.mark.skipif(
    os.geteuid() != 0 and not os.environ.get("CI"),
    reason="a pid namespace of its own needs root (CI runs as root: there it fails instead)",
)
LEADER = "setsid sleep 1001 & exec sleep 1002"
"""The exec's command: its own process (sleep 1002) and a daemon it detached (setsid)."""


def _in(namespace_init: int, *argv: str, env: dict[str, str] | None = None) -> list[str]:
    """``argv`` entered into the pid and mount namespaces of ``namespace_init`` from
    outside, as the engine enters a container for an exec: its parent is outside (ppid 0
    inside), and setsid makes it lead its session and group, as an exec's does."""
    prefix = ["nsenter", "-t", str(namespace_init), "-p", "-m", "--"]
    return [*prefix, "/usr/bin/env", *[f"{k}={v}" for k, v in (env or {}).items()], *argv]


def _sleeps(namespace_init: int) -> set[str]:
    listed = subprocess.run(
        _in(namespace_init, "sh", "-c", "cat /proc/[0-9]*/cmdline | tr '\\0' ' '"),
        capture_output=True,
        text=True,
        check=False,
    )
    return {w for w in listed.stdout.split() if w in ("1001", "1002", "1003")}


@NEEDS_ROOT
def test_the_script_signals_only_the_exec_s_own_group() -> None:
    """The in-container script, run by /bin/sh inside a pid namespace of its own: the
    exec's own group (tagged, ppid 0, leading its session) is signalled; a daemon it
    detached with setsid (tagged, but its parent is inside), and another exec's group
    (another tag) are left."""
    container = subprocess.Popen(["unshare", "--pid", "--fork", "--mount-proc", "sleep", "120"])
    execs: list[subprocess.Popen[bytes]] = []
    try:
        init = 0
        for _ in range(100):  # the namespace's init is unshare's child
            children = Path(f"/proc/{container.pid}/task/{container.pid}/children")
            init = int(children.read_text().split()[0]) if children.read_text().split() else 0
            if init:
                break
            time.sleep(0.05)
        assert init, "unshare did not start its child"
        tagged = _in(init, "setsid", "sh", "-c", LEADER, env={TAG_VARIABLE: TAG})
        other = _in(init, "setsid", "sleep", "1003", env={TAG_VARIABLE: "f" * 32})
        execs = [subprocess.Popen(tagged), subprocess.Popen(other)]
        for _ in range(100):
            if _sleeps(init) == {"1001", "1002", "1003"}:
                break
            time.sleep(0.05)
        assert _sleeps(init) == {"1001", "1002", "1003"}
        kill = _in(init, "/bin/sh", "-c", GROUP_KILL, "sh", "TERM", TAG)
        assert subprocess.run(kill, check=False).returncode == 0
        assert execs[0].wait(30) != 0  # the exec's own process was signalled
        assert _sleeps(init) == {"1001", "1003"}  # the detached daemon and the other exec
        assert subprocess.run(kill, check=False).returncode == 3  # no such group any more
    finally:
        for process in execs:
            process.kill()
        container.kill()
        container.wait()
        for process in execs:
            process.wait()
