"""The core image: size, cold build, and rebuild after bumping one agent CLI.

- size: the default build (both CLIs) as the engine reports it, and per layer (base,
  OS packages, npm, each CLI); budget <= 900 MB.
- cold build: `images/core` without any cache (base image present, nothing pulled).
- rebuild: with a warm cache, only CODEX_VERSION changed — each run bumps to a version
  not built before, so its layers really rebuild; budget <= 60 s and only the Codex
  stage and the final layers after its COPY rebuilt (counted from the build log).
Ratio reported: rebuild / cold build, both from this run.

Language runtime variants (images/python, images/node, images/go), each built FROM the
core image above: size (and what it adds to core), and rebuild after bumping its own
toolchain (UV_VERSION, BUN_VERSION, GO_VERSION) to a version not built before, with the
steps run and taken from the cache — only the toolchain's layers should run.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from benchmarks.common import RUNS, engine, stat_row, summary, table, verdict, write_result

BUDGET_SIZE_MB = 900.0
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


# Per variant: the version pinned in images/versions.env to bump, and released versions
# to bump it to, none of them the pinned one.
VARIANT_BUMPS = {
    "python": ("UV_VERSION", ("0.13.8", "0.13.7", "0.13.6", "0.13.5", "0.13.4", "0.13.3")),
    "node": ("BUN_VERSION", ("1.4.3", "1.4.5", "1.4.2", "1.4.1", "1.4.0", "1.3.0")),
    "go": ("GO_VERSION", ("1.27.2", "1.27.1", "1.27.0", "1.26.6", "1.26.5", "1.26.4")),
}


def _build_variant(
    client: Any, variant: str, tag: str, args: dict[str, str]
) -> tuple[float, int, int]:
    """Seconds, steps run, steps taken from the cache, for images/<variant>."""
    from tests.support.images import REPO

    start = time.perf_counter()
    run = cached = 0
    for chunk in client.api.build(
        path=str(REPO / "images" / variant),
        tag=tag,
        buildargs=args,
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


def variants(client: Any, core: str) -> dict[str, Any]:
    """Size and toolchain-bump rebuild time of each variant built on ``core``."""
    from dockyard.image import LAYERED_VARIANTS, pinned_versions
    from tests.support.images import REPO, build_image

    core_mb = client.images.get(core).attrs["Size"] / 1e6
    figures: dict[str, Any] = {}
    try:
        for variant in LAYERED_VARIANTS:
            default = build_image(
                client,
                f"dockyard-{variant}",
                {"BASE_IMAGE": core},
                context=REPO / "images" / variant,
            )
            size_mb = client.images.get(default).attrs["Size"] / 1e6
            arg, versions = VARIANT_BUMPS[variant]
            bumps = [v for v in versions if v != pinned_versions()[arg]][:RUNS]
            rebuild, steps = [], []
            for version in bumps:
                seconds, ran, cached = _build_variant(
                    client,
                    variant,
                    f"dockyard-bench:{variant}-{version}",
                    {"BASE_IMAGE": core, arg: version},
                )
                rebuild.append(seconds)
                steps.append((ran, cached))
            figures[variant] = {
                "size_mb": size_mb,
                "adds_to_core_mb": size_mb - core_mb,
                "bumped": arg,
                "rebuild_s": summary(rebuild),
                "rebuild_steps_run_cached": steps,
            }
    finally:
        for image in client.images.list(filters={"label": "dockyard.bench=image"}):
            for tag in image.tags:
                client.images.remove(tag, force=True)
    print(f"Variants on {core} ({core_mb:.0f} MB); rebuild seconds, median/min/max of {RUNS}")
    print(
        table(
            ["variant", "size MB", "adds MB", "bumped", "rebuild median", "min", "max"],
            [
                [
                    name,
                    f["size_mb"],
                    f["adds_to_core_mb"],
                    f["bumped"],
                    f["rebuild_s"]["median"],
                    f["rebuild_s"]["min"],
                    f["rebuild_s"]["max"],
                ]
                for name, f in figures.items()
            ],
        )
    )
    for name, f in figures.items():
        print(f"{name}: steps run/cached per rebuild: {f['rebuild_steps_run_cached']}")
    return figures


def _layers(client: Any, ref: str) -> list[tuple[float, str]]:
    """(MB, build step) of every layer of at least 1 MB, oldest first."""
    layers = []
    for entry in reversed(client.api.history(ref)):
        if entry["Size"] >= 1e6:
            step = " ".join(entry["CreatedBy"].split())
            step = step.removeprefix("/bin/bash -o pipefail -c ").removeprefix("#(nop) ")
            layers.append((entry["Size"] / 1e6, step[:80] or "(base image)"))
    return layers


def main() -> int:
    client = engine()
    from tests.support.images import build_image

    default = build_image(client, "dockyard-core")
    size_mb = client.images.get(default).attrs["Size"] / 1e6
    layers = _layers(client, default)
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
    print(table(["layer MB", "step"], [[mb, step] for mb, step in layers]))
    print(
        f"size {size_mb:.0f} MB — {verdict(size_mb, BUDGET_SIZE_MB)} the {BUDGET_SIZE_MB:.0f} MB budget"
    )
    print(
        f"rebuild {summary(rebuild)['median']:.1f} s ({ratio:.2f}x cold) — "
        f"{verdict(summary(rebuild)['median'], BUDGET_REBUILD_S)} the {BUDGET_REBUILD_S:.0f} s budget; "
        f"steps run/cached per rebuild: {steps}"
    )
    variant_figures = variants(client, default)
    path = write_result(
        "image",
        {
            "variants": variant_figures,
            "size_mb": size_mb,
            "layers_mb": [{"mb": mb, "step": step} for mb, step in layers],
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
