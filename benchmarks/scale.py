"""Scale on one host: 20, 50 and 100 environments through the components (harness).

Per size and run: the time from the stack's first network (the first thing created on the
engine) until the last ready marker (the markers' own timestamps, so polling adds
nothing; the time from starting the Pulumi program is recorded too), seconds per
environment, idle
memory per environment after they settle (cgroup usage minus inactive page cache, what
`docker stats` shows), and teardown (containers, networks, volumes, manifests — the
harness destroys as `pulumi destroy` does, in parallel where nothing depends on what
goes), after which nothing of the stack may be left: no container, network or volume
with its label, no manifest file.

Baselines in the same run, one after another as a script would do them:
- bare: N containers `docker run -d <image> sleep infinity`, removed with `docker rm -f`
  one by one (and, for comparison, all at once);
- bare+network: the same, but each container on a network of its own, created just
  before it (what an environment needs at least) — the engine's network creation is a
  large part of an environment's cost, and it grows with the number of networks.

Budgets (2 cores, image prebuilt): 100 environments ready in <= 60 s; <= 5 MB per idle
environment (median); seconds per environment flat from 20 to 100; teardown of 20
environments <= 2x the bare teardown. Sizes: DOCKYARD_BENCH_SIZES (default 20,50,100).
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from benchmarks.common import (
    RUNS,
    deployed,
    engine,
    parse_engine_time,
    summary,
    table,
    timed,
    verdict,
    write_result,
)

SIZES = tuple(int(s) for s in os.environ.get("DOCKYARD_BENCH_SIZES", "20,50,100").split(","))
BUDGET_READY_100_S = 60.0
BUDGET_IDLE_MB = 5.0
BUDGET_TEARDOWN_RATIO = 2.0
TEARDOWN_SIZE = 20
"""The size the teardown budget is for; bare containers are also removed all at once there."""
SETTLE_S = 5.0
LABEL = {"dockyard.bench": "scale"}


def _idle_mb(container: Any) -> float:
    # The engine answers with empty memory stats for a moment now and then (a busy
    # engine, a container it is still attaching to): ask again rather than fail the run.
    for _ in range(5):
        memory = container.stats(stream=False)["memory_stats"]
        if "usage" in memory:
            detail = memory.get("stats", {})
            cache = detail.get(
                "total_inactive_file", detail.get("inactive_file", detail.get("cache", 0))
            )
            return float(memory["usage"] - cache) / (1024 * 1024)
        time.sleep(1)
    raise SystemExit(f"ERROR: no memory figures from the engine for {container.name}")


def _ready_at(container: Any) -> float | None:
    """Epoch time of the container's ready marker, or None while it has none."""
    result = container.exec_run(["cat", "/tmp/ready"])
    return parse_engine_time(result.output.decode().strip()) if result.exit_code == 0 else None


def _leftovers(client: Any, target: Any) -> list[str]:
    found = list(target.leftovers())
    manifests = Path(target.cwd) / ".companion" / "cloud" / "environments"
    found += [f"manifest {p.name}" for p in manifests.glob("*.json")] if manifests.is_dir() else []
    return found


