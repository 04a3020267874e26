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


def _started(tag: str, leader: bool) -> subprocess.Popen[bytes]:
    env = {**os.environ, TAG_VARIABLE: tag}
    return subprocess.Popen(["sleep", "120"], env=env, start_new_session=leader)


def test_the_script_signals_only_groups_led_by_a_holder_of_the_tag() -> None:
    """The in-container script, run here by /bin/sh: the tagged group leader is killed; a
    process with another tag, and one with the tag that leads no group, are left."""
    other_tag = "f" * 32
    tagged = _started(TAG, leader=True)
    another = _started(other_tag, leader=True)
    follower = _started(TAG, leader=False)  # in this test's own group
    try:
        done = subprocess.run(["/bin/sh", "-c", GROUP_KILL, "sh", "TERM", TAG], check=False)
        assert done.returncode == 0
        assert tagged.wait(30) == -15
        assert another.poll() is None
        assert follower.poll() is None
        again = subprocess.run(["/bin/sh", "-c", GROUP_KILL, "sh", "TERM", TAG], check=False)
        assert again.returncode == 3  # no group led by a holder of the tag any more
    finally:
        for process in (tagged, another, follower):
            process.kill()
            process.wait()
