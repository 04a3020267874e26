"""The audit trail's one writer: one JSON line per lifecycle action, appended under a lock,
rotated (standard library only). The sessions layer (:mod:`dockyard.sessions.audit`) and
the host scripts (health refresh and restart, idle stop and power-off, workspace backups)
write their lines through :func:`append`, so the two trails cannot drift apart.

Line fields, in this order: ``time`` (UTC, ISO 8601 with milliseconds), ``actor``,
``action``, ``session``, ``tenant``, ``host``, ``stack``, ``result`` (``ok`` or
``error``), ``duration_ms``, and ``detail`` (a short reason). Values are names and numbers
only: no request body, environment value or secret is ever written. The log is 0600 in a
0700 directory; over :data:`MAX_BYTES` it is rotated to ``.1`` … ``.KEEP`` first.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..contract import LABEL_SESSION, LABEL_STACK, LABEL_TENANT
from ..files import write_synced

FIELDS = ("time", "actor", "action", "session", "tenant", "host", "stack", "result", "duration_ms")
MAX_BYTES = 10 * 1024 * 1024
KEEP = 5
HOST_LOG = "/var/log/dockyard/audit.jsonl"
"""The host scripts' log, unless ``$DOCKYARD_AUDIT_LOG`` names another."""
DETAIL_MAX = 300
"""A host script's ``detail`` (an error message) and a request's are cut to this many
characters."""
LINE_DETAIL_MAX = 4096
"""Any writer's ``detail`` is cut to this many characters: no caller makes a huge line."""


def now() -> str:
    """The line's ``time``: UTC, ISO 8601 with milliseconds (``2026-12-06T17:15:37.123Z``)."""
    moment = datetime.now(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def append(log: str | os.PathLike[str], entry: Mapping[str, Any]) -> None:
    """Append one line of ``entry``'s :data:`FIELDS` and ``detail`` (those it has, in that
    order); rotate first when the log is over :data:`MAX_BYTES`."""
    append_lines(log, [entry])


def append_lines(log: str | os.PathLike[str], entries: Sequence[Mapping[str, Any]]) -> None:
    """:func:`append` of each of ``entries``, in order, under one lock: one rotation check,
    one ``O_APPEND`` write of the whole lines, one ``fsync`` (every line on disk when this
    returns). A writer of many lines at once (the HTTP server's) pays once per group. All
    or nothing: on an error (``OSError``) none of the lines stays in the log; a ``detail``
    is cut to :data:`LINE_DETAIL_MAX` characters."""
    if not entries:
        return
    path = Path(log)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    text = "".join(json.dumps(_line(entry)) + "\n" for entry in entries)
    with _locked(path):
        with contextlib.suppress(FileNotFoundError):
            if path.stat().st_size > MAX_BYTES:
                _rotate(path)
        if not _ends_a_line(path):
            # A line torn by a crash mid-write stays on its own (readers skip it), never
            # glued to this one's start.
            text = "\n" + text
        write_synced(path, text, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)


def _line(entry: Mapping[str, Any]) -> dict[str, Any]:
    line = {k: entry.get(k) for k in (*FIELDS, "detail") if k in entry}
    if isinstance(line.get("detail"), str) and len(line["detail"]) > LINE_DETAIL_MAX:
        line["detail"] = line["detail"][:LINE_DETAIL_MAX]
    return line


def _ends_a_line(log: Path) -> bool:
    """Whether ``log`` is missing, empty, or ends with a newline."""
    try:
        fd = os.open(log, os.O_RDONLY)
    except FileNotFoundError:
        return True
    try:
        size = os.fstat(fd).st_size
        return size == 0 or os.pread(fd, 1, size - 1) == b"\n"
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


def audit(
    action: str,
    *,
    actor: str,
    labels: Mapping[str, str] | None = None,
    result: str = "ok",
    duration_ms: int = 0,
    detail: str | None = None,
    log: str | None = None,
) -> None:
    """A host script's line for ``action`` on the environment whose container carries
    ``labels`` (session, tenant, stack come from them), in ``log``, else
    ``$DOCKYARD_AUDIT_LOG``, else :data:`HOST_LOG`. A log that cannot be written is
    reported on stderr, never fatal to the action it records."""
    labels = labels or {}
    entry: dict[str, Any] = {
        "time": now(),
        "actor": actor,
        "action": action,
        "session": labels.get(LABEL_SESSION),
        "tenant": labels.get(LABEL_TENANT),
        "host": socket.gethostname(),
        "stack": labels.get(LABEL_STACK),
        "result": result,
        "duration_ms": duration_ms,
    }
    if detail:
        entry["detail"] = detail[:DETAIL_MAX]
    path = log or os.environ.get("DOCKYARD_AUDIT_LOG") or HOST_LOG
    try:
        append(path, entry)
    except OSError as exc:
        print(f"WARNING: audit log {path}: {exc}", file=sys.stderr)