def _environments(client: Any, size: int, run: int) -> dict[str, float]:
    values = {
        "limits": {"cpus": 1, "memory": "512m"},
        "environments": [
            {"sessionId": f"s{i:03d}", "backend": "claude" if i % 2 else "codex", "ports": [3000]}
            for i in range(size)
        ],
    }
    began = time.time()
    with deployed(client, f"benchscale{size}r{run}", values) as target:
        containers = [target.container(s) for s in target.manifests]
        # From the stack's first network, the first thing `pulumi up` creates on the
        # engine: what came before is the Python program starting and finding the image
        # (built once, or again if images/core changed meanwhile), not the environments.
        start = min(
            parse_engine_time(n.attrs["Created"])
            for n in client.networks.list(filters={"label": f"dockyard.stack={target.stack}"})
        )
        ready: dict[str, float] = {}
        with ThreadPoolExecutor(8) as pool:
            while len(ready) < size:
                if time.time() - began > 300:
                    raise SystemExit(
                        f"ERROR: {size - len(ready)} environments not ready after 300 s"
                    )
                pending = [c for c in containers if c.id not in ready]
                for container, at in zip(pending, pool.map(_ready_at, pending), strict=True):
                    if at is not None:
                        ready[container.id] = at
                if len(ready) < size:
                    time.sleep(0.5)
            all_ready = max(ready.values()) - start
            ports = {
                m["hostPort"]
                for manifest in target.manifests.values()
                for m in manifest["container"]["portMappings"]
            }
            assert len(ports) == size, "host ports collided"
            time.sleep(SETTLE_S)
            idle = list(pool.map(_idle_mb, containers))
        teardown = timed(target.destroy)
        left = _leftovers(client, target)
        if left:
            raise SystemExit(f"ERROR: teardown of {size} environments left {left}")
    return {
        "ready_s": all_ready,
        "s_per_env": all_ready / size,
        "up_to_ready_s": max(ready.values()) - began,
        "idle_mb_median": statistics.median(idle),
        "idle_mb_max": max(idle),
        "teardown_s": teardown,
    }


def _bare(client: Any, image: str, size: int, networks: bool) -> dict[str, float]:
    """``size`` bare containers started one after another (each on a network of its own,
    created just before it, when ``networks``), their idle memory, then removal one
    after another (containers, then networks)."""
    tag = f"benchbare{int(time.time() * 1000) % 10**8}"
    containers: list[Any] = []
    nets: list[Any] = []

    def start(i: int) -> None:
        network = None
        if networks:
            network = client.networks.create(f"{tag}-{i}", driver="bridge", labels=LABEL)
            nets.append(network)
        containers.append(
            client.containers.run(
                image,
                entrypoint=["sleep", "infinity"],
                detach=True,
                labels=LABEL,
                network=network.name if network else None,
            )
        )

    try:
        create = timed(lambda: [start(i) for i in range(size)])
        time.sleep(SETTLE_S)
        with ThreadPoolExecutor(8) as pool:
            idle = statistics.median(pool.map(_idle_mb, containers))
        teardown = timed(
            lambda: [c.remove(force=True) for c in containers] + [n.remove() for n in nets]
        )
        containers.clear()
        nets.clear()
        return {
            "ready_s": create,
            "s_per_env": create / size,
            "idle_mb_median": idle,
            "teardown_s": teardown,
        }
    finally:  # whatever is left, also when a signal stopped the run half-way
        _sweep(client)


def _sweep(client: Any) -> None:
    selector = {"label": "dockyard.bench=scale"}
    for container in client.containers.list(all=True, filters=selector):
        container.remove(force=True)
    for network in client.networks.list(filters=selector):
        network.remove()


def _bare_removed_at_once(client: Any, image: str, size: int) -> float:
    """Seconds to remove ``size`` bare containers 10 at a time (for comparison: what the
    engine does when removals do not wait for each other)."""
    containers = [
        client.containers.run(image, entrypoint=["sleep", "infinity"], detach=True, labels=LABEL)
        for _ in range(size)
    ]
    try:
        with ThreadPoolExecutor(10) as pool:
            return timed(lambda: list(pool.map(lambda c: c.remove(force=True), containers)))
    finally:
        _sweep(client)


