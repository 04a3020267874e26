"""Pause/resume and fork of a session (issue 29), against baselines in the same run.

Through the product's path: :class:`dockyard.sessions.Sessions` with the harness driver
realising sessions on this engine (the Pulumi CLI cannot run here; docs/sessions.md).

Timed, interleaved with their baselines:

- ``resume()`` of a paused session (registry, plan, label check, unpause, audit line)
  against the engine's own ``unpause`` of a container (the floor), and ``pause()``;
- ``fork()`` of a session whose workspace holds 100 MB and 1 GB of random data, from the
  call to the fork's manifest and to its ready marker, against a cold ``create()`` of a
  new session (ready marker too) and a bare ``docker run --rm <image> true``.

Targets (issue 29): resume p50 <= 50 ms; fork ready <= 1 s, the same for 100 MB and 1 GB
(that needs copy-on-write volumes; this host's ext4 has no reflink, so a fork copies the
allocated blocks: docs/instant-sessions.md).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import Any

from benchmarks.common import (
    RUNS,
    engine,
    session_home,
    stat_row,
    summary,
    table,
    timed,
    verdict,
    wait_ready,
    write_result,
)

RESUME_BUDGET_S = 0.05
FORK_BUDGET_S = 1.0
FORK_RUNS = int(os.environ.get("DOCKYARD_BENCH_FORK_RUNS", "3"))
SIZES_MB = (100, 1024)


def main() -> int:
    from dockyard.sessions import Sessions
    from dockyard.sessions.settings import paths
    from tests.harness.sessions import HarnessDriver
    from tests.support.harness_home import clear_tenant
    from tests.support.images import build_image

    client = engine()
    image = build_image(client, "dockyard-core")
    tenant = f"binst{int(time.time()) % 100000}"
    with session_home("dockyard-bench-instant-", image) as (_base, state, project, settings):
        where = paths({"DOCKYARD_STATE_DIR": str(state), "DOCKYARD_CONFIG": str(settings)})
        sessions = Sessions(where, HarnessDriver(where))

        def request(session: str) -> dict[str, Any]:
            return {"sessionId": session, "cwd": str(project), "tenant": tenant}

        def container_of(manifest: Any) -> Any:
            return client.containers.get(manifest["container"]["id"])

        results: dict[str, list[float]] = {}

        def sample(key: str, fn: Callable[[], Any]) -> None:
            results.setdefault(key, []).append(timed(fn))

        try:
            parents = {}
            for size in SIZES_MB:
                parent = container_of(sessions.create(request(f"p{size}")))
                wait_ready(parent)
                done = parent.exec_run(
                    ["bash", "-c", f"head -c {size}M /dev/urandom > /workspace/blob"]
                )
                assert done.exit_code == 0, done.output
                parents[size] = parent
            floor = client.containers.run(
                image, entrypoint=["sleep", "600"], detach=True, labels={"dockyard.stack": tenant}
            )
            client.containers.run(image, entrypoint=["true"], remove=True)  # warm-up
            for _ in range(RUNS * 2):
                floor.pause()
                sample("engine unpause", floor.unpause)
                sample("pause()", lambda: sessions.pause("p100", tenant))
                sample("resume()", lambda: sessions.resume("p100", tenant))
            floor.remove(force=True)
            for run in range(FORK_RUNS):
                sample(
                    "bare docker run --rm true",
                    lambda: client.containers.run(image, entrypoint=["true"], remove=True),
                )

                def cold(run: int = run) -> None:
                    wait_ready(container_of(sessions.create(request(f"c{run}"))))

                sample("cold create, ready", cold)
                sessions.destroy(f"c{run}", tenant)
                for size in SIZES_MB:
                    name = f"f{size}-{run}"
                    started = time.perf_counter()
                    forked = container_of(sessions.fork(f"p{size}", name, tenant))
                    results.setdefault(f"fork {size} MB, manifest", []).append(
                        time.perf_counter() - started
                    )
                    wait_ready(forked)
                    results.setdefault(f"fork {size} MB, ready", []).append(
                        time.perf_counter() - started
                    )
                    sessions.destroy(name, tenant)
                    sessions.remove_snapshot(name, tenant)
        finally:
            clear_tenant(client, sessions, tenant, snapshots=True)

    unpause = summary(results["engine unpause"])["median"]
    bare = summary(results["bare docker run --rm true"])["median"]
    cold_ready = summary(results["cold create, ready"])["median"]
    print(
        table(
            ["figure (s)", "median", "min", "max", "x baseline"],
            [
                stat_row("engine unpause (floor)", results["engine unpause"]),
                stat_row("resume()", results["resume()"], unpause),
                stat_row("pause()", results["pause()"], unpause),
                stat_row("bare docker run --rm true", results["bare docker run --rm true"]),
                stat_row("cold create, ready", results["cold create, ready"], bare),
                *(
                    stat_row(f"fork {size} MB, {what}", results[f"fork {size} MB, {what}"], base)
                    for size in SIZES_MB
                    for what, base in (("manifest", cold_ready), ("ready", cold_ready))
                ),
            ],
        )
    )
    print("fork ratios are against a cold create to ready in the same run")
    resume = summary(results["resume()"])["median"]
    forks = {size: summary(results[f"fork {size} MB, ready"])["median"] for size in SIZES_MB}
    print(f"budget: resume median <= {RESUME_BUDGET_S} s: {verdict(resume, RESUME_BUDGET_S)}")
    for size, median in forks.items():
        print(
            f"budget: fork {size} MB ready <= {FORK_BUDGET_S} s: {verdict(median, FORK_BUDGET_S)}"
        )
    print(f"fork 1 GB / fork 100 MB (ready): {forks[1024] / forks[100]:.2f}x")
    write_result(
        "instant",
        {
            "samples": results,
            "summary": {k: summary(v) for k, v in results.items()},
            "resume_x_engine_unpause": resume / unpause,
            "fork_ready_x_cold_create": {str(s): m / cold_ready for s, m in forks.items()},
            "fork_1g_x_fork_100m": forks[1024] / forks[100],
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
