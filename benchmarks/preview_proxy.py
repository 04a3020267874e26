"""Preview URLs: time to route a server the agent starts, and the proxy's request
overhead against the environment's direct host port, in the same run.

One environment is realised through the components (the harness) with a published port
serving HTTP; the preview proxy script (roles/preview_proxy) runs Caddy on loopback on
its own high ports with its watcher (2 s look interval). Figures:
- time to route: a server started inside on a port that was never published, until its
  URL answers 200 with the session's token (RUNS samples, each on a new port);
- overhead: median of 20 requests each way, direct `http://127.0.0.1:<hostPort>/` against
  `https://<port>-<session>.<domain>/` through Caddy (a new TLS connection each).
Budgets (issue 20): route within 10 s; overhead is reported as a ratio.
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


def _median_request(argv: list[str], count: int = 20) -> float:
    times = []
    for _ in range(count):
        started = time.perf_counter()
        subprocess.run(argv, capture_output=True, check=True)
        times.append(time.perf_counter() - started)
    return sorted(times)[len(times) // 2]


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
                wait_for(lambda p=port: status(p) == 200, 30, interval=0.1, what=f"route {port}")
                route.append(time.monotonic() - started)
            host_port = target.manifests["web"]["container"]["portMappings"][0]["hostPort"]
            direct = _median_request(
                ["curl", "-s", "-o", "/dev/null", f"http://127.0.0.1:{host_port}/"]
            )
            host = f"{PORT}-web.{DOMAIN}"
            proxied = _median_request(
                [
                    "curl", "-sk", "-o", "/dev/null", "-H", f"Authorization: Bearer {token}",
                    "--resolve", f"{host}:{https_port}:127.0.0.1", f"https://{host}:{https_port}/",
                ]
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
                stat_row("direct host port (median of 20)", [direct]),
                stat_row("through Caddy, TLS (median of 20)", [proxied], direct),
            ],
        )
    )
    result: dict[str, Any] = {
        "time_to_route": summary(route),
        "direct_s": direct,
        "proxied_s": proxied,
        "overhead_ratio": proxied / direct,
        "budget_route_s": BUDGET_ROUTE_S,
    }
    write_result("preview_proxy", result)
    ok = summary(route)["max"] <= BUDGET_ROUTE_S
    print(f"budget: every route within {BUDGET_ROUTE_S:g} s: {'meets' if ok else 'MISSES'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
