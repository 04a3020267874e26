"""Density (issue 29): 200 paused sessions on one host, and the memory each one costs.

Through the product's path: :class:`dockyard.sessions.Sessions` with the harness driver
realising sessions on this engine (the Pulumi CLI cannot run here; docs/sessions.md),
each session created (bounded disks, network, volumes, ports) until its ready marker,
then paused with ``pause()``.

Measured, for the sessions and for the baseline, once running (5 s after the last is
ready) and once paused:

- **in the environment**: each container's cgroup memory without inactive page cache
  (what ``docker stats`` shows), median and the sum;
- **beside it on the host**: the proportional set size of each container's
  ``containerd-shim`` (one per container on this engine), median;
- **the whole host**: ``MemAvailable`` before the first is made minus with all of them,
  divided by their number (the engine's, the kernel's and the shims' share included; the
  noisiest figure: anything else on the machine moves it);
- the CPU the paused ones use together over 10 s (cgroup CPU time), and ``pause()`` and
  ``resume()`` per session (a sample of 10 is resumed and runs a command afterwards).

Baseline in the same run: as many bare ``docker run -d <core image> sleep infinity``
containers, paused with the engine's ``pause``. Count: DOCKYARD_BENCH_DENSITY (default
200). Nothing is left afterwards (checked).
"""

from __future__ import annotations

import itertools
import os
import re
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from benchmarks.common import (
    engine,
    parse_sizes,
    session_home,
    stat_row,
    summary,
    table,
    timed,
    wait_ready,
    write_result,
)
from benchmarks.scale import container_idle_mb

DEFAULT_COUNT = 200
SETTLE_S = 5.0
CPU_WINDOW_S = 10.0
RESUMED = 10
LABEL = {"dockyard.bench": "density"}


def count() -> int:
    """DOCKYARD_BENCH_DENSITY (one count); ValueError names the variable and what is allowed."""
    sizes = parse_sizes(
        "DOCKYARD_BENCH_DENSITY", os.environ.get("DOCKYARD_BENCH_DENSITY"), (DEFAULT_COUNT,)
    )
    if len(sizes) != 1:
        raise ValueError(
            f"DOCKYARD_BENCH_DENSITY={os.environ.get('DOCKYARD_BENCH_DENSITY')!r}: "
            "several counts (allowed: one count of environments, e.g. 200)"
        )
    return sizes[0]


def mem_available_mb(meminfo: str) -> float:
    """``MemAvailable`` of a ``/proc/meminfo`` text, in MB."""
    found = re.search(r"^MemAvailable:\s+(\d+) kB$", meminfo, re.MULTILINE)
    if found is None:
        raise ValueError("/proc/meminfo has no MemAvailable line")
    return int(found.group(1)) / 1024


def pss_mb(smaps_rollup: str) -> float:
    """The ``Pss`` of a ``/proc/<pid>/smaps_rollup`` text, in MB."""
    found = re.search(r"^Pss:\s+(\d+) kB$", smaps_rollup, re.MULTILINE)
    if found is None:
        raise ValueError("smaps_rollup has no Pss line")
    return int(found.group(1)) / 1024


def shims_by_container(proc: Path, containers: Iterable[str]) -> dict[str, int]:
    """The pid of each container's ``containerd-shim`` (``-id <container id>`` on its
    command line), for the containers that have one."""
    wanted = set(containers)
    found: dict[str, int] = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue  # gone meanwhile
        if not argv or b"containerd-shim" not in argv[0]:
            continue
        words = [a.decode(errors="replace") for a in argv]
        for flag, value in itertools.pairwise(words):
            if flag == "-id" and value in wanted:
                found[value] = int(entry.name)
    return found


def _host_available_mb() -> float:
    return mem_available_mb(Path("/proc/meminfo").read_text())


def _memory(containers: Sequence[Any]) -> dict[str, float]:
    """Median and sum of the containers' cgroup memory, and their shims' median PSS."""
    with ThreadPoolExecutor(8) as pool:
        inside = list(pool.map(container_idle_mb, containers))
    shims = shims_by_container(Path("/proc"), [c.id for c in containers])
    if len(shims) != len(containers):
        raise SystemExit(
            f"ERROR: {len(containers) - len(shims)} of {len(containers)} containers have "
            "no containerd-shim of their own on this host (a remote engine cannot be measured)"
        )
    shim = [pss_mb(Path(f"/proc/{pid}/smaps_rollup").read_text()) for pid in shims.values()]
    return {
        "cgroup_mb_median": statistics.median(inside),
        "cgroup_mb_sum": sum(inside),
        "shim_pss_mb_median": statistics.median(shim),
    }


def _cpu_s(containers: Sequence[Any]) -> float:
    """CPU seconds the containers used together over CPU_WINDOW_S."""

    def used(container: Any) -> int:
        return int(container.stats(stream=False)["cpu_stats"]["cpu_usage"]["total_usage"])

    with ThreadPoolExecutor(8) as pool:
        before = list(pool.map(used, containers))
        time.sleep(CPU_WINDOW_S)
        after = list(pool.map(used, containers))
    return sum(b - a for a, b in zip(before, after, strict=True)) / 1e9


