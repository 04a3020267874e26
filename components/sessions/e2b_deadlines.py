"""The sandboxes' deadlines (issue 30): :func:`expire`, which the server runs in a loop,
destroys every sandbox past its ``endAt`` — or pauses it there when it was created with
``autoPause`` (E2B's ``onTimeout: "pause"``); a paused sandbox has no deadline, and its
clock runs again from the first sweep that finds it running (:func:`clock_again`).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from ..errors import Conflict, Failed
from . import e2b_records as records
from . import hibernate
from . import pause as pausing
from .e2b_records import Sandbox
from .registry import Record, SessionNotFound
from .service import SessionsLike


def expire(sessions: Any, now: dt.datetime | None = None) -> list[str]:
    """Destroy every sandbox whose deadline has passed (every tenant's; one created with
    ``autoPause`` is paused instead, without a deadline); answers the destroyed ids. One
    that fails to go is tried again on the next call."""
    moment = now or records.utc_now()
    gone = []
    for record in sessions.registry.all():
        sandbox = records.load(sessions, record)
        if sandbox is None:
            continue
        if sandbox.endAt is None:
            # Paused through E2B (no clock), then woken another way (dockyard resume, an
            # exec's wake on use): it runs again, so its timeout runs again from now.
            if records.state_of(record, sessions) == "running":
                clock_again(sessions, record, sandbox, moment)
            continue
        if records.parse_iso(sandbox.endAt) > moment:
            continue
        if sandbox.autoPause:
            # onTimeout "pause": frozen (memory kept), no clock until connect or a wake.
            if not _suspended_at_deadline(sessions, record):
                continue  # the next round tries again
            sandbox.endAt = None
            records.save(sessions, record.stack_name, sandbox)
            continue
        try:
            sessions.destroy(record.session_id, record.tenant)
        except SessionNotFound:
            pass
        except Exception:  # noqa: S112 - the next round tries again; the audit has it
            continue
        records.path_of(sessions, record).unlink(missing_ok=True)
        gone.append(record.session_id)
    return gone


def _suspended_at_deadline(sessions: Any, record: Record) -> bool:
    """Pause an ``autoPause`` sandbox whose deadline passed; True once it is frozen
    (paused now or before, or hibernated). A sandbox that is stopped or restarting keeps
    its deadline (False, nothing audited): the agent can crash its own container at the
    deadline, and a restart must not buy it a new timeout — a round after it runs again
    pauses it."""
    state = _engine_status(record)
    if state in ("paused", "hibernated"):
        return True
    if state != "running":
        return False
    try:
        sessions.pause(record.session_id, record.tenant)
    except Exception:  # the audit has it; the next round tries again
        return False
    return True


def _engine_status(record: Record) -> str:
    """The engine's status of the sandbox's container (``hibernated`` for a stopped one
    holding dockyard's checkpoint; ``gone`` when it cannot be read)."""
    try:
        container = pausing.container_of(record, pausing.shared_client(record.host))
    except (Conflict, Failed):
        return "gone"
    return "hibernated" if hibernate.is_hibernated(container) else str(container.status)


def clock_again(
    sessions: SessionsLike, record: Record, sandbox: Sandbox, moment: dt.datetime
) -> None:
    """A sandbox without a deadline (paused) runs again: its timeout runs from ``moment``."""
    sandbox.endAt = records.iso(moment + dt.timedelta(seconds=sandbox.timeout))
    records.save(sessions, record.stack_name, sandbox)
