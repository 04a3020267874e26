"""The audit trail: one JSON line per lifecycle action, appended under a lock, rotated.

Line fields: ``time`` (UTC, ISO 8601 with milliseconds), ``actor`` (the CI actor if one is
set, else the OS user), ``action``, ``session``, ``tenant``, ``host``, ``stack``,
``result`` (``ok`` or ``error``), ``duration_ms``, and ``detail`` (a short reason on
errors). Values are names and numbers only: no request body, env value or secret is
ever written. Host scripts (health refresh, idle stop and power-off) append the same
lines through the host library.
"""

from __future__ import annotations

import contextlib
import fcntl
import getpass
import json
import os
import time
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

MAX_BYTES = 10 * 1024 * 1024
KEEP = 5
FIELDS = ("time", "actor", "action", "session", "tenant", "host", "stack", "result", "duration_ms")
# CI systems name who triggered a run; a person at a terminal is the OS user.
CI_ACTOR_VARIABLES = ("GITHUB_ACTOR", "GITLAB_USER_LOGIN", "BUILDKITE_BUILD_CREATOR", "CI_ACTOR")


def actor(environ: Mapping[str, str] | None = None) -> str:
    env = os.environ if environ is None else environ
    for name in CI_ACTOR_VARIABLES:
        if env.get(name):
            return f"ci:{env[name]}"
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid:{os.getuid()}"


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def append(log: Path, entry: Mapping[str, Any]) -> None:
    """Append one line; rotate first when the log is over :data:`MAX_BYTES`."""
    log.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    line = json.dumps({k: entry.get(k) for k in (*FIELDS, "detail") if k in entry}, sort_keys=False)
    with _locked(log):
        with contextlib.suppress(FileNotFoundError):
            if log.stat().st_size > MAX_BYTES:
                _rotate(log)
        fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, (line + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)


def _rotate(log: Path) -> None:
    for index in range(KEEP - 1, 0, -1):
        older = log.with_name(f"{log.name}.{index}")
        if older.exists():
            older.replace(log.with_name(f"{log.name}.{index + 1}"))
    log.replace(log.with_name(f"{log.name}.1"))


@contextlib.contextmanager
def _locked(log: Path) -> Iterator[None]:
    with open(log.with_name(log.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@contextlib.contextmanager
def recorded(log: Path, action: str, **fields: Any) -> Iterator[dict[str, Any]]:
    """Audit ``action`` around a block: one line with its result and duration, also when
    the block raises (then ``result: error`` and the exception's type as ``detail``)."""
    entry: dict[str, Any] = {"action": action, "actor": actor(), **fields}
    started = time.monotonic()
    try:
        yield entry
    except BaseException as exc:
        entry["result"] = "error"
        entry.setdefault("detail", type(exc).__name__)
        raise
    else:
        entry.setdefault("result", "ok")
    finally:
        entry.update(time=now(), duration_ms=round((time.monotonic() - started) * 1000))
        append(log, entry)


def read(
    log: Path, *, session: str | None = None, tenant: str | None = None
) -> list[dict[str, Any]]:
    """Lines of the current log and its rotations, oldest first, filtered."""
    files = [log.with_name(f"{log.name}.{i}") for i in range(KEEP, 0, -1)] + [log]
    entries = []
    for path in files:
        with contextlib.suppress(FileNotFoundError):
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if session and entry.get("session") != session:
                    continue
                if tenant and entry.get("tenant") != tenant:
                    continue
                entries.append(entry)
    return entries
