"""The sessions' audit trail: one JSON line per lifecycle action (:func:`recorded` around
it), read back filtered (:func:`read`).

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
from pathlib import Path
from typing import Any

from ..host.audit_trail import FIELDS, KEEP, MAX_BYTES, append, now

__all__ = ["FIELDS", "KEEP", "MAX_BYTES", "actor", "append", "now", "read", "recorded"]

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
