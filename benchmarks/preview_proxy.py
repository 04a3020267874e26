"""Preview URLs: time to route a server the agent starts, and the proxy's request
overhead against the environment's direct host port, in the same run.

One environment is realised through the components (the harness) with a published port
serving HTTP; the preview proxy script (roles/preview_proxy) runs Caddy on loopback on
its own high ports with its watcher (2 s look interval). Figures:
- time to route: a server started inside on a port that was never published, until its
  URL answers 200 with the session's token (RUNS samples, each on a new port);
- overhead: 20 requests each way, interleaved (direct, proxied, direct, ...) so both see
  the same load: direct `http://127.0.0.1:<hostPort>/` (the same-run baseline) against
  `https://<port>-<session>.<domain>/` through Caddy with the session's token (a new curl
  process and, through Caddy, a new TLS connection each; every request must answer 2xx:
  curl --fail). Reported as the ratio of the medians.
Budgets (issue 20): route within 10 s; overhead is a figure (ratio), not a budget.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median
from typing import Any

from benchmarks.common import RUNS, deployed, engine, stat_row, summary, table, write_result
from tests.support.engine import wait_for

REPO = Path(__file__).resolve().parents[1]
PROXY = REPO / "roles" / "preview_proxy" / "files" / "dockyard-preview-proxy.py"
DOMAIN = "preview.bench"
SCOPE = "bench.preview"
PORT = 8000
BUDGET_ROUTE_S = 10.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _interleaved(first: list[str], second: list[str], count: int = 20) -> tuple[list[float], ...]:
    """Seconds per request of two curl commands, run alternately ``count`` times each.
    Each must succeed: the commands carry ``--fail`` (a 401 or 502 would time nothing)."""
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(count):
        for argv, samples in zip((first, second), times, strict=True):
            started = time.perf_counter()
            subprocess.run(argv, capture_output=True, check=True)
            samples.append(time.perf_counter() - started)
    return times


def main() -> int:
    if shutil.which("caddy") is None:
        print("ERROR: caddy is not installed (apt-get install caddy)", file=sys.stderr)
        return 2
    client = engine()
    scope = f"{int(time.time())}"
    values = {
        "limits": {"cpus": 1, "memory": "512m"},
        "environments": [{"sessionId": "web", "labels": {SCOPE: scope}, "ports": [PORT]}],
    }
    with deployed(client, "benchpreview", values) as target, tempfile.TemporaryDirectory() as base:
        target.wait_ready()
        container = target.container("web")
        container.exec_run(
            ["python3", "-m", "http.server", str(PORT)], user="1000:1000", detach=True
        )
        https_port = _free_port()
        argv = [
            sys.executable, str(PROXY), "--domain", DOMAIN, "--config", f"{base}/Caddyfile",
            "--token-dir", f"{base}/tokens", "--http-port", str(_free_port()),
            "--https-port", str(https_port), "--admin", f"127.0.0.1:{_free_port()}",
            "--scope-label", f"{SCOPE}={scope}",
        ]  # fmt: skip
        env = {
            **os.environ,
            "XDG_DATA_HOME": f"{base}/data",
            "XDG_CONFIG_HOME": f"{base}/config",
            "HOME": base,
        }
        watcher = None
        try:
            subprocess.run([*argv, "--json"], env=env, capture_output=True, check=True, timeout=60)
            token = (Path(base) / "tokens" / f"{container.name}.token").read_text().strip()

            def status(port: int) -> int:
                host = f"{port}-web.{DOMAIN}"
                out = subprocess.run(
                    [
                        "curl", "-sk", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5",
                        "-H", f"Authorization: Bearer {token}",
                        "--resolve", f"{host}:{https_port}:127.0.0.1", f"https://{host}:{https_port}/",
                    ],
                    capture_output=True, text=True, check=False,
                ).stdout  # fmt: skip
                return int(out or 0)

            wait_for(lambda: status(PORT) == 200, 60, interval=0.5, what="caddy serving")
            watcher = subprocess.Popen([*argv, "--watch", "2"], env=env, stdout=subprocess.DEVNULL)
            route: list[float] = []
            for run in range(RUNS):
                port = 8100 + run
                started = time.monotonic()
                container.exec_run(
                    ["python3", "-m", "http.server", str(port)], user="1000:1000", detach=True
                )

                def routed(p: int = port) -> bool:
                    return status(p) == 200

                wait_for(routed, 30, interval=0.1, what=f"route {port}")
                route.append(time.monotonic() - started)
            host_port = target.manifests["web"]["container"]["portMappings"][0]["hostPort"]
            host = f"{PORT}-web.{DOMAIN}"
            direct, proxied = _interleaved(
                ["curl", "-s", "--fail", "-o", "/dev/null", f"http://127.0.0.1:{host_port}/"],
                [
                    "curl", "-sk", "--fail", "-o", "/dev/null",
                    "-H", f"Authorization: Bearer {token}",
                    "--resolve", f"{host}:{https_port}:127.0.0.1", f"https://{host}:{https_port}/",
                ],
            )  # fmt: skip
        finally:
            if watcher is not None:
                watcher.terminate()
                watcher.wait(timeout=10)
            subprocess.run([*argv, "--remove"], env=env, capture_output=True, check=False)
    print(
        table(
            ["figure (s)", "median", "min", "max", "x direct"],
            [
                stat_row("time to route (2 s watch)", route),
                stat_row("direct host port (20 requests)", direct),
                stat_row("through Caddy, TLS (20, interleaved)", proxied, median(direct)),
            ],
        )
    )
    result: dict[str, Any] = {
        "time_to_route": summary(route),
        "direct": summary(direct),
        "proxied": summary(proxied),
        "overhead_ratio": median(proxied) / median(direct),
        "budget_route_s": BUDGET_ROUTE_S,
    }
    write_result("preview_proxy", result)
    ok = summary(route)["max"] <= BUDGET_ROUTE_S
    print(f"budget: every route within {BUDGET_ROUTE_S:g} s: {'meets' if ok else 'MISSES'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
