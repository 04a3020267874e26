"""The data plane over HTTP (issue 27's `api` benchmarks, exec and files part).

The real server (`dockyard serve` on loopback, the harness driver realising one session on
this engine), timed from a client in this process:
- exec round trip of `true`: ``POST /api/sessions/{id}/exec`` until its `exit` event, vs
  the baseline `docker exec <container> true` (the CLI), interleaved; p50 and p95.
  Budget: <= 1.3x the baseline at p50 and p95.
- 10 MB of output streamed by one exec (wall time, and MB/s).
- a 100 MB file uploaded and downloaded (wall time each, and MB/s).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

import httpx

from benchmarks.common import (
    api_key,
    bench_env,
    engine,
    p95,
    served,
    session_home,
    table,
    verdict,
    write_result,
)

BUDGET = 1.3
RUNS = int(os.environ.get("DOCKYARD_BENCH_EXEC_RUNS", "40"))
MB = 1024 * 1024


def exec_over_http(client: httpx.Client, headers: dict[str, str], command: list[str]) -> int:
    """Bytes of stdout until the exit event (which must come)."""
    got, ended = 0, False
    with client.stream(
        "POST", "/api/sessions/bench/exec", headers=headers, json={"command": command}
    ) as response:
        response.raise_for_status()
        name = ""
        for line in response.iter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: ") and name == "stdout":
                got += len(json.loads(line[6:])["data"])
            elif name == "exit":
                ended = True
    if not ended:
        raise SystemExit("ERROR: an exec stream ended without its exit event")
    return got


def main() -> int:
    from tests.support.harness_home import sweep_tenant
    from tests.support.images import build_image

    docker_client = engine()
    image = build_image(docker_client, "dockyard-core")
    tenant = f"bench{int(time.time()) % 100000}"
    with session_home("dockyard-bench-dataplane-", image) as (base, state, project, settings):
        store = f"sqlite:///{state / 'api' / 'api-keys.db'}"
        (state / "api").mkdir()
        env = bench_env(state, project, settings)
        headers = {"Authorization": f"Bearer {api_key(store, tenant)}"}
        try:
            with (
                served(env, store, base / "server.log", "--rate", "10000") as url,
                httpx.Client(base_url=url, timeout=600, trust_env=False) as client,
            ):
                created = client.post(
                    "/api/sessions",
                    headers=headers,
                    json={"sessionId": "bench", "cwd": str(project), "backend": "claude"},
                )
                created.raise_for_status()
                container = created.json()["container"]["id"]
                results = measure(client, headers, container)
                client.delete("/api/sessions/bench", headers=headers)
        finally:
            sweep_tenant(docker_client, tenant)
    path = write_result("dataplane", results)
    print(f"results: {path}")
    return 0 if results["verdict"] == "meets" else 1


def measure(client: httpx.Client, headers: dict[str, str], container: str) -> dict[str, Any]:
    http, cli = [], []
    for _ in range(3):  # warm both paths
        exec_over_http(client, headers, ["true"])
        subprocess.run(["docker", "exec", container, "true"], check=True)
    for _ in range(RUNS):
        started = time.perf_counter()
        exec_over_http(client, headers, ["true"])
        http.append(time.perf_counter() - started)
        started = time.perf_counter()
        subprocess.run(["docker", "exec", container, "true"], check=True)
        cli.append(time.perf_counter() - started)
    ratios = {
        "p50": statistics.median(http) / statistics.median(cli),
        "p95": p95(http) / p95(cli),
    }
    started = time.perf_counter()
    size = exec_over_http(
        client, headers, ["sh", "-c", f"head -c {10 * MB} /dev/zero | tr '\\0' a"]
    )
    output_s = time.perf_counter() - started
    if size != 10 * MB:
        raise SystemExit(f"ERROR: 10 MB of output arrived as {size} bytes")
    data = os.urandom(100 * MB)
    started = time.perf_counter()
    put = client.put(
        "/api/sessions/bench/files",
        params={"path": "big.bin"},
        headers=headers,
        content=iter([data[i : i + MB] for i in range(0, len(data), MB)]),
    )
    put.raise_for_status()
    upload_s = time.perf_counter() - started
    started = time.perf_counter()
    got = client.get("/api/sessions/bench/files", params={"path": "big.bin"}, headers=headers)
    download_s = time.perf_counter() - started
    if got.content != data:
        raise SystemExit("ERROR: the 100 MB file came back different")
    worst = max(ratios.values())
    rows = [
        ["exec true over HTTP", statistics.median(http), p95(http), f"{ratios['p50']:.2f}x"],
        ["docker exec true", statistics.median(cli), p95(cli), ""],
        ["10 MB output", output_s, "", f"{10 / output_s:.0f} MB/s"],
        ["100 MB upload", upload_s, "", f"{100 / upload_s:.0f} MB/s"],
        ["100 MB download", download_s, "", f"{100 / download_s:.0f} MB/s"],
    ]
    print(table(["what", "p50 / s", "p95 / s", "ratio / rate"], rows))
    print(f"exec round trip: {worst:.2f}x docker exec (budget {BUDGET}x): {verdict(worst, BUDGET)}")
    return {
        "exec_true_http_s": {"p50": statistics.median(http), "p95": p95(http), "runs": RUNS},
        "docker_exec_true_s": {"p50": statistics.median(cli), "p95": p95(cli), "runs": RUNS},
        "ratio": ratios,
        "output_10mb_s": output_s,
        "upload_100mb_s": upload_s,
        "download_100mb_s": download_s,
        "budget": BUDGET,
        "verdict": verdict(worst, BUDGET),
    }


if __name__ == "__main__":
    sys.exit(main())
