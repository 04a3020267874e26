"""The server's stats rings (:mod:`dockyard.sessions.stats_history`) for the dashboard:
made, with their sampler thread, on the first page that needs them (``app.state``:
``stats_interval_s`` sets the sampler's interval, 0 for none)."""

from __future__ import annotations

import threading

from fastapi import Request

from ...sessions.stats_history import INTERVAL_S, Sampler, StatsHistory
from .pages import ctx_of

_LOCK = threading.Lock()


def history_of(request: Request) -> StatsHistory:
    state = request.app.state
    with _LOCK:
        if getattr(state, "stats_history", None) is None:
            history = StatsHistory()
            interval = getattr(state, "stats_interval_s", INTERVAL_S)
            if interval:
                state.stats_sampler = Sampler(ctx_of(request).sessions, history, interval).start()
            state.stats_history = history
    return state.stats_history  # type: ignore[no-any-return]
