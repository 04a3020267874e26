"""The sessions' audit trail: one JSON line per lifecycle action (:func:`recorded` around
it), read back filtered (:func:`read`: by session, tenant, action, time and count, the
filters every face offers — ``dockyard audit`` and ``GET /api/audit``).

Lines are written by the one audit writer, :func:`dockyard.host.audit_trail.append` (fields,
locking, rotation), which the host scripts (health refresh, idle stop and power-off,
workspace backups) write their lines with too. ``actor`` is the CI actor if one is set,
else the OS user. Values are names and numbers only: no request body, env value or secret
is ever written.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import time
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..errors import InvalidInput
from ..host.audit_trail import FIELDS, KEEP, MAX_BYTES, append, now

__all__ = [
    "FIELDS",
    "KEEP",
    "MAX_BYTES",
    "actor",
    "append",
    "moment",
    "now",
    "read",
    "recorded",
]
SINCE_EXAMPLE = "2026-12-07T00:00:00Z"

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


def moment(text: str, key: str = "since") -> datetime:
    """An ISO 8601 time as a face's ``since`` gives it (``Z`` or an offset; none: UTC)."""
    try:
        parsed = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise InvalidInput(
            "audit", [f"{key}: {text!r} is not an ISO 8601 time (allowed: e.g. {SINCE_EXAMPLE})"]
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _at(text: str) -> datetime:
    """A line's time; one that cannot be read is older than any ``since``."""
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return datetime.min.replace(tzinfo=UTC)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def read(
    log: Path,
    *,
    session: str | None = None,
    tenant: str | None = None,
    action: str | None = None,
    since: datetime | None = None,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """Lines of the current log and its rotations, oldest first, filtered: ``session``,
    ``tenant`` and ``action`` equal to those given; ``since``: at or after that time (one
    without a zone is UTC); ``limit``: at most that many, the newest. A line that is not a
    JSON object with a string ``time`` and ``action`` is no audit line: left out."""
    problems = []
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        problems.append(f"limit: {limit!r} is not allowed (allowed: an integer >= 1)")
    if since is not None and not isinstance(since, datetime):
        problems.append(f"since: {since!r} is not allowed (allowed: a time, e.g. {SINCE_EXAMPLE})")
    if problems:
        raise InvalidInput("audit", problems)
    after = None if since is None else since if since.tzinfo else since.replace(tzinfo=UTC)
    files = [log.with_name(f"{log.name}.{i}") for i in range(KEEP, 0, -1)] + [log]
    entries = []
    for path in files:
        with contextlib.suppress(FileNotFoundError):
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if not (
                    isinstance(entry, dict)
                    and isinstance(entry.get("time"), str)
                    and isinstance(entry.get("action"), str)
                ):
                    continue
                if session and entry.get("session") != session:
                    continue
                if tenant and entry.get("tenant") != tenant:
                    continue
                if action and entry["action"] != action:
                    continue
                if after is not None and _at(entry["time"]) < after:
                    continue
                entries.append(entry)
    return entries[-limit:] if limit is not None else entries
