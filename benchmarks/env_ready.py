"""Environment ready time vs a bare `docker run`, per backend, with where the time goes.

One environment is realised through the components (the integration harness: the real
program, each resource created on the engine with exactly its declared inputs: own
network, three volumes, a published port, limits, dropped capabilities, pids limit) with
the stack's default health check (60 s interval). For it we read, without polling bias:
- ready: the timestamp the entrypoint writes into its ready marker (CLI checked, tmux
  session up) minus the container's `Created` time;
- the steps: the engine's `StartedAt`, and the entrypoint's own timing line
  (`dockyard: timing start=<epoch> <step>=<ms since start> ...`);
- first health verdict: the time in the health state file (/tmp/health), which the
  entrypoint fills by running the health check once right after the marker, minus ready.
  The engine's own first probe comes one interval after start (API 1.41 has no
  start_interval); one extra environment per backend with a 2 s interval shows that.
Baseline: `docker run --rm <image> true` through the SDK (create, start, wait, remove),
the cheapest thing a container can do. Bare and environment runs are interleaved
(bare, claude, codex; bare, claude, codex; ...), after one warm-up round that is not
counted, so a load that comes and goes on a shared machine moves both alike.

Runtimes: DOCKYARD_BENCH_RUNTIMES (default ``runc,runsc``; a runtime the engine has not
registered is skipped with a note unless named there). Under each runtime the bare
baseline runs on it too (``docker run --runtime=runsc``) and the environments get it
through the stack's profile; the rounds go runtime by runtime inside each round, so runc
and runsc figures come from the same run, and runsc's are also shown against runc's.

Budgets: ready <= 1.15x bare (same runtime) for both backends; first verdict <= 2 s
after ready. Issue 19 set them for runc; under runsc they are reported the same way.
"""

from __future__ import annotations

import statistics
import sys
from typing import Any

from benchmarks.common import (
    RUNS,
    deployed,
    engine,
    on_runtime,
    parse_engine_time,
    ratio,
    runtimes,
    stat_row,
    summary,
    table,
    timed,
    verdict,
    write_result,
)
from tests.support.engine import READY_MARKER, wait_for

BUDGET_RATIO = 1.15
BUDGET_VERDICT_S = 2.0
BACKENDS = ("claude", "codex")
DEFAULT_RUNTIMES = ("runc", "runsc")
HEALTH_FILE = "/tmp/health"
STEPS = ("config", "secrets", "cli-started", "workspace", "tmux", "cli", "ready")
"""Entrypoint steps in the order they finish (images/core/entrypoint.sh, timing line)."""
PHASES = ("engine: create -> started", "engine: started -> entrypoint", *STEPS)


def _bare(client: Any, image: str, runtime: str) -> float:
    return timed(
        lambda: client.containers.run(image, entrypoint=["true"], remove=True, runtime=runtime)
    )


def _logs(container: Any) -> str:
    return str(container.logs().decode(errors="replace"))


def timing(logs: str) -> tuple[float, dict[str, float]]:
    """(entrypoint start epoch, step -> ms since start) from the entrypoint's timing line."""
    line = next(x for x in logs.splitlines() if x.startswith("dockyard: timing "))
    fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
    return float(fields.pop("start")), {step: float(fields[step]) for step in STEPS}


def phases(created: float, started: float, entry: float, steps: dict[str, float]) -> dict:
    """Seconds per phase, in order: the engine's (create -> started -> the entrypoint's
    first line), then each entrypoint step since the one before (``steps``: ms since the
    entrypoint started, as its timing line gives them)."""
    return {
        PHASES[0]: started - created,
        PHASES[1]: entry - started,
        **{
            step: (steps[step] - (steps[STEPS[i - 1]] if i else 0.0)) / 1000
            for i, step in enumerate(STEPS)
        },
    }


def _environment(
    client: Any, backend: str, runtime: str, run: str, values: dict[str, Any]
) -> dict[str, Any]:
    values = on_runtime(
        {**values, "environments": [{"sessionId": "bench", "backend": backend, "ports": [3000]}]},
        runtime,
    )
    with deployed(client, f"bench{runtime[-2:]}{backend[:2]}{run}", values) as target:
        container = target.container("bench")
        # The container's log says when it is ready: waiting on it runs nothing inside
        # the container, so the wait cannot slow the start it measures.
        wait_for(lambda: "dockyard: ready:" in _logs(container), 60, what="the ready log line")
        marker = container.exec_run(["cat", READY_MARKER]).output.decode().strip()
        wait_for(
            lambda: container.exec_run(["test", "-s", HEALTH_FILE]).exit_code == 0,
            30,
            what="the first health verdict",
        )
        health = container.exec_run(["cat", HEALTH_FILE]).output.decode().strip()
        container.reload()
        on = container.attrs["HostConfig"].get("Runtime")
        if on != runtime:  # the figure would be another runtime's
            raise SystemExit(f"ERROR: environment asked for runtime {runtime} runs on {on}")
        created = parse_engine_time(container.attrs["Created"])
        started = parse_engine_time(container.attrs["State"]["StartedAt"])
        entry, steps = timing(_logs(container))
        stamp, _, first_verdict = health.partition(" ")
        ready = parse_engine_time(marker) - created
        result: dict[str, Any] = {
            "ready": ready,
            "verdict_after_ready": parse_engine_time(stamp) - created - ready,
            "verdict": first_verdict,
            "phases": phases(created, started, entry, steps),
        }
        if "healthcheck" in values:  # the engine's own first probe, for the floor
            wait_for(
                lambda: container.reload() or container.attrs["State"]["Health"]["Log"],
                60,
                what="the engine's first probe",
            )
            first = container.attrs["State"]["Health"]["Log"][0]
            result["engine_probe_after_start"] = parse_engine_time(first["End"]) - started
            result["engine_probe_after_ready"] = parse_engine_time(first["End"]) - created - ready
        target.destroy()
    return result


