"""Shared pieces of the reliability suite: the health report script as the host runs it,
and the figures each test measures (printed at the end of the run, for the issue note
and docs/performance.md — never asserted as timings, apart from the 2 s neighbour bound
the issue sets)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
HEALTH_SCRIPT = REPO / "roles" / "env_health" / "files" / "dockyard-health.py"

FIGURES: dict[str, Any] = {}


def health_report(stack: str, report_file: Path, *args: str) -> dict[str, dict[str, Any]]:
    """Run the role's health script against one stack's environments; returns the
    report's environments by container name. The script exits 1 when a refresh failed;
    that is for the caller to assert, from the report."""
    result = subprocess.run(
        [
            sys.executable,
            str(HEALTH_SCRIPT),
            "--label",
            f"dockyard.stack={stack}",
            "--report-file",
            str(report_file),
            "--json",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode in (0, 1), result.stderr
    report = json.loads(result.stdout)
    return {env["name"]: env for env in report["environments"]}


@pytest.fixture(scope="session")
def figures() -> dict[str, Any]:
    return FIGURES


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if FIGURES:
        terminalreporter.write_sep("-", "reliability figures")
        for key, value in FIGURES.items():
            terminalreporter.write_line(f"{key}: {value}")
        out = REPO / "benchmarks" / "results" / "reliability.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(FIGURES, indent=2) + "\n")
