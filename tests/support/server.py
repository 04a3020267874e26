"""A real ``dockyard serve`` on loopback for tests (and benchmarks): API keys made with
``dockyard keys create``, the server started on a free port in a process of its own and
waited for, then stopped, its log shown with a failing test's output."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DOCKYARD = Path(sys.executable).with_name("dockyard")
LISTENING = (
    "dockyard: listening on http://127.0.0.1:",
    "dockyard: listening on https://127.0.0.1:",
)
"""The first line ``dockyard serve`` prints once it accepts connections (HTTP, or HTTPS
when given ``--tls-cert``/``--tls-key``)."""


class NotListening(AssertionError):
    """The server's first line is not :data:`LISTENING` (it failed to start)."""


@dataclass(frozen=True)
class Serving:
    """A running ``dockyard serve``."""

    url: str
    process: subprocess.Popen[str]
    log: Path


def create_key(env: Mapping[str, str], store: str, *flags: str) -> dict[str, Any]:
    """``dockyard keys create <flags> --json`` on the key store ``store`` with ``env``:
    the key's JSON (``key`` is the secret). Fails the test when the command fails."""
    made = subprocess.run(
        [str(DOCKYARD), "keys", "create", *flags, "--json", "--key-store", store],
        env=dict(env),
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert made.returncode == 0, made.stderr
    return dict(json.loads(made.stdout))


def stop(process: subprocess.Popen[Any], timeout: float = 30) -> None:
    """SIGTERM, and SIGKILL when the process has not ended ``timeout`` s later."""
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextmanager
def serve(
    env: Mapping[str, str], store: str, log: Path, *args: str, show_log: bool = True
) -> Iterator[Serving]:
    """``dockyard serve --port 0 --key-store <store> <args>`` with ``env``, its stderr in
    ``log``; yields once it listens (:class:`NotListening`, with its first line and log,
    when it does not). Stopped on the way out (:func:`stop`); with ``show_log`` its log is
    printed then (pytest shows it with a failing test: the tracebacks of 500s)."""
    assert DOCKYARD.is_file(), f"the dockyard console script is not installed at {DOCKYARD}"
    with log.open("w") as stderr:
        process = subprocess.Popen(
            [str(DOCKYARD), "serve", "--port", "0", "--key-store", store, *args],
            env=dict(env),
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
        try:
            line = process.stdout.readline() if process.stdout else ""
            if not line.startswith(LISTENING):
                raise NotListening(f"dockyard serve did not start: {line!r}\n{log.read_text()}")
            yield Serving(line.split(" on ", 1)[1].strip(), process, log)
        finally:
            stop(process)
            if process.stdout:
                process.stdout.close()
            if show_log:
                print(log.read_text())
