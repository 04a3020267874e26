"""Stop and start this machine's Docker engine the way the docker_host role supervises
it on hosts without systemd (start-stop-daemon with a pidfile) — for tests that prove
what survives an engine restart. The engine is always started again."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

# The docker_host role's background supervision (roles/docker_host/vars/main.yml).
PIDFILE = "/run/dockyard-dockerd.pid"
LOGFILE = "/var/log/dockyard-dockerd.log"


def dockerd_pid() -> int | None:
    out = subprocess.run(["pgrep", "-x", "dockerd"], capture_output=True, text=True, check=False)
    pids = [int(p) for p in out.stdout.split()]
    return pids[0] if pids else None


def engine_answers() -> bool:
    return (
        subprocess.run(
            ["docker", "version", "--format", "{{.Server.Version}}"],
            capture_output=True,
            check=False,
        ).returncode
        == 0
    )


def start_engine(argv: list[str]) -> None:
    """Start dockerd the way the docker_host role does on hosts without systemd."""
    subprocess.run(
        [
            "start-stop-daemon",
            "--start",
            "--background",
            "--make-pidfile",
            "--pidfile",
            PIDFILE,
            "--output",
            LOGFILE,
            "--exec",
            argv[0],
            "--",
            *argv[1:],
        ],
        check=True,
    )


def engine_argv() -> list[str]:
    """The running dockerd's command line, to start it again exactly so."""
    pid = dockerd_pid()
    assert pid, "no dockerd process on this machine"
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().rstrip("\0").split("\0")


@contextlib.contextmanager
def engine_down(argv: list[str]) -> Iterator[dict[str, float]]:
    """Stops dockerd; the block runs while it is down; it is always started again."""
    timings: dict[str, float] = {}
    pid = dockerd_pid()
    assert pid
    started = time.perf_counter()
    os.kill(pid, signal.SIGTERM)
    try:
        deadline = time.monotonic() + 60
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not Path(f"/proc/{pid}").exists(), "dockerd did not stop within 60 s"
        timings["stop"] = time.perf_counter() - started
        yield timings
    finally:
        if not engine_answers():
            begun = time.perf_counter()
            start_engine(argv)
            deadline = time.monotonic() + 90
            while not engine_answers() and time.monotonic() < deadline:
                time.sleep(0.2)
            timings["start"] = time.perf_counter() - begun
        assert engine_answers(), f"dockerd did not come back; see {LOGFILE}"
