"""Timing, summary statistics and result files shared by the benchmarks."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def summary(samples: Sequence[float]) -> dict[str, float]:
    """Median and spread (min, max) of at least one sample, in the samples' unit."""
    return {
        "median": statistics.median(samples),
        "min": min(samples),
        "max": max(samples),
        "runs": len(samples),
    }


def write_result(name: str, payload: dict[str, Any]) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **payload}, indent=2) + "\n")
    return path


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [list(map(str, headers))] + [
        [f"{c:.3f}" if isinstance(c, float) else str(c) for c in row] for row in rows
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(cell.rjust(widths[i]) for i, cell in enumerate(row)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


RUNS = int(os.environ.get("DOCKYARD_BENCH_RUNS", "5"))
"""Samples per figure (median and spread are reported); at least 5 for the record."""


def engine() -> Any:
    """A Docker client, or SystemExit with a clear message when no engine answers."""
    import docker

    try:
        client = docker.from_env(timeout=300)
        client.ping()
    except Exception as exc:  # any transport error means "no engine here"
        raise SystemExit(f"ERROR: no Docker engine answers ({exc}); start one first") from None
    return client


def parse_engine_time(value: str) -> float:
    """Epoch seconds of an engine timestamp (RFC 3339 with nanoseconds, UTC)."""
    from datetime import datetime

    whole, _, fraction = value.rstrip("Z").partition(".")
    base = datetime.fromisoformat(whole + "+00:00").timestamp()
    return base + float("0." + (fraction or "0")[:6])


def verdict(value: float, budget: float) -> str:
    return "meets" if value <= budget else "MISSES"


def stat_row(label: str, samples: Sequence[float], baseline: float | None = None) -> list[Any]:
    """A table row: label, median, min, max and, given a baseline median, the ratio."""
    stats = summary(samples)
    ratio = f"{stats['median'] / baseline:.2f}" if baseline else ""
    return [label, stats["median"], stats["min"], stats["max"], ratio]


@contextlib.contextmanager
def deployed(client: Any, stack: str, values: dict[str, Any]) -> Iterator[Any]:
    """``values`` realised through the components (integration harness) as stack
    ``<stack><suffix>`` in a temporary project directory. The caller tears it down with
    ``.destroy()`` (and may time that); whatever is left, e.g. after an error, is removed
    by label on the way out."""
    from tests.support.stacks import Deployed

    with tempfile.TemporaryDirectory(prefix="dockyard-bench-") as cwd:
        target = Deployed(
            client,
            f"{stack}{int(time.time()) % 100000}",
            Path(cwd),
            {"cwd": cwd, "image": {"tag": "bench"}, **values},
            {},
        )
        try:
            target.up()
            yield target
        finally:
            target.force_cleanup()