def _figures(bare: list[float], runs: dict[str, list[dict[str, Any]]], floor: dict) -> dict:
    base = summary(bare)["median"]
    figures: dict[str, Any] = {"bare_docker_run_s": summary(bare), "backends": {}}
    for backend, samples in runs.items():
        ready = [s["ready"] for s in samples]
        times = ratio(summary(ready)["median"], base)
        figures["backends"][backend] = {
            "ready_s": summary(ready),
            "ready_vs_bare": times,
            "budget_ratio": BUDGET_RATIO,
            "meets_budget": times <= BUDGET_RATIO,
            "first_verdict_after_ready_s": summary([s["verdict_after_ready"] for s in samples]),
            "first_verdicts": [s["verdict"] for s in samples],
            "phases_s": {phase: summary([s["phases"][phase] for s in samples]) for phase in PHASES},
            "engine_first_probe_2s_interval": {
                "after_start_s": floor[backend]["engine_probe_after_start"],
                "after_ready_s": floor[backend]["engine_probe_after_ready"],
            },
        }
    return figures


def main() -> int:
    client = engine()
    chosen = runtimes(client, DEFAULT_RUNTIMES)
    from tests.support.images import build_image

    image = build_image(client, "dockyard-core")
    for runtime in chosen:  # warm-up round: page cache, image layers, CLI binaries
        _bare(client, image, runtime)
        for backend in BACKENDS:
            _environment(client, backend, runtime, "w", {})
    bare: dict[str, list[float]] = {runtime: [] for runtime in chosen}
    runs = {runtime: {backend: [] for backend in BACKENDS} for runtime in chosen}
    for run in range(RUNS):
        for runtime in chosen:
            bare[runtime].append(_bare(client, image, runtime))
            for backend in BACKENDS:
                runs[runtime][backend].append(_environment(client, backend, runtime, str(run), {}))
        print(f"  round {run + 1} of {RUNS} done", flush=True)
    floor = {
        runtime: {
            backend: _environment(
                client, backend, runtime, "f", {"healthcheck": {"interval": "2s"}}
            )
            for backend in BACKENDS
        }
        for runtime in chosen
    }
    results: dict[str, Any] = {
        "runtimes": {rt: _figures(bare[rt], runs[rt], floor[rt]) for rt in chosen},
        "budget_ratio": BUDGET_RATIO,
        "budget_first_verdict_s": BUDGET_VERDICT_S,
    }

    reference = chosen[0]
    rows = []
    for runtime in chosen:
        base = summary(bare[runtime])["median"]
        against = summary(bare[reference])["median"]
        rows.append(
            [
                *stat_row(f"{runtime}: bare docker run --rm true", bare[runtime], base),
                f"{ratio(base, against):.2f}",
            ]
        )
        for backend, samples in runs[runtime].items():
            ready = [s["ready"] for s in samples]
            against = summary([s["ready"] for s in runs[reference][backend]])["median"]
            rows.append(
                [
                    *stat_row(f"{runtime}: {backend} create -> ready", ready, base),
                    f"{ratio(summary(ready)['median'], against):.2f}",
                ]
            )
            after = [s["verdict_after_ready"] for s in samples]
            rows.append([*stat_row(f"{runtime}: {backend} ready -> first verdict", after), ""])
    print(
        f"Environment ready time (seconds, median/min/max of {RUNS}; ratio of medians vs "
        f"bare on the same runtime, and vs the same thing on {reference})"
    )
    print(table(["what", "median", "min", "max", "x bare", f"x {reference}"], rows))
    columns = [(rt, b) for rt in chosen for b in BACKENDS]
    print("\nWhere the time goes (median ms per step; steps of the entrypoint in order)")
    print(
        table(
            ["step", *(f"{rt} {b}" for rt, b in columns)],
            [
                [
                    phase,
                    *(
                        f"{statistics.median(s['phases'][phase] for s in runs[rt][b]) * 1000:.1f}"
                        for rt, b in columns
                    ),
                ]
                for phase in PHASES
            ],
        )
    )
    for runtime, figures in results["runtimes"].items():
        for backend, f in figures["backends"].items():
            probe = f["engine_first_probe_2s_interval"]
            print(
                f"{runtime} {backend}: ready {f['ready_vs_bare']:.2f}x bare — "
                f"{verdict(f['ready_vs_bare'], BUDGET_RATIO)} the {BUDGET_RATIO}x budget; "
                f"first verdict {f['first_verdict_after_ready_s']['median']:.3f} s after ready "
                f"(max {f['first_verdict_after_ready_s']['max']:.3f}) — "
                f"{verdict(f['first_verdict_after_ready_s']['max'], BUDGET_VERDICT_S)} the "
                f"{BUDGET_VERDICT_S:.0f} s budget (every run); engine's first probe with a "
                f"2 s interval: {probe['after_start_s']:.2f} s after start"
            )
    print(f"written {write_result('env_ready', results)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