def _measured(
    containers: Sequence[Any], available_before: float, pause: Callable[[Any], float]
) -> dict[str, Any]:
    """Running figures, then each paused with ``pause`` (its seconds), then paused figures."""
    time.sleep(SETTLE_S)
    running = {
        **_memory(containers),
        "host_mb_per_env": (available_before - _host_available_mb()) / len(containers),
    }
    pauses = [pause(c) for c in containers]
    time.sleep(SETTLE_S)
    paused = {
        **_memory(containers),
        "host_mb_per_env": (available_before - _host_available_mb()) / len(containers),
        "cpu_s_in_window": _cpu_s(containers),
    }
    for container in containers:
        container.reload()
    states = {c.name: c.status for c in containers if c.status != "paused"}
    if states:
        raise SystemExit(f"ERROR: not paused after pause: {states}")
    return {"running": running, "paused": paused, "pause_s": pauses}


def _bare(client: Any, image: str, size: int) -> dict[str, Any]:
    available = _host_available_mb()
    containers: list[Any] = []
    try:
        for _ in range(size):
            containers.append(
                client.containers.run(
                    image, entrypoint=["sleep", "infinity"], detach=True, labels=LABEL
                )
            )
        figures = _measured(containers, available, lambda c: timed(c.pause))
        figures["unpause_s"] = [timed(c.unpause) for c in containers[:RESUMED]]
        return figures
    finally:
        selector = {"label": "dockyard.bench=density"}
        for container in client.containers.list(all=True, filters=selector):
            container.remove(force=True)


def _request(name: str, project: Path, tenant: str) -> dict[str, Any]:
    return {"sessionId": name, "cwd": str(project), "tenant": tenant}


def main() -> int:
    from dockyard.sessions import Sessions
    from dockyard.sessions.settings import paths
    from tests.harness.sessions import HarnessDriver
    from tests.support.harness_home import clear_tenant
    from tests.support.images import build_image

    size = count()
    client = engine()
    image = build_image(client, "dockyard-core")
    client.containers.run(image, entrypoint=["true"], remove=True)  # warm-up
    bare = _bare(client, image, size)

    tenant = f"bdens{int(time.time()) % 100000}"
    with session_home("dockyard-bench-density-", image) as (_base, state, project, settings):
        settings.write_text('{"quotas": {"environments": 100000}}')  # the default caps are lower
        where = paths({"DOCKYARD_STATE_DIR": str(state), "DOCKYARD_CONFIG": str(settings)})
        sessions = Sessions(where, HarnessDriver(where))
        names = [f"d{i:03d}" for i in range(size)]

        try:
            available = _host_available_mb()
            started = time.perf_counter()
            # One after another: the harness runs the program on this thread's event loop.
            made = [sessions.create(_request(n, project, tenant)) for n in names]
            containers = [client.containers.get(m["container"]["id"]) for m in made]
            with ThreadPoolExecutor(8) as pool:
                list(pool.map(lambda c: wait_ready(c, deadline_s=600), containers))
            made_s = time.perf_counter() - started
            by_name = {c.id: n for c, n in zip(containers, names, strict=True)}
            figures = _measured(
                containers,
                available,
                lambda c: timed(lambda: sessions.pause(by_name[c.id], tenant)),
            )
            resumed = []
            for container in containers[:RESUMED]:
                resumed.append(timed(lambda c=container: sessions.resume(by_name[c.id], tenant)))
                done = container.exec_run(["true"], user="agent")
                if done.exit_code != 0:
                    raise SystemExit(f"ERROR: {container.name} does not run a command: {done}")
            figures["resume_s"] = resumed
            started = time.perf_counter()
            for name in names:
                sessions.destroy(name, tenant)
            destroyed_s = time.perf_counter() - started
        finally:
            clear_tenant(client, sessions, tenant)
        left = client.containers.list(all=True, filters={"label": f"dockyard.stack={tenant}"})
        if left:
            raise SystemExit(f"ERROR: {len(left)} containers of the run are left")

    _report(size, bare, figures, made_s, destroyed_s)
    return 0


def _report(
    size: int, bare: dict[str, Any], env: dict[str, Any], made_s: float, destroyed_s: float
) -> None:
    rows = []
    for state in ("running", "paused"):
        for key, what in (
            ("cgroup_mb_median", "in the container, MB (median)"),
            ("shim_pss_mb_median", "its containerd-shim, MB PSS (median)"),
            ("host_mb_per_env", "host MemAvailable drop / count, MB"),
        ):
            mine, theirs = env[state][key], bare[state][key]
            rows.append(
                [f"{state}: {what}", mine, theirs, f"{mine / theirs:.2f}" if theirs else ""]
            )
    rows.append(
        [
            "paused: CPU s of all in 10 s",
            env["paused"]["cpu_s_in_window"],
            bare["paused"]["cpu_s_in_window"],
            "",
        ]
    )
    print(table([f"{size} environments", "sessions", "bare", "x bare"], rows))
    print(
        table(
            ["figure (s)", "median", "min", "max", "x baseline"],
            [
                stat_row("engine pause (bare)", bare["pause_s"]),
                stat_row("pause()", env["pause_s"], summary(bare["pause_s"])["median"]),
                stat_row("engine unpause (bare)", bare["unpause_s"]),
                stat_row("resume()", env["resume_s"], summary(bare["unpause_s"])["median"]),
            ],
        )
    )
    print(
        f"{size} sessions made one after another (to ready) in {made_s:.1f} s, destroyed in {destroyed_s:.1f} s"
    )
    write_result(
        "density",
        {
            "count": size,
            "bare": {
                **bare,
                "pause_s": summary(bare["pause_s"]),
                "unpause_s": summary(bare["unpause_s"]),
            },
            "sessions": {
                **env,
                "pause_s": summary(env["pause_s"]),
                "resume_s": summary(env["resume_s"]),
                "made_s": made_s,
                "destroyed_s": destroyed_s,
            },
        },
    )


if __name__ == "__main__":
    sys.exit(main())
