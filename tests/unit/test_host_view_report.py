"""The host view reads the health report bounded (issue 27's review, low finding): a
report past HEALTH_REPORT_MAX, or something that is not a regular file, is not read, and
the view says why."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from dockyard.sessions import host_view

REPORT = {
    "generatedAt": "2026-12-07T00:00:00Z",
    "environments": [
        {"name": "dockyard-a", "health": "unhealthy", "refresh_reasons": ["age"], "action": "none"}
    ],
}


def refused(limit: int = host_view.HEALTH_REPORT_MAX) -> str:
    return (
        f"the report is not a regular file of at most {limit} bytes "
        "(allowed: the env_health role's JSON report; not read)"
    )


def test_a_report_at_the_cap_is_read_and_one_past_it_is_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    report = tmp_path / "report.json"
    text = json.dumps(REPORT)
    monkeypatch.setattr(host_view, "HEALTH_REPORT_MAX", len(text) + 10)
    report.write_text(text + " " * 10)  # exactly at the cap (JSON allows the spaces)
    read = host_view.health_report(report)
    assert (read["environments"], read["unhealthy"]) == (1, ["dockyard-a"])
    report.write_text(text + " " * 11)
    assert host_view.health_report(report) == {
        "path": str(report),
        "error": refused(len(text) + 10),
    }


def test_a_huge_sparse_report_is_not_read_into_memory(tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    with report.open("wb") as handle:
        handle.truncate(64 * 2**30)  # 64 GiB of zeros, no disk used
    assert host_view.health_report(report)["error"] == refused()


def test_a_fifo_or_a_directory_in_its_place_is_refused_without_hanging(tmp_path: Path) -> None:
    fifo = tmp_path / "report.fifo"
    os.mkfifo(fifo)
    answers: list[dict[str, object]] = []
    reader = threading.Thread(target=lambda: answers.append(host_view.health_report(fifo)))
    reader.start()
    reader.join(5)
    if reader.is_alive():  # unblock it, then fail
        with open(fifo, "w"):
            pass
        reader.join(5)
        pytest.fail("reading a FIFO in the report's place blocked")
    assert answers[0]["error"] == refused()
    assert host_view.health_report(tmp_path)["error"] == refused()
