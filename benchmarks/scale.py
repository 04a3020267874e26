"""Scale on one host: 20 environments, then 50, through the components (harness).

Per size: time to create all (the Pulumi program registers them concurrently, the
harness creates each on the engine as Pulumi's engine would), until every ready marker
exists; idle memory per environment after they settle (cgroup usage minus page cache,
i.e. what `docker stats` shows); teardown time. Baseline in the same run: the same
number of bare containers (`docker run -d <image> sleep infinity`) created and removed
one after another.

Budgets (2 cores, image prebuilt): 20 environments ready in <= 15 s; <= 20 MB per idle
environment.
"""

from __future__ import annotations

import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from benchmarks.common import RUNS, deployed, engine, summary, table, timed, verdict, write_result
from tests.support.engine import is_ready

SIZES = (20, 50)
BUDGET_CREATE_20_S = 15.0
BUDGET_IDLE_MB = 20.0
SETTLE_S = 5.0
LABEL = {"dockyard.bench": "scale"}


def _idle_mb(container: Any) -> float:
    stats = container.stats(stream=False)
    memory = stats["memory_stats"]
    detail = memory.get("stats", {})
    cache = detail.get("total_inactive_file", detail.get("inactive_file", detail.get("cache", 0)))
    return (memory["usage"] - cache) / (1024 * 1024)


def _environments(client: Any, size: int, run: int) -> dict[str, float]:
    values = {
        "limits": {"cpus": 1, "memory": "512m"},
        "environments": [
            {"sessionId": f"s{i:02d}", "backend": "claude" if i % 2 else "codex", "ports": [3000]}
            for i in range(size)
        ],
    }
    start = time.perf_counter()
    with deployed(client, f"benchscale{size}r{run}", values) as target:
        containers = [target.container(s) for s in target.manifests]
        pending = list(containers)
        while pending:
            pending = [c for c in pending if not is_ready(c)]
            if time.perf_counter() - start > 300:
                raise SystemExit(f"ERROR: {len(pending)} environments not ready after 300 s")
        created = time.perf_counter() - start
        ports = {
            m["hostPort"]
            for manifest in target.manifests.values()
            for m in manifest["container"]["portMappings"]
        }
        assert len(ports) == size, "host ports collided"
        time.sleep(SETTLE_S)
        with ThreadPoolExecutor(8) as pool:
            idle = list(pool.map(_idle_mb, containers))
        teardown = timed(target.destroy)
    return {
        "create_s": created,
        "idle_mb_median": statistics.median(idle),
        "idle_mb_max": max(idle),
        "teardown_s": teardown,
    }


def _bare(client: Any, image: str, size: int) -> dict[str, float]:
    containers: list[Any] = []
    try:
        create = timed(
            lambda: containers.extend(
                client.containers.run(
                    image, entrypoint=["sleep", "infinity"], detach=True, labels=LABEL
                )
                for _ in range(size)
            )
        )
        time.sleep(SETTLE_S)
        idle = [_idle_mb(c) for c in containers]
        teardown = timed(lambda: [c.remove(force=True) for c in containers])
        containers.clear()
        return {
            "create_s": create,
            "idle_mb_median": statistics.median(idle),
            "teardown_s": teardown,
        }
    finally:
        for c in containers:
            c.remove(force=True)


def main() -> int:
    client = engine()
    from tests.support.images import build_image

    image = build_image(client, "dockyard-core")
    results: dict[str, Any] = {"sizes": {}}
    rows = []
    runs = RUNS
    for size in SIZES:
        env_runs = [_environments(client, size, run) for run in range(runs)]
        bare_runs = [_bare(client, image, size) for _ in range(runs)]
        figures = {
            key: summary([r[key] for r in env_runs])
            for key in ("create_s", "idle_mb_median", "idle_mb_max", "teardown_s")
        }
        bare = {key: summary([r[key] for r in bare_runs]) for key in bare_runs[0]}
        results["sizes"][size] = {"environments": figures, "bare": bare}
        rows.append(
            [
                size,
                figures["create_s"]["median"],
                bare["create_s"]["median"],
                f"{figures['create_s']['median'] / bare['create_s']['median']:.2f}",
                figures["idle_mb_median"]["median"],
                figures["idle_mb_max"]["max"],
                bare["idle_mb_median"]["median"],
                figures["teardown_s"]["median"],
                bare["teardown_s"]["median"],
            ]
        )
    print(f"Scale on one host (median of {runs} runs per size; MB = RSS of an idle environment)")
    print(
        table(
            [
                "envs",
                "create s",
                "bare s",
                "x bare",
                "idle MB",
                "max MB",
                "bare MB",
                "teardown s",
                "bare td s",
            ],
            rows,
        )
    )
    twenty = results["sizes"][20]["environments"]
    print(
        f"20 environments ready in {twenty['create_s']['median']:.1f} s — "
        f"{verdict(twenty['create_s']['median'], BUDGET_CREATE_20_S)} the {BUDGET_CREATE_20_S:.0f} s budget; "
        f"idle {twenty['idle_mb_median']['median']:.1f} MB per environment — "
        f"{verdict(twenty['idle_mb_median']['median'], BUDGET_IDLE_MB)} the {BUDGET_IDLE_MB:.0f} MB budget"
    )
    results["budgets"] = {"create_20_s": BUDGET_CREATE_20_S, "idle_mb": BUDGET_IDLE_MB}
    print(f"written {write_result('scale', results)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
