"""The engine's answer to "is this session ready?" for ``session.ready``
(:class:`dockyard.api.events.Readiness`): the session's record and manifest from the
service layer, its container's state from the engine (:mod:`.status`, the face's one
engine read until the service layer has a status verb)."""

from __future__ import annotations

from ..errors import DockyardError
from ..sessions import Sessions
from ..sessions.status import engine_state
from .events import Probe

WAITING = ("running", "created", "restarting", "unknown")
"""Container states that may still become ready (``unknown``: the engine did not answer)."""


def engine_probe(sessions: Sessions) -> Probe:
    def probe(session: str, tenant: str | None) -> str:
        try:
            record = sessions.registry.find(session, tenant)
            manifest = sessions.get(session, tenant)
        except DockyardError:
            return "gone"
        state = engine_state(str(manifest["container"]["id"]), record.host)
        if state["status"] == "running" and state["health"] in ("healthy", None):
            return "ready"
        return "waiting" if state["status"] in WAITING else "gone"

    return probe
