"""One session created on a host already running 50, against a bare `docker run`.

Through the product's path: ``dockyard.sessions`` validates the request, checks quotas
(caps set, so the engine is counted), and applies the program to a stack of its own —
here with the harness driver realising it on this engine (the Pulumi CLI cannot run
here; see docs/sessions.md). Timed: ``create()`` returning the manifest (network, three
volumes, container started, pids limit, manifest written). Baseline in the same run,
interleaved: `docker run --rm <image> true`. Also: 10 sessions created at once by 10
``dockyard up`` processes (wall time), and ``destroy()``.

Budget: median create <= 2 s with 50 sessions running.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import RUNS, engine, stat_row, summary, table, timed, verdict, write_result

BUDGET_S = 2.0
BACKGROUND = int(os.environ.get("DOCKYARD_BENCH_BACKGROUND", "50"))
REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    from dockyard.sessions import Sessions
    from dockyard.sessions.settings import paths
    from tests.harness.sessions import HarnessDriver
    from tests.support.harness_home import clear_tenant
    from tests.support.images import build_image

    client = engine()
    image = build_image(client, "dockyard-core")
    tenant = f"bench{int(time.time()) % 100000}"
    with tempfile.TemporaryDirectory(prefix="dockyard-bench-sessions-") as base:
        state, project = Path(base) / "state", Path(base) / "project"
        state.mkdir()
        project.mkdir()
        (state / "image.json").write_text(json.dumps({"imageRef": image}))
        settings = Path(base) / "settings.yaml"
        settings.write_text(json.dumps({"quotas": {"environments": 1000}}))
        environ = {
            **os.environ,
            "DOCKYARD_STATE_DIR": str(state),
            "DOCKYARD_CONFIG": str(settings),
        }
        where = paths(environ)
        sessions = Sessions(where, HarnessDriver(where))

        def request(session: str) -> dict[str, Any]:
            return {
                "sessionId": session,
                "cwd": str(project),
                "tenant": tenant,
                "container": {"ports": [3000]},
            }

        try:
            started = time.perf_counter()
            for i in range(BACKGROUND):
                sessions.create(request(f"bg{i}"))
            background_s = time.perf_counter() - started
            bare, create, destroy = [], [], []
            client.containers.run(image, entrypoint=["true"], remove=True)  # warm-up
            for run in range(RUNS):
                bare.append(
                    timed(lambda: client.containers.run(image, entrypoint=["true"], remove=True))
                )
                create.append(timed(lambda run=run: sessions.create(request(f"m{run}"))))
                destroy.append(timed(lambda run=run: sessions.destroy(f"m{run}", tenant)))
            cli = Path(sys.executable).with_name("dockyard")
            env = {
                **environ,
                "DOCKYARD_DRIVER": "tests.harness.sessions:HarnessDriver",
                "PYTHONPATH": str(REPO),
            }
            started = time.perf_counter()
            processes = [
                subprocess.Popen(
                    [
                        str(cli),
                        "up",
                        "--json",
                        "-s",
                        f"c{i}",
                        "--tenant",
                        tenant,
                        "--cwd",
                        str(project),
                    ],
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    text=True,
                )
                for i in range(10)
            ]
            codes = [p.wait(timeout=600) for p in processes]
            concurrent_s = time.perf_counter() - started
            for process, code in zip(processes, codes, strict=True):
                if code != 0 and process.stderr is not None:
                    print(f"a concurrent create failed ({code}):\n{process.stderr.read()[-3000:]}")
        finally:
            clear_tenant(client, sessions, tenant)

    base_median = summary(bare)["median"]
    median = summary(create)["median"]
    print(
        table(
            ["figure (s)", "median", "min", "max", "x bare"],
            [
                stat_row("bare docker run --rm true", bare),
                stat_row(f"session create (+{BACKGROUND} running)", create, base_median),
                stat_row("session destroy", destroy, base_median),
            ],
        )
    )
    print(f"{BACKGROUND} background sessions created one by one in {background_s:.1f} s")
    print(f"10 sessions by 10 processes at once: {concurrent_s:.1f} s wall, exit codes {codes}")
    print(f"budget: create median <= {BUDGET_S} s: {verdict(median, BUDGET_S)} ({median:.2f} s)")
    write_result(
        "session_create",
        {
            "bare": summary(bare),
            "create": summary(create),
            "destroy": summary(destroy),
            "background": BACKGROUND,
            "background_s": background_s,
            "concurrent_10_s": concurrent_s,
            "concurrent_exit_codes": codes,
            "budget_s": BUDGET_S,
        },
    )
    return 0 if median <= BUDGET_S and codes == [0] * 10 else 1


if __name__ == "__main__":
    sys.exit(main())
