"""``dockyard serve --workers N`` as a user runs it: N processes on one port (each answers,
each listens), a stop reaching all of them, and no process left behind whichever of them
ends first (dockyard.api.workers)."""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from dockyard.api.workers import listening
from tests.api.test_client import Served, start_server
from tests.support.server import create_key


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(entry.name))
    return sorted(found)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _listeners(port: int) -> set[int]:
    """The pids holding a socket that listens on ``port`` (from /proc: no tool needed)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    pids = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            descriptors = list((entry / "fd").iterdir())
        except OSError:
            continue
        for descriptor in descriptors:
            try:
                link = os.readlink(descriptor)
            except OSError:  # closed meanwhile (the listing's own, in this process)
                continue
            if link.removeprefix("socket:[").removesuffix("]") in inodes:
                pids.add(int(entry.name))
    return pids


def _wait(condition: object, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.1)
    return False


@pytest.fixture
def two(tmp_path: Path) -> Iterator[Served]:
    servers = start_server(tmp_path, {}, "--workers", "2")
    served = next(servers)
    port = httpx.URL(served.url).port or 0

    def ready() -> bool:
        workers = _children(served.process.pid)
        return len(workers) == 2 and _listeners(port) == set(workers)

    try:
        # The address is printed once it listens; the processes come right after.
        assert _wait(ready), (_children(served.process.pid), _listeners(port))
        yield served
    finally:
        servers.close()  # stops it (SIGTERM, then SIGKILL)


def test_two_processes_listen_on_one_port_and_both_answer(two: Served) -> None:
    # Two processes, each with a listening socket of its own; the parent holds none (the
    # fixture waited for exactly that).
    assert len(_children(two.process.pid)) == 2
    key = create_key(two.env, two.store, "--tenant", "acme")["key"]
    # New connections are spread over both listening sockets by the kernel; every one is
    # answered (a key one process checked is checked by the other on its own).
    limits = httpx.Limits(max_keepalive_connections=0)
    with httpx.Client(base_url=two.url, limits=limits, trust_env=False, timeout=30) as client:
        codes = {
            client.get("/api/sessions", headers={"Authorization": f"Bearer {key}"}).status_code
            for _ in range(40)
        }
    assert codes == {200}


def test_a_stop_reaches_every_process_and_none_is_left(two: Served) -> None:
    workers = _children(two.process.pid)
    two.process.send_signal(signal.SIGTERM)
    assert two.process.wait(timeout=30) == 0
    assert not any(_alive(pid) for pid in workers)


def test_one_process_ending_stops_the_other_and_the_server_fails(two: Served) -> None:
    first, second = _children(two.process.pid)
    os.kill(first, signal.SIGKILL)
    assert two.process.wait(timeout=30) == 1
    assert _wait(lambda: not _alive(second)), "the other process was left serving"
    assert "ended (exit -9): stopping the other 1" in two.log.read_text()


def test_the_processes_end_with_a_killed_parent(two: Served) -> None:
    workers = _children(two.process.pid)
    two.process.kill()
    two.process.wait(timeout=30)
    assert _wait(lambda: not any(_alive(pid) for pid in workers)), "orphans kept the port"


@pytest.mark.parametrize("count", ["0", "65", "-1"])
def test_workers_out_of_range_are_refused_before_listening(tmp_path: Path, count: str) -> None:
    from tests.api.test_commands import _run

    result = _run(
        {"DOCKYARD_STATE_DIR": str(tmp_path / "state"), "HOME": str(tmp_path)},
        "serve",
        "--port",
        "0",
        "--workers",
        count,
    )
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stderr.strip() == (f"ERROR: --workers: {count} is not allowed (allowed: 1 to 64)")
    assert "listening" not in result.stdout


def test_listening_sockets_share_one_free_port_or_none_stays_open() -> None:
    sockets = listening("127.0.0.1", 0, 3)
    try:
        ports = {sock.getsockname()[1] for sock in sockets}
        assert len(ports) == 1
        # A port another socket holds without sharing: refused, nothing left listening.
        with socket.socket() as holder:
            holder.bind(("127.0.0.1", 0))
            holder.listen()
            taken = holder.getsockname()[1]
            with pytest.raises(OSError, match="in use"):
                listening("127.0.0.1", taken, 2)
            assert _listeners(taken) == {os.getpid()}  # only the holder
    finally:
        for sock in sockets:
            sock.close()


def test_one_worker_keeps_one_process(tmp_path: Path) -> None:
    servers = start_server(tmp_path, {})
    one = next(servers)
    try:
        assert _children(one.process.pid) == []
        assert _listeners(httpx.URL(one.url).port or 0) == {one.process.pid}
    finally:
        servers.close()
