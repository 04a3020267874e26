"""Environment ready time vs a bare `docker run` of the same image, per backend.

One environment is realised through the components (the integration harness: the real
program, each resource created on the engine with exactly its declared inputs: own
network, three volumes, a published port, limits, dropped capabilities, pids limit). For
it we read, without polling bias:
- ready: the timestamp the entrypoint writes into its ready marker (CLI checked, tmux
  session up) minus the container's `Created` time;
- healthy: the end of the first passing health probe minus `Created`. The engine here
  predates `start_interval` (API 1.44), so the benchmark stack probes every 1 s.
Baseline, same run: `docker run --rm <image> true` through the SDK (create, start, wait,
remove) — the cheapest thing a container can do.

Budget: ready <= 1.3x bare for both backends (seed target: < 5 s absolute).
"""

from __future__ import annotations

import sys
from typing import Any

from benchmarks.common import (
    RUNS,
    deployed,
    engine,
    parse_engine_time,
    stat_row,
    summary,
    table,
    timed,
    verdict,
    write_result,
)
from tests.support.engine import READY_MARKER, is_ready, wait_for

BUDGET_RATIO = 1.3
SEED_TARGET_S = 5.0
BACKENDS = ("claude", "codex")


def _one_environment(client: Any, backend: str, run: int) -> tuple[float, float]:
    values = {
        "healthcheck": {"interval": "1s", "startPeriod": "30s"},
        "environments": [{"sessionId": "bench", "backend": backend, "ports": [3000]}],
    }
    with deployed(client, f"bench{backend[:2]}{run}", values) as target:
        container = target.container("bench")
        wait_for(lambda: is_ready(container), 60, interval=0.05, what="the ready marker")
        marker = container.exec_run(["cat", READY_MARKER]).output.decode().strip()

        def healthy() -> bool:
            container.reload()
            return container.attrs["State"].get("Health", {}).get("Status") == "healthy"

        wait_for(healthy, 60, interval=0.05, what="healthy")
        created = parse_engine_time(container.attrs["Created"])
        passing = [e for e in container.attrs["State"]["Health"]["Log"] if e["ExitCode"] == 0]
        target.destroy()
    return parse_engine_time(marker) - created, parse_engine_time(passing[0]["End"]) - created


def main() -> int:
    client = engine()
    from tests.support.images import build_image

    image = build_image(client, "dockyard-core")
    client.containers.run(image, entrypoint=["true"], remove=True)  # warm the page cache

    bare = [
        timed(lambda: client.containers.run(image, entrypoint=["true"], remove=True))
        for _ in range(RUNS)
    ]
    results: dict[str, Any] = {"bare_docker_run_s": summary(bare), "backends": {}}
    rows = [stat_row("bare docker run --rm true", bare, summary(bare)["median"])]
    for backend in BACKENDS:
        ready, healthy = [], []
        for run in range(RUNS):
            r, h = _one_environment(client, backend, run)
            ready.append(r)
            healthy.append(h)
        ratio = summary(ready)["median"] / summary(bare)["median"]
        results["backends"][backend] = {
            "ready_s": summary(ready),
            "healthy_s": summary(healthy),
            "ready_vs_bare": ratio,
            "budget_ratio": BUDGET_RATIO,
            "meets_budget": ratio <= BUDGET_RATIO,
        }
        rows.append(stat_row(f"{backend}: create -> ready", ready, summary(bare)["median"]))
        rows.append(stat_row(f"{backend}: create -> healthy", healthy, summary(bare)["median"]))
    print(f"Environment ready time (seconds, median/min/max of {RUNS}; ratio vs bare median)")
    print(table(["what", "median", "min", "max", "x bare"], rows))
    for backend, figures in results["backends"].items():
        print(
            f"{backend}: ready {figures['ready_vs_bare']:.2f}x bare — "
            f"{verdict(figures['ready_vs_bare'], BUDGET_RATIO)} the {BUDGET_RATIO}x budget; "
            f"{figures['ready_s']['median']:.2f} s vs the {SEED_TARGET_S:.0f} s seed target"
        )
    print(f"written {write_result('env_ready', results)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