def main() -> int:
    client = engine()
    from tests.support.images import build_image

    image = build_image(client, "dockyard-core")
    results: dict[str, Any] = {"sizes": {}}
    rows = []
    for size in SIZES:
        env_runs, bare_runs, net_runs, at_once = [], [], [], []
        for run in range(RUNS):  # interleaved, so a passing load moves all of them alike
            env_runs.append(_environments(client, size, run))
            bare_runs.append(_bare(client, image, size, networks=False))
            net_runs.append(_bare(client, image, size, networks=True))
            if size == TEARDOWN_SIZE:
                at_once.append(_bare_removed_at_once(client, image, size))
            print(
                f"  {size} run {run + 1}: ready {env_runs[-1]['ready_s']:.1f} s, teardown "
                f"{env_runs[-1]['teardown_s']:.1f} s; bare {bare_runs[-1]['ready_s']:.1f} s / "
                f"{bare_runs[-1]['teardown_s']:.1f} s; bare+net {net_runs[-1]['ready_s']:.1f} s",
                flush=True,
            )
        env = {key: summary([r[key] for r in env_runs]) for key in env_runs[0]}
        bare = {key: summary([r[key] for r in bare_runs]) for key in bare_runs[0]}
        if at_once:
            bare["teardown_parallel_s"] = summary(at_once)
        net = {key: summary([r[key] for r in net_runs]) for key in net_runs[0]}
        results["sizes"][size] = {"environments": env, "bare": bare, "bare_with_network": net}
        write_result("scale", results)  # what is done so far survives a later failure
        rows.append(
            [
                size,
                env["ready_s"]["median"],
                env["s_per_env"]["median"],
                bare["s_per_env"]["median"],
                net["s_per_env"]["median"],
                f"{env['ready_s']['median'] / net['ready_s']['median']:.2f}",
                env["idle_mb_median"]["median"],
                env["idle_mb_max"]["max"],
                bare["idle_mb_median"]["median"],
                env["teardown_s"]["median"],
                bare["teardown_s"]["median"],
                f"{env['teardown_s']['median'] / bare['teardown_s']['median']:.2f}",
                bare["teardown_parallel_s"]["median"] if at_once else "",
                net["teardown_s"]["median"],
            ]
        )
    print(f"Scale on one host (median of {RUNS} runs per size; seconds, MB)")
    print(
        table(
            [
                "envs",
                "ready s",
                "s/env",
                "bare s/env",
                "bare+net s/env",
                "x bare+net",
                "idle MB",
                "max MB",
                "bare MB",
                "teardown s",
                "bare td s",
                "x bare td",
                "bare td ∥ s",
                "bare+net td s",
            ],
            rows,
        )
    )
    sizes = results["sizes"]
    if 100 in sizes:
        ready = sizes[100]["environments"]["ready_s"]["median"]
        print(
            f"100 environments ready in {ready:.1f} s — "
            f"{verdict(ready, BUDGET_READY_100_S)} the {BUDGET_READY_100_S:.0f} s budget"
        )
    for size, figures in sizes.items():
        env = figures["environments"]
        ratio = env["teardown_s"]["median"] / figures["bare"]["teardown_s"]["median"]
        teardown = f"teardown {ratio:.2f}x bare"
        if size == TEARDOWN_SIZE:
            teardown += f" — {verdict(ratio, BUDGET_TEARDOWN_RATIO)} the {BUDGET_TEARDOWN_RATIO:.0f}x budget"
        print(
            f"{size}: {env['s_per_env']['median']:.3f} s/env; idle "
            f"{env['idle_mb_median']['median']:.1f} MB per environment — "
            f"{verdict(env['idle_mb_median']['median'], BUDGET_IDLE_MB)} the "
            f"{BUDGET_IDLE_MB:.0f} MB budget; {teardown}; nothing left behind"
        )
    if len(sizes) > 1:
        small, large = min(sizes), max(sizes)
        growth = (
            sizes[large]["environments"]["s_per_env"]["median"]
            / sizes[small]["environments"]["s_per_env"]["median"]
        )
        bare_growth = (
            sizes[large]["bare_with_network"]["s_per_env"]["median"]
            / sizes[small]["bare_with_network"]["s_per_env"]["median"]
        )
        print(
            f"s/env at {large} / at {small}: {growth:.2f} "
            f"(bare containers with a network each: {bare_growth:.2f})"
        )
    results["budgets"] = {
        "ready_100_s": BUDGET_READY_100_S,
        "idle_mb": BUDGET_IDLE_MB,
        "teardown_ratio": BUDGET_TEARDOWN_RATIO,
    }
    print(f"written {write_result('scale', results)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
