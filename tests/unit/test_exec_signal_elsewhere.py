"""A signal to an exec this process did not start (another server replica's): the engine's
record and the host's /proc must vouch for it (dockyard.sessions.workspace_exec), with a
fake engine and a fake /proc; tests/api/test_exec_signal_on_engine.py proves it on the
real engine from another process."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from dockyard.errors import NotFound
from dockyard.sessions.workspace_container import Limits
from dockyard.sessions.workspace_exec import GROUP_KILL, LAUNCHER, ExecVerbs

CONTAINER = "c" * 64
EXEC = "e" * 64
HOST_PID = 4242
START = 987654


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
        "Pid": HOST_PID,
        "ProcessConfig": {
            "entrypoint": "/bin/sh",
            "arguments": ["-c", LAUNCHER, "sh", "sleep", "300"],
            "user": "1000:1000",
        },
    }
    config = changed.pop("config", {})
    info.update(changed)
    info["ProcessConfig"] = {**info["ProcessConfig"], **config}
    return info


def proc(base: Path, nspid: str = f"{HOST_PID}\t57") -> Path:
    (base / str(HOST_PID)).mkdir(parents=True)
    (base / str(HOST_PID) / "status").write_text(f"Name:\tsleep\nNSpid:\t{nspid}\n")
    fields = ["S", "1", str(HOST_PID), str(HOST_PID)] + ["0"] * 15 + [str(START), "0"]
    (base / str(HOST_PID) / "stat").write_text(f"{HOST_PID} (sle ep) ) {' '.join(fields)}\n")
    return base


def verbs(
    info: dict[str, Any], root: Path, code: int = 0
) -> tuple[ExecVerbs, Engine, list[list[str]]]:
    engine = Engine(info)
    made = ExecVerbs(
        SimpleNamespace(session_id="s1"),  # type: ignore[arg-type]
        {"container": {"id": CONTAINER}},
        SimpleNamespace(api=engine),
        Limits(),
    )
    made.proc = root
    ran: list[list[str]] = []

    def run(argv: list[str], stdin: bytes | None = None) -> tuple[bytes, bytes, int | None]:
        ran.append(argv)
        return b"", b"", code

    made._run = run  # type: ignore[method-assign]
    return made, engine, ran


def test_a_running_launcher_exec_in_this_container_is_signalled_by_its_inner_group(
    tmp_path: Path,
) -> None:
    made, engine, ran = verbs(running(), proc(tmp_path))
    made.signal(EXEC, "sigterm")
    assert engine.asked == [EXEC]
    assert ran == [["/bin/sh", "-c", GROUP_KILL, "sh", "TERM", "57", str(START)]]


@pytest.mark.parametrize(
    "info",
    [
        running(Running=False),
        running(ContainerID="d" * 64),  # another session's container
        running(config={"user": "0:0"}),
        running(config={"entrypoint": "/bin/bash"}),
        running(config={"arguments": ["-c", "kill -s TERM -- -1"]}),  # not the launcher
        running(Pid=0),
        running(Pid="4242"),
    ],
    ids=["ended", "other-container", "root", "entrypoint", "not-launcher", "no-pid", "str-pid"],
)
def test_what_the_engine_does_not_vouch_for_is_not_found(
    tmp_path: Path, info: dict[str, Any]
) -> None:
    made, _, ran = verbs(info, proc(tmp_path))
    with pytest.raises(NotFound, match="no running exec"):
        made.signal(EXEC, "TERM")
    assert ran == []


def test_ids_that_are_not_exec_ids_never_reach_the_engine(tmp_path: Path) -> None:
    made, engine, ran = verbs(running(), proc(tmp_path))
    for exec_id in ("../containers/x", "E" * 64, "e" * 63, "f" * 64):
        with pytest.raises(NotFound):
            made.signal(exec_id, "TERM")
    assert engine.asked == ["f" * 64]  # the one well-formed id, unknown to the engine
    assert ran == []


@pytest.mark.parametrize("nspid", [f"{HOST_PID}", f"{HOST_PID}\t1", f"{HOST_PID}\tx"])
def test_a_host_pid_without_an_inner_pid_is_not_found(tmp_path: Path, nspid: str) -> None:
    """One namespace level (/proc is not the engine's, or gVisor), or the container's init."""
    made, _, ran = verbs(running(), proc(tmp_path, nspid))
    with pytest.raises(NotFound):
        made.signal(EXEC, "TERM")
    assert ran == []


def test_no_proc_entry_or_a_refusal_inside_the_container_is_not_found(tmp_path: Path) -> None:
    made, _, ran = verbs(running(), tmp_path)  # no /proc/4242 here
    with pytest.raises(NotFound):
        made.signal(EXEC, "TERM")
    assert ran == []
    made, _, ran = verbs(running(), proc(tmp_path / "p"), code=3)  # the start time differs
    with pytest.raises(NotFound):
        made.signal(EXEC, "TERM")
    assert len(ran) == 1
