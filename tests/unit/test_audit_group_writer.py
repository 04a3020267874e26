"""The HTTP server's audit lines (dockyard.sessions.audit.appended): grouped per write, yet
every request keeps its own whole line, in the order handed over, on disk when the
caller's await returns; lines from other processes appending to the same trail (the CLI,
the host scripts) interleave only as whole lines; lines handed over before a process exits
are written."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from dockyard.sessions import audit


def _entry(index: int, actor: str = "key:abc") -> dict[str, object]:
    return {
        "time": audit.now(),
        "actor": actor,
        "action": "api",
        "tenant": "acme",
        "result": "ok",
        "duration_ms": 1,
        "detail": f"GET /api/sessions 200 request {index:06d}",
    }


def _lines(log: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in log.read_text().splitlines()]


def test_concurrent_lines_are_grouped_each_whole_in_order_and_on_disk_when_awaited(
    tmp_path: Path,
) -> None:
    log = tmp_path / "trail" / "audit.jsonl"

    async def one(index: int) -> None:
        await audit.appended(log, _entry(index))
        # On disk (in the file) once the await returns, as append was.
        assert f"request {index:06d}" in log.read_text()

    async def many() -> None:
        await asyncio.gather(*(one(i) for i in range(600)))

    asyncio.run(many())
    written = audit.writer(log)
    details = [line["detail"] for line in _lines(log)]
    assert details == [f"GET /api/sessions 200 request {i:06d}" for i in range(600)]
    # Grouped: far fewer writes (each one lock, one write, one fsync) than lines.
    assert 2 <= written.groups < 300, written.groups


def test_a_line_that_cannot_be_written_is_each_callers_error(tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("")

    async def both() -> list[BaseException | None]:
        return await asyncio.gather(
            audit.appended(blocked / "audit.jsonl", _entry(1)),
            audit.appended(blocked / "audit.jsonl", _entry(2)),
            return_exceptions=True,
        )

    assert [type(error) for error in asyncio.run(both())] == [FileExistsError] * 2


def test_a_line_json_cannot_hold_fails_alone_and_the_others_are_written(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    bad = {**_entry(1), "detail": object()}

    async def three() -> list[BaseException | None]:
        return await asyncio.gather(
            audit.appended(log, _entry(0)),
            audit.appended(log, bad),
            audit.appended(log, _entry(2)),
            return_exceptions=True,
        )

    outcomes = asyncio.run(three())
    assert outcomes[0] is None, outcomes
    assert outcomes[2] is None, outcomes
    assert isinstance(outcomes[1], TypeError)
    assert [line["detail"] for line in _lines(log)] == [
        "GET /api/sessions 200 request 000000",
        "GET /api/sessions 200 request 000002",
    ]


WRITER = textwrap.dedent(
    """
    import asyncio, sys, time
    from pathlib import Path
    from dockyard.sessions import audit

    log, who, count, start = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
    detail = who * 400  # long lines: a torn write would show
    time.sleep(max(0.0, float(start) - time.time()))  # the writers start together

    def entry(i):
        return {"time": audit.now(), "actor": who, "action": "api", "detail": f"{i} {detail}"}

    async def grouped():  # in waves, so groups are written while the others write
        for wave in range(0, count, 10):
            await asyncio.gather(*(audit.appended(log, entry(i)) for i in range(wave, wave + 10)))

    if who == "g":
        asyncio.run(grouped())
    elif who == "q":  # handed over, never awaited: the process ends right after
        for i in range(count):
            audit.writer(log).submit(entry(i))
    else:
        for i in range(count):
            audit.append(log, entry(i))
    """
)


def _write(log: Path, who: str, count: int, start: float = 0.0) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-c", WRITER, str(log), who, str(count), str(start)]
    return subprocess.Popen(command)


def test_processes_appending_at_once_interleave_only_whole_lines(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    start = time.time() + 2  # after the three interpreters have started, even on a busy host
    counts = {"g": 400, "a": 300, "b": 300}
    writers = [_write(log, who, count, start) for who, count in counts.items()]
    assert [w.wait(timeout=120) for w in writers] == [0, 0, 0]
    lines = _lines(log)  # a torn or interleaved line would not parse
    for who, count in counts.items():
        mine = [str(line["detail"]) for line in lines if line["actor"] == who]
        assert mine == [f"{i} {who * 400}" for i in range(count)], who


@pytest.mark.parametrize("count", [1, 300])
def test_lines_handed_over_before_the_process_exits_are_written(tmp_path: Path, count: int) -> None:
    log = tmp_path / "audit.jsonl"
    assert _write(log, "q", count).wait(timeout=120) == 0
    assert len(_lines(log)) == count


def test_flush_returns_once_the_queued_lines_are_written(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    group = audit.GroupWriter(log)
    for index in range(50):
        group.submit(_entry(index))
    group.flush()
    assert len(_lines(log)) == 50
    group.flush()  # nothing queued: at once


def test_a_short_write_fails_every_caller_of_the_group_and_leaves_the_log_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "audit.jsonl"
    asyncio.run(audit.appended(log, _entry(0)))
    before = log.read_bytes()
    real, calls = os.write, []

    def filling(fd: int, data: Any) -> int:  # the disk fills up mid-group
        calls.append(len(data))
        if len(calls) == 1:
            return real(fd, bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", filling)

    async def many() -> list[BaseException | None]:
        lines = (audit.appended(log, _entry(i)) for i in range(1, 60))
        return await asyncio.gather(*lines, return_exceptions=True)

    outcomes = asyncio.run(many())
    monkeypatch.undo()
    assert calls, "the write was not reached"
    # Nobody is told "on disk" for a line that is not; no torn line stays.
    assert [getattr(out, "errno", out) for out in outcomes] == [errno.ENOSPC] * 59
    assert log.read_bytes() == before
    asyncio.run(audit.appended(log, _entry(60)))
    assert [line["detail"] for line in _lines(log)][-1].endswith("request 000060")


def _hung(monkeypatch: pytest.MonkeyPatch) -> tuple[threading.Event, threading.Event]:
    """The disk hangs (every group's write waits) until the gate (first) is set; the
    second event is set once the writer waits."""
    gate, entered = threading.Event(), threading.Event()
    real = audit.append_lines

    def hanging(log: Path, entries: list[dict[str, Any]]) -> None:
        entered.set()
        gate.wait(120)
        real(log, entries)

    monkeypatch.setattr(audit, "append_lines", hanging)
    return gate, entered


def test_a_full_queue_makes_callers_wait_and_one_that_goes_away_leaves_no_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "audit.jsonl"
    group = audit.writer(log)
    monkeypatch.setattr(group, "MAX_WAITING", 4)
    gate, entered = _hung(monkeypatch)

    async def run() -> list[BaseException | None]:
        tasks = [asyncio.create_task(audit.appended(log, _entry(i))) for i in range(20)]
        deadline = time.monotonic() + 60  # generous: a loaded host
        while not entered.is_set():  # the writer holds its first group
            assert time.monotonic() < deadline, "the writer never started"
            await asyncio.sleep(0.01)
        while group._queued + len(group._room) < 20:  # each one queued or waiting for room
            assert time.monotonic() < deadline, (group._queued, len(group._room))
            await asyncio.sleep(0.01)
        # The writer holds at most one group (<= 4 lines); at most 4 more are queued.
        assert len(group._waiting) == 4
        assert len(group._room) >= 12
        waiting = len(group._room)
        for task in tasks[15:]:  # their clients went away while the disk hangs
            task.cancel()
        await asyncio.wait(tasks[15:])
        assert len(group._room) == waiting - 5  # forgotten: nothing kept for them
        gate.set()
        rest = asyncio.gather(*tasks[:15], return_exceptions=True)
        return await asyncio.wait_for(rest, 60)  # a caller never let in fails, not hangs

    try:
        outcomes = asyncio.run(run())
    finally:
        gate.set()
    assert outcomes == [None] * 15
    details = [line["detail"] for line in _lines(log)]
    assert details == [f"GET /api/sessions 200 request {i:06d}" for i in range(15)]


def test_flush_is_bounded_when_the_disk_hangs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    group = audit.GroupWriter(tmp_path / "audit.jsonl")
    gate, _ = _hung(monkeypatch)
    pool = ThreadPoolExecutor(1)  # a flush that never returns fails the test, not hangs it
    try:
        group.submit(_entry(1))
        assert pool.submit(group.flush, 0.2).result(timeout=60) is False  # gives up
        assert group._thread is not None
        assert group._thread.daemon  # cannot hold the exit
    finally:
        gate.set()
        pool.shutdown(wait=False)
    assert group.flush(60) is True
    assert len(_lines(tmp_path / "audit.jsonl")) == 1


HUNG = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from dockyard.sessions import audit

    audit.append_lines = lambda log, entries: time.sleep(3600)  # the disk hangs
    audit.EXIT_FLUSH_S = 0.5
    audit.writer(Path(sys.argv[1])).submit({"time": audit.now(), "action": "api"})
    """
)


def test_a_hung_disk_cannot_keep_the_process_from_exiting(tmp_path: Path) -> None:
    command = [sys.executable, "-c", HUNG, str(tmp_path / "audit.jsonl")]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    try:
        _, err = process.communicate(timeout=60)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == 0
    assert "audit lines still queued after 0.5 s at exit are lost" in err
