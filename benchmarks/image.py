"""The core image: size, cold build, and rebuild after bumping one agent CLI.

- size: the default build (both CLIs) as the engine reports it; budget <= 1.0 GB.
- cold build: `images/core` without any cache (base image present, nothing pulled).
- rebuild: with a warm cache, only CODEX_VERSION changed — each run bumps to a version
  not built before, so its layers really rebuild; budget <= 60 s and only the Codex
  stage and the final layers after its COPY rebuilt (counted from the build log).
Ratio reported: rebuild / cold build, both from this run.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from benchmarks.common import RUNS, engine, stat_row, summary, table, verdict, write_result

BUDGET_SIZE_MB = 1000.0
BUDGET_REBUILD_S = 60.0
# Released Codex versions to bump to, newest first, all older than the default.
BUMP_VERSIONS = ("0.166.0", "0.165.0", "0.164.0", "0.163.0", "0.162.1", "0.162.0")
LABEL = {"dockyard.bench": "image"}


def _build(client: Any, tag: str, args: dict[str, str], nocache: bool) -> tuple[float, int, int]:
    """Seconds, steps run, steps taken from the cache."""
    from tests.support.images import CORE_CONTEXT

    start = time.perf_counter()
    run = cached = 0
    for chunk in client.api.build(
        path=str(CORE_CONTEXT),
        tag=tag,
        buildargs=args,
        nocache=nocache,
        rm=True,
        forcerm=True,
        labels=LABEL,
        decode=True,
    ):
        line = chunk.get("stream", "")
        if "error" in chunk:
            raise SystemExit(f"ERROR: build of {tag} failed: {chunk['error']}")
        if line.startswith(" ---> Running in"):
            run += 1
        elif line.startswith(" ---> Using cache"):
            cached += 1
    return time.perf_counter() - start, run, cached


def main() -> int:
    client = engine()
    from tests.support.images import build_image

    default = build_image(client, "dockyard-core")
    size_mb = client.images.get(default).attrs["Size"] / 1e6
    cold = []
    for run in range(RUNS):
        seconds, _, _ = _build(client, f"dockyard-bench:cold{run}", {}, nocache=True)
        cold.append(seconds)
    rebuild, steps = [], []
    for version in BUMP_VERSIONS[:RUNS]:
        seconds, ran, cached = _build(
            client, f"dockyard-bench:codex-{version}", {"CODEX_VERSION": version}, nocache=False
        )
        rebuild.append(seconds)
        steps.append((ran, cached))
    for image in client.images.list(filters={"label": "dockyard.bench=image"}):
        for tag in image.tags:
            client.images.remove(tag, force=True)
    ratio = summary(rebuild)["median"] / summary(cold)["median"]
    print(f"Core image (seconds, median/min/max of {RUNS})")
    print(
        table(
            ["what", "median", "min", "max", "x cold"],
            [
                stat_row("cold build", cold, summary(cold)["median"]),
                stat_row("rebuild, CODEX_VERSION bumped", rebuild, summary(cold)["median"]),
            ],
        )
    )
    print(
        f"size {size_mb:.0f} MB — {verdict(size_mb, BUDGET_SIZE_MB)} the {BUDGET_SIZE_MB:.0f} MB budget"
    )
    print(
        f"rebuild {summary(rebuild)['median']:.1f} s ({ratio:.2f}x cold) — "
        f"{verdict(summary(rebuild)['median'], BUDGET_REBUILD_S)} the {BUDGET_REBUILD_S:.0f} s budget; "
        f"steps run/cached per rebuild: {steps}"
    )
    path = write_result(
        "image",
        {
            "size_mb": size_mb,
            "cold_build_s": summary(cold),
            "rebuild_codex_bump_s": summary(rebuild),
            "rebuild_vs_cold": ratio,
            "rebuild_steps_run_cached": steps,
            "budgets": {"size_mb": BUDGET_SIZE_MB, "rebuild_s": BUDGET_REBUILD_S},
        },
    )
    print(f"written {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
