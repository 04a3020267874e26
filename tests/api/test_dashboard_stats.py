"""The stats rings behind the dashboard's bars and chart (dockyard.sessions.stats_history)
and the chart's points (dockyard.api.dashboard.bars), with fakes: no engine."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from dockyard.api.dashboard import bars
from dockyard.sessions import stats_history
from dockyard.sessions.stats_history import Sample, Sampler, StatsHistory, sample_of

GIB = 1024**3


def _sample(at: float, memory: int | None = GIB, disk: int | None = 2 * GIB) -> Sample:
    return Sample(at, memory, 4 * GIB, disk, 10 * GIB, 12.5)


def test_a_ring_keeps_its_newest_samples_and_the_last_hour() -> None:
    history = StatsHistory(ring=3)
    for at in (100.0, 200.0, 300.0, 400.0):
        history.record("acme", "a1", _sample(at))
    assert [s.at for s in history.series("acme", "a1", 3600, now=400.0)] == [200.0, 300.0, 400.0]
    assert [s.at for s in history.series("acme", "a1", 150, now=400.0)] == [300.0, 400.0]
    latest = history.latest("acme", "a1")
    assert latest is not None
    assert latest.at == 400.0
    # Another tenant's session of the same name is another ring.
    assert history.latest("blue", "a1") is None
    assert history.series(None, "a1") == []


def test_rings_are_bounded_in_number_and_forget_gone_sessions() -> None:
    history = StatsHistory(ring=2, max_sessions=2)
    history.record("t", "s1", _sample(1))
    history.record("t", "s2", _sample(2))
    history.record("t", "s1", _sample(3))  # s1 fed last: s2 is the least recently fed
    history.record("t", "s3", _sample(4))
    assert history.latest("t", "s2") is None
    assert history.latest("t", "s1") is not None
    assert history.latest("t", "s3") is not None
    history.keep_only({("t", "s3")})
    assert history.latest("t", "s1") is None


def test_a_sample_of_what_workspace_stats_answers() -> None:
    stats = {
        "memory": {"used": 5, "limit": 10, "percent": 50.0},
        "disk": {"used": 1, "total": 4},
        "cpu": {"percent": 3},
    }
    assert sample_of(stats, 7.0) == Sample(7.0, 5, 10, 1, 4, 3.0)
    assert sample_of({"memory": {"used": True}, "disk": {}}, 1.0) == Sample(
        1.0, None, None, None, None, None
    )


def test_the_chart_places_each_sample_by_time_and_percent() -> None:
    now = 10_000.0
    samples = [_sample(now - 3600), _sample(now - 1800, memory=2 * GIB), _sample(now, 4 * GIB)]
    drawn = bars.chart(samples, now)
    assert drawn is not None
    w, h = bars.CHART_W, bars.CHART_H
    # memory 25%, 50%, 100% of 4 GiB: left edge, middle, right edge.
    assert drawn["memory"] == f"0.0,{0.75 * h:.1f} {w / 2:.1f},{0.5 * h:.1f} {float(w):.1f},0.0"
    assert drawn["disk"].count(",") == 3
    assert "Memory: now 100%, lowest 25%, highest 100% of its limit" in drawn["summary"]
    assert "3 samples" in drawn["summary"]
    assert bars.chart([], now) is None
    unknown = bars.chart([_sample(now, memory=None, disk=None)], now)
    assert unknown is not None
    assert unknown["memory"] == ""
    assert "Memory: not reported" in unknown["summary"]


class _Workspace:
    def __init__(self, stats: dict[str, Any]) -> None:
        self._stats, self.closed = stats, False
        self.client = self

    def stats(self) -> dict[str, Any]:
        return self._stats

    def close(self) -> None:
        self.closed = True


class _Sessions:
    """Three sessions on one host: r1 running, p1 paused, x1 running but its stats fail."""

    def __init__(self) -> None:
        self.opened: list[_Workspace] = []

    def list(self, tenant: str | None) -> list[dict[str, Any]]:
        assert tenant is None
        return [
            {"sessionId": s, "tenant": "acme", "host": "local", "container": f"c-{s}"}
            for s in ("r1", "p1", "x1")
        ]

    def workspace(self, session: str, tenant: str | None) -> _Workspace:
        made = _Workspace({"memory": {"used": 1, "limit": 2}} if session == "r1" else {})
        if session == "x1":
            made.stats = lambda: (_ for _ in ()).throw(RuntimeError("engine away"))  # type: ignore[method-assign]
        self.opened.append(made)
        return made


def test_a_round_samples_the_running_sessions_only_and_closes_their_clients(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[str] = []

    def engine_states(host: str) -> dict[str, dict[str, Any]]:
        calls.append(host)
        return {
            "c-r1": {"status": "running"},
            "c-p1": {"status": "paused"},
            "c-x1": {"status": "running"},
        }

    monkeypatch.setattr(stats_history, "engine_states", engine_states)
    sessions, history = _Sessions(), StatsHistory()
    history.record("acme", "gone", _sample(1))
    assert stats_history.sample_round(sessions, history) == 1
    assert calls == ["local"]  # one list call per host a round
    r1 = history.latest("acme", "r1")
    assert r1 is not None
    assert (r1.memory_used, r1.memory_limit) == (1, 2)
    assert history.latest("acme", "p1") is None
    assert history.latest("acme", "x1") is None
    assert history.latest("acme", "gone") is None
    assert [w.closed for w in sessions.opened] == [True, True]


def test_the_sampler_runs_rounds_until_stopped() -> None:
    rounds = threading.Semaphore(0)

    def one_round(sessions: Any, history: StatsHistory) -> int:
        rounds.release()
        raise RuntimeError("a failing round does not stop the sampler")

    sampler = Sampler(object(), StatsHistory(), interval_s=0.01, round_=one_round).start()
    try:
        assert rounds.acquire(timeout=5)
        assert rounds.acquire(timeout=5)
    finally:
        sampler.stop()
