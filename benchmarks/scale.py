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

Runtimes: DOCKYARD_BENCH_RUNTIMES (default ``runc``; e.g. ``runc,runsc``). gVisor
(``runsc``, docs/isolation.md) runs only at the sizes of DOCKYARD_BENCH_RUNSC_SIZES
(default 20: each sandbox is a few host processes of its own, and 100 of them on 2 cores
measure the ptrace platform more than dockyard); there its bare baselines run on runsc
too, the environments get it through the stack's profile, and the same size's runc
figures come from the same run. The budgets are issue 19's, set for runc.
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
    on_runtime,
    parse_engine_time,
    parse_sizes,
    ratio,
    runtimes,
    summary,
    table,
    timed,
    verdict,
    write_result,
)

DEFAULT_RUNTIMES = ("runc",)
BUDGET_READY_100_S = 60.0
BUDGET_IDLE_MB = 5.0
BUDGET_TEARDOWN_RATIO = 2.0
TEARDOWN_SIZE = 20
"""The size the teardown budget is for; bare containers are also removed all at once there."""
SETTLE_S = 5.0
WAIT_S = 900.0
"""Give up on a run after this long: far past any budget, but a shared machine's load
peaks (other test suites) have held 20 environments past 300 s."""
LABEL = {"dockyard.bench": "scale"}


def sizes_of(runtime: str) -> tuple[int, ...]:
    """The environment counts measured on ``runtime`` (module docstring); ValueError
    names the variable, its value and what is allowed."""
    if runtime == "runsc":
        return parse_sizes(
            "DOCKYARD_BENCH_RUNSC_SIZES", os.environ.get("DOCKYARD_BENCH_RUNSC_SIZES"), (20,)
        )
    return parse_sizes(
        "DOCKYARD_BENCH_SIZES", os.environ.get("DOCKYARD_BENCH_SIZES"), (20, 50, 100)
    )


def idle_mb(memory_stats: dict[str, Any]) -> float | None:
    """MB in use without inactive page cache (what `docker stats` shows; cgroup v1 or v2
    field names), or None when the engine gave no figures."""
    if "usage" not in memory_stats:
        return None
    detail = memory_stats.get("stats", {})
    cache = detail.get("total_inactive_file", detail.get("inactive_file", detail.get("cache", 0)))
    return float(memory_stats["usage"] - cache) / (1024 * 1024)


def container_idle_mb(container: Any) -> float:
    # The engine answers with empty memory stats for a moment now and then (a busy
    # engine, a container it is still attaching to): ask again rather than fail the run.
    for _ in range(5):
        mb = idle_mb(container.stats(stream=False)["memory_stats"])
        if mb is not None:
            return mb
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


def _environments(client: Any, runtime: str, size: int, run: int) -> dict[str, float]:
    values = {
        "limits": {"cpus": 1, "memory": "512m"},
        "environments": [
            {"sessionId": f"s{i:03d}", "backend": "claude" if i % 2 else "codex", "ports": [3000]}
            for i in range(size)
        ],
    }
    began = time.time()
    with deployed(
        client, f"benchscale{runtime[-2:]}{size}r{run}", on_runtime(values, runtime)
    ) as target:
        containers = [target.container(s) for s in target.manifests]
        wrong = [c.name for c in containers if c.attrs["HostConfig"].get("Runtime") != runtime]
        if wrong:  # the figures would be another runtime's
            raise SystemExit(f"ERROR: {wrong} do not run on {runtime}")
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
                if time.time() - began > WAIT_S:
                    raise SystemExit(
                        f"ERROR: {size - len(ready)} environments not ready after {WAIT_S:.0f} s"
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
            idle = list(pool.map(container_idle_mb, containers))
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


def _bare(client: Any, image: str, runtime: str, size: int, networks: bool) -> dict[str, float]:
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
                runtime=runtime,
            )
        )

    try:
        create = timed(lambda: [start(i) for i in range(size)])
        time.sleep(SETTLE_S)
        with ThreadPoolExecutor(8) as pool:
            idle = statistics.median(pool.map(container_idle_mb, containers))
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


def _bare_removed_at_once(client: Any, image: str, runtime: str, size: int) -> float:
    """Seconds to remove ``size`` bare containers 10 at a time (for comparison: what the
    engine does when removals do not wait for each other)."""
    containers = [
        client.containers.run(
            image, entrypoint=["sleep", "infinity"], detach=True, labels=LABEL, runtime=runtime
        )
        for _ in range(size)
    ]
    try:
        with ThreadPoolExecutor(10) as pool:
            return timed(lambda: list(pool.map(lambda c: c.remove(force=True), containers)))
    finally:
        _sweep(client)


def _row(runtime: str, size: int, figures: dict[str, Any]) -> list[Any]:
    env, bare, net = figures["environments"], figures["bare"], figures["bare_with_network"]
    return [
        runtime,
        size,
        env["ready_s"]["median"],
        env["s_per_env"]["median"],
        bare["s_per_env"]["median"],
        net["s_per_env"]["median"],
        f"{ratio(env['ready_s']['median'], net['ready_s']['median']):.2f}",
        env["idle_mb_median"]["median"],
        env["idle_mb_max"]["max"],
        bare["idle_mb_median"]["median"],
        env["teardown_s"]["median"],
        bare["teardown_s"]["median"],
        f"{ratio(env['teardown_s']['median'], bare['teardown_s']['median']):.2f}",
        bare["teardown_parallel_s"]["median"] if "teardown_parallel_s" in bare else "",
        net["teardown_s"]["median"],
    ]


