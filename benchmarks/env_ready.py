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

Budgets: ready <= 1.15x bare for both backends; first verdict <= 2 s after ready.
"""

from __future__ import annotations

import statistics
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
from tests.support.engine import READY_MARKER, wait_for

BUDGET_RATIO = 1.15
BUDGET_VERDICT_S = 2.0
BACKENDS = ("claude", "codex")
HEALTH_FILE = "/tmp/health"
STEPS = ("config", "secrets", "cli-started", "workspace", "tmux", "cli", "ready")
"""Entrypoint steps in the order they finish (images/core/entrypoint.sh, timing line)."""
PHASES = ("engine: create -> started", "engine: started -> entrypoint", *STEPS)


def _bare(client: Any, image: str) -> float:
    return timed(lambda: client.containers.run(image, entrypoint=["true"], remove=True))


def _logs(container: Any) -> str:
    return str(container.logs().decode(errors="replace"))


def _timing(logs: str) -> tuple[float, dict[str, float]]:
    """(entrypoint start epoch, step -> ms since start) from the entrypoint's timing line."""
    line = next(x for x in logs.splitlines() if x.startswith("dockyard: timing "))
    fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
    return float(fields.pop("start")), {step: float(fields[step]) for step in STEPS}


def _environment(client: Any, backend: str, run: str, values: dict[str, Any]) -> dict[str, Any]:
    values = {
        **values,
        "environments": [{"sessionId": "bench", "backend": backend, "ports": [3000]}],
    }
    with deployed(client, f"bench{backend[:2]}{run}", values) as target:
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
        created = parse_engine_time(container.attrs["Created"])
        started = parse_engine_time(container.attrs["State"]["StartedAt"])
        entry, steps = _timing(_logs(container))
        stamp, _, first_verdict = health.partition(" ")
        ready = parse_engine_time(marker) - created
        result: dict[str, Any] = {
            "ready": ready,
            "verdict_after_ready": parse_engine_time(stamp) - created - ready,
            "verdict": first_verdict,
            "phases": {
                PHASES[0]: started - created,
                PHASES[1]: entry - started,
                **{
                    step: (steps[step] - (steps[STEPS[i - 1]] if i else 0.0)) / 1000
                    for i, step in enumerate(STEPS)
                },
            },
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


def main() -> int:
    client = engine()
    from tests.support.images import build_image

    image = build_image(client, "dockyard-core")
    _bare(client, image)  # warm-up round: page cache, image layers, CLI binaries
    for backend in BACKENDS:
        _environment(client, backend, "w", {})
    bare: list[float] = []
    runs: dict[str, list[dict[str, Any]]] = {backend: [] for backend in BACKENDS}
    for run in range(RUNS):
        bare.append(_bare(client, image))
        for backend in BACKENDS:
            runs[backend].append(_environment(client, backend, str(run), {}))
    floor = {
        backend: _environment(client, backend, "f", {"healthcheck": {"interval": "2s"}})
        for backend in BACKENDS
    }

    base = summary(bare)["median"]
    results: dict[str, Any] = {"bare_docker_run_s": summary(bare), "backends": {}}
    rows = [stat_row("bare docker run --rm true", bare, base)]
    for backend, samples in runs.items():
        ready = [s["ready"] for s in samples]
        after = [s["verdict_after_ready"] for s in samples]
        ratio = summary(ready)["median"] / base
        results["backends"][backend] = {
            "ready_s": summary(ready),
            "ready_vs_bare": ratio,
            "budget_ratio": BUDGET_RATIO,
            "meets_budget": ratio <= BUDGET_RATIO,
            "first_verdict_after_ready_s": summary(after),
            "first_verdicts": [s["verdict"] for s in samples],
            "phases_s": {phase: summary([s["phases"][phase] for s in samples]) for phase in PHASES},
            "engine_first_probe_2s_interval": {
                "after_start_s": floor[backend]["engine_probe_after_start"],
                "after_ready_s": floor[backend]["engine_probe_after_ready"],
            },
        }
        rows.append(stat_row(f"{backend}: create -> ready", ready, base))
        rows.append(stat_row(f"{backend}: ready -> first health verdict", after))
    print(f"Environment ready time (seconds, median/min/max of {RUNS}; ratio vs bare median)")
    print(table(["what", "median", "min", "max", "x bare"], rows))
    print("\nWhere the time goes (median ms per step; steps of the entrypoint in order)")
    print(
        table(
            ["step", *BACKENDS],
            [
                [
                    phase,
                    *(
                        f"{statistics.median(s['phases'][phase] for s in runs[b]) * 1000:.1f}"
                        for b in BACKENDS
                    ),
                ]
                for phase in PHASES
            ],
        )
    )
    for backend, figures in results["backends"].items():
        probe = figures["engine_first_probe_2s_interval"]
        print(
            f"{backend}: ready {figures['ready_vs_bare']:.2f}x bare — "
            f"{verdict(figures['ready_vs_bare'], BUDGET_RATIO)} the {BUDGET_RATIO}x budget; "
            f"first verdict {figures['first_verdict_after_ready_s']['median']:.3f} s after "
            f"ready — {verdict(figures['first_verdict_after_ready_s']['max'], BUDGET_VERDICT_S)} "
            f"the {BUDGET_VERDICT_S:.0f} s budget (every run); engine's first probe with a 2 s "
            f"interval: {probe['after_start_s']:.2f} s after start"
        )
    results["budget_first_verdict_s"] = BUDGET_VERDICT_S
    print(f"written {write_result('env_ready', results)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
