"""Figures the reliability tests measure: printed at the end of the run and written to
benchmarks/results/reliability.json for the issue notes and docs/performance.md — never
asserted as timings, apart from bounds an issue sets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "benchmarks" / "results" / "reliability.json"

FIGURES: dict[str, Any] = {}


def report(terminalreporter: Any) -> None:
    """Print the figures of this run and write them to :data:`RESULTS`."""
    if not FIGURES:
        return
    terminalreporter.write_sep("-", "reliability figures")
    for key, value in FIGURES.items():
        terminalreporter.write_line(f"{key}: {value}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(FIGURES, indent=2) + "\n")