HEADERS = [
    "runtime",
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
]


def _measure(client: Any, image: str, runtime: str, size: int, run: int) -> dict[str, Any]:
    measured = {
        "environments": _environments(client, runtime, size, run),
        "bare": _bare(client, image, runtime, size, networks=False),
        "bare_with_network": _bare(client, image, runtime, size, networks=True),
    }
    if size == TEARDOWN_SIZE:
        measured["at_once"] = _bare_removed_at_once(client, image, runtime, size)
    env, bare, net = measured["environments"], measured["bare"], measured["bare_with_network"]
    print(
        f"  {runtime} {size} run {run + 1}: ready {env['ready_s']:.1f} s, teardown "
        f"{env['teardown_s']:.1f} s; bare {bare['ready_s']:.1f} s / {bare['teardown_s']:.1f} s; "
        f"bare+net {net['ready_s']:.1f} s",
        flush=True,
    )
    return measured


def _summaries(measured: list[dict[str, Any]]) -> dict[str, Any]:
    figures = {
        kind: {key: summary([m[kind][key] for m in measured]) for key in measured[0][kind]}
        for kind in ("environments", "bare", "bare_with_network")
    }
    if "at_once" in measured[0]:
        figures["bare"]["teardown_parallel_s"] = summary([m["at_once"] for m in measured])
    return figures


def main() -> int:
    client = engine()
    chosen = runtimes(client, DEFAULT_RUNTIMES)
    try:
        plan = {runtime: sizes_of(runtime) for runtime in chosen}
    except ValueError as exc:
        raise SystemExit(f"ERROR: {exc}") from None
    from tests.support.images import build_image

    image = build_image(client, "dockyard-core")
    results: dict[str, Any] = {
        "budgets": {
            "ready_100_s": BUDGET_READY_100_S,
            "idle_mb": BUDGET_IDLE_MB,
            "teardown_ratio": BUDGET_TEARDOWN_RATIO,
        },
        "runtimes": {runtime: {"sizes": {}} for runtime in chosen},
    }
    rows = []
    for size in sorted({size for sizes in plan.values() for size in sizes}):
        here = [runtime for runtime in chosen if size in plan[runtime]]
        measured: dict[str, list[dict[str, Any]]] = {runtime: [] for runtime in here}
        for run in range(RUNS):  # interleaved, so a passing load moves all of them alike
            for runtime in here:
                measured[runtime].append(_measure(client, image, runtime, size, run))
        for runtime in here:
            figures = _summaries(measured[runtime])
            results["runtimes"][runtime]["sizes"][size] = figures
            rows.append(_row(runtime, size, figures))
        write_result("scale", results)  # what is done so far survives a later failure
    print(f"Scale on one host (median of {RUNS} runs per size; seconds, MB)")
    print(table(HEADERS, rows))
    for runtime in chosen:
        sizes = results["runtimes"][runtime]["sizes"]
        if 100 in sizes:
            ready = sizes[100]["environments"]["ready_s"]["median"]
            print(
                f"{runtime}: 100 environments ready in {ready:.1f} s — "
                f"{verdict(ready, BUDGET_READY_100_S)} the {BUDGET_READY_100_S:.0f} s budget"
            )
        for size, figures in sizes.items():
            env = figures["environments"]
            times = ratio(env["teardown_s"]["median"], figures["bare"]["teardown_s"]["median"])
            teardown = f"teardown {times:.2f}x bare"
            if size == TEARDOWN_SIZE:
                teardown += (
                    f" — {verdict(times, BUDGET_TEARDOWN_RATIO)} the "
                    f"{BUDGET_TEARDOWN_RATIO:.0f}x budget"
                )
            print(
                f"{runtime} {size}: {env['s_per_env']['median']:.3f} s/env; idle "
                f"{env['idle_mb_median']['median']:.1f} MB per environment — "
                f"{verdict(env['idle_mb_median']['median'], BUDGET_IDLE_MB)} the "
                f"{BUDGET_IDLE_MB:.0f} MB budget; {teardown}; nothing left behind"
            )
        if len(sizes) > 1:
            small, large = min(sizes), max(sizes)
            growth = ratio(
                sizes[large]["environments"]["s_per_env"]["median"],
                sizes[small]["environments"]["s_per_env"]["median"],
            )
            bare_growth = ratio(
                sizes[large]["bare_with_network"]["s_per_env"]["median"],
                sizes[small]["bare_with_network"]["s_per_env"]["median"],
            )
            print(
                f"{runtime}: s/env at {large} / at {small}: {growth:.2f} "
                f"(bare containers with a network each: {bare_growth:.2f})"
            )
    if "runc" in chosen and "runsc" in chosen:
        for size, figures in results["runtimes"]["runsc"]["sizes"].items():
            runc = results["runtimes"]["runc"]["sizes"].get(size)
            if runc:
                env = ratio(
                    figures["environments"]["ready_s"]["median"],
                    runc["environments"]["ready_s"]["median"],
                )
                bare = ratio(
                    figures["bare"]["ready_s"]["median"], runc["bare"]["ready_s"]["median"]
                )
                print(
                    f"runsc / runc at {size}: environments ready {env:.2f}x, "
                    f"bare containers {bare:.2f}x (same run)"
                )
    print(f"written {write_result('scale', results)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
