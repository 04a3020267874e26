"""``dockyard serve --workers N`` as a user runs it: N processes accepting on one socket the
parent made (no port group another process could join), a stop reaching all of them (a
second one forcing them past open streams), and no process left behind whichever of them
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


def _listening_inodes(port: int) -> set[str]:
    """The sockets listening on ``port`` (from /proc: no tool needed)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    return inodes


def _listeners(port: int) -> set[int]:
    """The pids holding a socket that listens on ``port``."""
    inodes = _listening_inodes(port)
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


def _polling(pid: int) -> bool:
    """Whether ``pid`` has an event loop's epoll descriptor (uvicorn is running in it)."""
    try:
        return any(
            os.readlink(fd) == "anon_inode:[eventpoll]" for fd in Path(f"/proc/{pid}/fd").iterdir()
        )
    except OSError:
        return False


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
        # Both children hold the socket and run their event loop (uvicorn then has its
        # signal handlers): what a stop in a test must find.
        workers = _children(served.process.pid)
        return (
            len(workers) == 2
            and _listeners(port) == set(workers)
            and all(_polling(pid) for pid in workers)
        )

    try:
        # The address is printed once it listens; the processes come right after.
        assert _wait(ready), (_children(served.process.pid), _listeners(port))
        yield served
    finally:
        servers.close()  # stops it (SIGTERM, then SIGKILL)


def test_two_processes_accept_on_one_socket_and_both_answer(two: Served) -> None:
    # Two processes hold the one listening socket; the parent does not (the fixture waited
    # for exactly that), and no second socket could join the port.
    port = httpx.URL(two.url).port or 0
    assert len(_listening_inodes(port)) == 1
    with socket.socket() as intruder:
        intruder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        with pytest.raises(OSError, match="in use"):
            intruder.bind(("127.0.0.1", port))
    key = create_key(two.env, two.store, "--tenant", "acme")["key"]
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


def test_ctrl_c_reaches_every_process(two: Served) -> None:
    workers = _children(two.process.pid)
    two.process.send_signal(signal.SIGINT)
    assert two.process.wait(timeout=30) == 0
    assert not any(_alive(pid) for pid in workers)


def _stream(served: Served) -> socket.socket:
    """An open ``GET /api/events`` stream (a server-sent event stream never ends by itself)."""
    key = create_key(served.env, served.store, "--admin")["key"]
    url = httpx.URL(served.url)
    stream = socket.create_connection((url.host, url.port or 0), timeout=30)
    stream.sendall(
        f"GET /api/events HTTP/1.1\r\nHost: {url.host}\r\nAuthorization: Bearer {key}\r\n\r\n".encode()
    )
    assert stream.recv(200).startswith(b"HTTP/1.1 200")
    return stream


def test_a_second_stop_forces_the_processes_past_open_streams(two: Served) -> None:
    workers = _children(two.process.pid)
    streams = [_stream(two) for _ in range(4)]
    try:
        two.process.send_signal(signal.SIGTERM)
        time.sleep(1)
        two.process.send_signal(signal.SIGTERM)
        assert two.process.wait(timeout=30) == 0
        assert _wait(lambda: not any(_alive(pid) for pid in workers))
    finally:
        for stream in streams:
            stream.close()


def test_a_killed_parent_takes_its_processes_with_streams_open(two: Served) -> None:
    workers = _children(two.process.pid)
    streams = [_stream(two) for _ in range(4)]
    try:
        two.process.kill()
        two.process.wait(timeout=30)
        assert _wait(lambda: not any(_alive(pid) for pid in workers), 10), "orphans kept it"
    finally:
        for stream in streams:
            stream.close()


def test_one_process_ending_stops_the_other_and_the_server_fails(two: Served) -> None:
    first, second = _children(two.process.pid)
    os.kill(first, signal.SIGKILL)
    assert two.process.wait(timeout=30) == 1
    assert _wait(lambda: not _alive(second)), "the other process was left serving"
    assert f"server process {first} ended (exit -9): stopping the other 1" in two.log.read_text()


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


def test_a_port_that_cannot_be_listened_on_leaves_no_descriptor_open() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        before = sorted(os.listdir("/proc/self/fd"))
        with pytest.raises(OSError, match="in use"):
            listening("127.0.0.1", taken)
        assert sorted(os.listdir("/proc/self/fd")) == before


@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.parametrize("broken", ["state", "tls"])
def test_nothing_listens_before_the_server_is_built(
    tmp_path: Path, workers: str, broken: str
) -> None:
    from tests.api.test_commands import _run

    state = tmp_path / "state"
    args = ["--key-store", f"sqlite:///{tmp_path / 'keys.db'}", "--workers", workers]
    if broken == "state":
        state.write_text("a file, not a directory")
        want = ("ERROR: ", 1)
    else:
        state.mkdir()
        for name in ("cert.pem", "key.pem"):
            (tmp_path / name).write_text("not PEM")
        args += ["--tls-cert", str(tmp_path / "cert.pem"), "--tls-key", str(tmp_path / "key.pem")]
        want = ("ERROR: --tls-cert/--tls-key: cannot be loaded (", 2)
    result = _run(
        {"DOCKYARD_STATE_DIR": str(state), "HOME": str(tmp_path)}, "serve", "--port", "0", *args
    )
    assert (result.stderr[: len(want[0])], result.returncode) == want, result.stderr
    assert result.stdout == ""  # no "listening" line: nothing a caller could take as up
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) <= 3, result.stderr


def test_several_processes_are_refused_off_linux(monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from dockyard import cli
    from dockyard.api import workers

    monkeypatch.setattr(workers.sys, "platform", "darwin")
    result = CliRunner().invoke(cli.app, ["serve", "--port", "0", "--workers", "2"])
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "ERROR: --workers: 2 is not allowed (allowed: 1 on darwin: Linux only)"
    )


def test_one_worker_keeps_one_process(tmp_path: Path) -> None:
    servers = start_server(tmp_path, {})
    one = next(servers)
    try:
        assert _children(one.process.pid) == []
        assert _listeners(httpx.URL(one.url).port or 0) == {one.process.pid}
    finally:
        servers.close()


def test_a_process_that_cannot_be_made_leaves_none_running(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from dockyard.api import workers
    from dockyard.errors import Failed

    made: list[int] = []
    real_fork = os.fork

    def fork() -> int:
        if made:
            raise OSError(11, "Resource temporarily unavailable")
        pid = real_fork()
        if pid:
            made.append(pid)
        return pid

    monkeypatch.setattr(workers.os, "fork", fork)
    sock = listening("127.0.0.1", 0)
    try:
        with pytest.raises(Failed, match=r"--workers 2: cannot start a server process"):
            workers.supervise(sock, 2, lambda: time.sleep(60))
    finally:
        sock.close()
    assert len(made) == 1
    assert not _alive(made[0])  # killed and reaped, not left serving
