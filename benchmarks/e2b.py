"""The E2B-compatible surface (issue 30): ``Sandbox.create()`` to the first
``commands.run("echo hi")`` returning, p50 and p95, through the public ``e2b`` Python SDK
against ``dockyard serve``, vs the same through dockyard's own API in the same run
(``POST /api/sessions`` then ``POST /api/sessions/{id}/exec`` of ``echo hi`` until its
``exit`` event), interleaved, each sandbox/session destroyed before the next.

The real server on loopback, the harness driver realising sessions on this engine (the
Pulumi CLI cannot run here), the core image with its daemon (images/core/envd.py). The
SDK is configured only the SDK's way (api_key, api_url, sandbox_url: the header form).
Runs: ``DOCKYARD_BENCH_RUNS`` (default 5; 20 for a p95 worth the name).

    python -m benchmarks.e2b
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import httpx

from benchmarks.common import (
    RUNS,
    api_key,
    bench_env,
    engine,
    percentiles,
    served,
    session_home,
    table,
    write_result,
)


def through_sdk(url: str, key: str) -> float:
    from e2b import Sandbox

    started = time.perf_counter()
    sandbox = Sandbox.create("base", api_key=key, api_url=url, sandbox_url=url)
    result = sandbox.commands.run("echo hi")
    elapsed = time.perf_counter() - started
    if result.stdout != "hi\n":
        raise SystemExit(f"ERROR: the SDK's echo answered {result.stdout!r}")
    sandbox.kill()
    return elapsed


def through_native(client: httpx.Client, headers: dict[str, str], project: str, n: int) -> float:
    session = f"bn{n}x{int(time.time()) % 100000}"
    started = time.perf_counter()
    made = client.post(
        "/api/sessions",
        json={"sessionId": session, "cwd": project, "backend": "claude"},
        headers=headers,
    )
    if made.status_code != 201:
        raise SystemExit(f"ERROR: create answered {made.status_code}: {made.text[:300]}")
    ran = client.post(
        f"/api/sessions/{session}/exec", json={"command": ["echo", "hi"]}, headers=headers
    )
    elapsed = time.perf_counter() - started
    if ran.status_code != 200 or "event: exit" not in ran.text or "hi" not in ran.text:
        raise SystemExit(f"ERROR: exec answered {ran.status_code}: {ran.text[:300]}")
    client.delete(f"/api/sessions/{session}", headers=headers)
    return elapsed


def main() -> int:
    from tests.support.harness_home import sweep_tenant
    from tests.support.images import build_image

    docker_client = engine()
    image = build_image(docker_client, "dockyard-core")
    tenant = f"be2b{int(time.time()) % 100000}"
    results: dict[str, Any] = {}
    with session_home("dockyard-bench-e2b-", image) as (base, state, project, settings):
        store_url = f"sqlite:///{state / 'api' / 'api-keys.db'}"
        (state / "api").mkdir()
        env = bench_env(state, project, settings)
        key = api_key(store_url, tenant)
        rate = ("--rate", "100000", "--burst", "100000")
        try:
            with served(env, store_url, base / "server.log", *rate) as url:
                sdk: list[float] = []
                native: list[float] = []
                headers = {"Authorization": f"Bearer {key}"}
                with httpx.Client(base_url=url, timeout=600, trust_env=False) as client:
                    through_sdk(url, key)  # warm-up (imports, first connections), not counted
                    for n in range(RUNS):
                        sdk.append(through_sdk(url, key))
                        native.append(through_native(client, headers, str(project), n))
                results = {
                    "sdk_create_to_first_command_s": percentiles(sdk),
                    "native_create_to_first_command_s": percentiles(native),
                    "ratio_p50": percentiles(sdk)["p50"] / percentiles(native)["p50"],
                }
        finally:
            sweep_tenant(docker_client, tenant)
    rows = [
        [name, v["p50"], v["p95"], v["max"], v["runs"]]
        for name, v in (
            ("e2b SDK: Sandbox.create + commands.run", results["sdk_create_to_first_command_s"]),
            ("dockyard API: create + exec", results["native_create_to_first_command_s"]),
        )
    ]
    print(table(["create to first command (s)", "p50", "p95", "max", "runs"], rows))
    print(f"SDK / native, p50: {results['ratio_p50']:.2f}x")
    path = write_result("e2b", results)
    print(json.dumps({"written": str(path)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
