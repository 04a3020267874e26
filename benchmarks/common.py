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

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


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

RUNTIMES = ("runc", "runsc")
RUNTIMES_VARIABLE = "DOCKYARD_BENCH_RUNTIMES"
"""Which OCI runtimes a benchmark measures, e.g. ``runc,runsc`` (gVisor: docs/isolation.md)."""


def parse_runtimes(value: str | None, default: Sequence[str]) -> tuple[str, ...]:
    """The runtimes a ``DOCKYARD_BENCH_RUNTIMES`` value names, in its order without
    repeats; ``default`` when it is unset or empty. ValueError names what is allowed."""
    if value is None or not value.strip():
        return tuple(default)
    names = [name.strip() for name in value.split(",")]
    if not all(name in RUNTIMES for name in names):
        raise ValueError(
            f"{RUNTIMES_VARIABLE}={value!r} is not allowed "
            f"(allowed: a comma-separated list of {', '.join(RUNTIMES)})"
        )
    return tuple(dict.fromkeys(names))


def usable_runtimes(
    wanted: Sequence[str], registered: Sequence[str], explicit: bool
) -> tuple[tuple[str, ...], list[str]]:
    """(runtimes to measure, notes): a runtime the engine has not registered is an error
    when asked for by name (``explicit``), and skipped with a note when it only came from
    the default, so ``make bench`` still runs on an engine without gVisor."""
    missing = [name for name in wanted if name not in registered]
    if missing and explicit:
        raise ValueError(
            f"{RUNTIMES_VARIABLE} names {', '.join(missing)}, which the engine has not "
            f"registered (it has: {', '.join(sorted(registered))}); see docs/isolation.md"
        )
    notes = [
        f"runtime {name} skipped: not registered on this engine (docs/isolation.md); "
        f"set {RUNTIMES_VARIABLE} to choose runtimes"
        for name in missing
    ]
    return tuple(name for name in wanted if name in registered), notes


def runtimes(client: Any, default: Sequence[str]) -> tuple[str, ...]:
    """The runtimes to measure on ``client``'s engine (``DOCKYARD_BENCH_RUNTIMES`` or
    ``default``); SystemExit with the reason when none can be."""
    value = os.environ.get(RUNTIMES_VARIABLE)
    try:
        wanted = parse_runtimes(value, default)
        chosen, notes = usable_runtimes(
            wanted, list(client.info().get("Runtimes", {})), explicit=bool(value and value.strip())
        )
    except ValueError as exc:
        raise SystemExit(f"ERROR: {exc}") from None
    for note in notes:
        print(f"  {note}")
    if not chosen:
        raise SystemExit(f"ERROR: none of the runtimes {', '.join(wanted)} can be measured")
    return chosen


def on_runtime(values: dict[str, Any], runtime: str) -> dict[str, Any]:
    """Stack values whose every environment runs on ``runtime`` through the stack's
    profile (an environment can also name one itself; the benchmarks' do not)."""
    return {**values, "profiles": {"bench": {"runtime": runtime}}, "profile": "bench"}


def parse_sizes(variable: str, value: str | None, default: Sequence[int]) -> tuple[int, ...]:
    """Environment counts from a comma-separated ``value`` of ``variable`` (``default``
    when unset or empty); ValueError names the variable, the value and what is allowed."""
    if value is None or not value.strip():
        return tuple(default)
    try:
        sizes = tuple(int(part) for part in value.split(","))
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) < 1:
        raise ValueError(
            f"{variable}={value!r} is not allowed "
            "(allowed: a comma-separated list of whole numbers >= 1)"
        )
    return sizes


def ratio(value: float, baseline: float) -> float:
    """``value`` as a multiple of ``baseline`` (a median of at least one sample > 0)."""
    if baseline <= 0:
        raise ValueError(f"baseline {baseline!r} is not a time (allowed: > 0)")
    return value / baseline


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
    times = f"{ratio(stats['median'], baseline):.2f}" if baseline else ""
    return [label, stats["median"], stats["min"], stats["max"], times]


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


@contextlib.contextmanager
def session_home(prefix: str, image: str) -> Iterator[tuple[Path, Path, Path, Path]]:
    """A throwaway dockyard home for a benchmark's sessions: (base, state, project,
    settings), with the state naming ``image`` as the core image and empty host settings."""
    with tempfile.TemporaryDirectory(prefix=prefix) as base_dir:
        base = Path(base_dir)
        state, project = base / "state", base / "project"
        state.mkdir()
        project.mkdir()
        (state / "image.json").write_text(json.dumps({"imageRef": image}))
        settings = base / "settings.yaml"
        settings.write_text("{}")
        yield base, state, project, settings


def p95(samples: Sequence[float]) -> float:
    """The 95th percentile of at least one sample (nearest rank: a sample itself)."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def percentiles(samples: Sequence[float]) -> dict[str, float]:
    """p50 (the median), p95 (:func:`p95`), max and the count of at least one sample."""
    spread = summary(samples)
    return {
        "p50": spread["median"],
        "p95": p95(samples),
        "max": spread["max"],
        "runs": len(samples),
    }


def wait_ready(container: Any, deadline_s: float = 120) -> None:
    """Poll (every 20 ms) until ``container``'s entrypoint has written its ready marker;
    SystemExit naming the container after ``deadline_s``."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if container.exec_run(["test", "-f", "/tmp/ready"]).exit_code == 0:
            return
        time.sleep(0.02)
    raise SystemExit(f"ERROR: {container.name} not ready in {deadline_s} s")


def bench_env(state: Path, project: Path, settings: Path, **extra: str) -> dict[str, str]:
    """The environment of a ``dockyard`` process (serve, the CLI) on a
    :func:`session_home`: the harness driver realising sessions on this engine, loopback
    never through a proxy, an outer PYTHONPATH first (a copy of another revision can be
    measured); ``extra`` on top."""
    from tests.support.harness_home import Home

    path = os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), str(REPO)]))
    return {**Home(state, project, settings).env(), "PYTHONPATH": path, **extra}


def api_key(store_url: str, tenant: str) -> str:
    """A new API key of ``tenant`` in the key store at ``store_url`` (its secret)."""
    from dockyard.api.store import KeyStore

    store = KeyStore(store_url)
    try:
        return store.create(tenant).key
    finally:
        store.close()


@contextlib.contextmanager
def served(env: dict[str, str], store_url: str, log: Path, *args: str) -> Iterator[str]:
    """``dockyard serve`` on loopback (tests/support/server.py) with ``env`` and the key
    store at ``store_url``, its stderr in ``log``: yields its URL, stops it on the way
    out; SystemExit with its first line and log when it does not start."""
    from tests.support.server import NotListening, serve

    with contextlib.ExitStack() as stack:
        try:
            serving = stack.enter_context(serve(env, store_url, log, *args, show_log=False))
        except NotListening as exc:
            raise SystemExit(f"ERROR: {exc}") from None
        yield serving.url
