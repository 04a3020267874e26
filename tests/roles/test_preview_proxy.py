"""The preview proxy (roles/preview_proxy) on the real engine, with Caddy on loopback:
its own high ports, admin endpoint, data directory and configuration, and routes only for
this test's environments (``--scope-label``). Requests go through curl ``--resolve``.

What must hold: 401 without a token, 200 with the environment's own token (bearer or the
login cookie), 401 with another session's; a server started inside the environment gets
a route within 10 s and loses it after it stops; a second run changes nothing; routes
go with the environment; ``--remove`` stops Caddy."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.ansible import REPO
from tests.support.engine import RUN_ID, require_docker, wait_for
from tests.support.stacks import Deployed

pytestmark = [
    pytest.mark.docker,
    pytest.mark.slow,
]


@pytest.fixture(scope="module", autouse=True)
def _caddy() -> None:
    # Like a missing engine: a skip on a developer's machine, a failure under CI
    # (DOCKYARD_REQUIRE_DOCKER=1), where .ci/run installs caddy.
    if shutil.which("caddy") is None:
        message = "caddy is not installed (apt-get install caddy; the preview_proxy role does)"
        if require_docker():
            pytest.fail(message)
        pytest.skip(message)


PROXY = REPO / "roles" / "preview_proxy" / "files" / "dockyard-preview-proxy.py"
DOMAIN = "preview.test"
SCOPE_KEY = "it.preview"
INNER_PORT = 8000
LATE_PORT = 8100


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Proxy:
    argv: list[str]
    env: dict[str, str]
    https_port: int
    token_dir: Path

    def apply(self, *extra: str) -> dict[str, Any]:
        result = subprocess.run(
            [*self.argv, "--json", *extra], capture_output=True, text=True, env=self.env,
            timeout=60, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def token(self, stack: Deployed, session: str) -> str:
        name = stack.container(session).name
        return (self.token_dir / f"{name}.token").read_text().strip()

    def get(self, host: str, *headers: str) -> int:
        argv = [
            "curl", "-sk", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5",
            "--resolve", f"{host}:{self.https_port}:127.0.0.1",
            *(part for h in headers for part in ("-H", h)),
            f"https://{host}:{self.https_port}/",
        ]  # fmt: skip
        return int(subprocess.run(argv, capture_output=True, text=True, check=False).stdout or 0)


@pytest.fixture(scope="module")
def stack(deploy: Any) -> Deployed:
    labels = {SCOPE_KEY: RUN_ID}
    deployed = deploy(
        "preview",
        {
            "limits": {"cpus": 1, "memory": "512m"},
            "environments": [
                {"sessionId": "web", "labels": labels, "ports": [INNER_PORT]},
                {"sessionId": "other", "labels": labels, "ports": [INNER_PORT]},
            ],
        },
    )
    deployed.wait_ready()
    for session in ("web", "other"):
        deployed.container(session).exec_run(
            ["python3", "-m", "http.server", str(INNER_PORT)], user="1000:1000", detach=True
        )
    return deployed


@pytest.fixture(scope="module")
def proxy(stack: Deployed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    base = tmp_path_factory.mktemp("preview")
    admin = f"127.0.0.1:{free_port()}"
    https_port = free_port()
    argv = [
        sys.executable, str(PROXY), "--domain", DOMAIN, "--config", str(base / "Caddyfile"),
        "--token-dir", str(base / "tokens"), "--http-port", str(free_port()),
        "--https-port", str(https_port), "--admin", admin,
        "--scope-label", f"{SCOPE_KEY}={RUN_ID}",
    ]  # fmt: skip
    env = {
        **os.environ,
        "XDG_DATA_HOME": str(base / "data"),
        "XDG_CONFIG_HOME": str(base / "config"),
        "HOME": str(base),
    }
    found = Proxy(argv, env, https_port, base / "tokens")
    try:
        yield found
    finally:
        subprocess.run([*argv, "--remove"], env=env, capture_output=True, check=False)


@pytest.fixture(scope="module")
def applied(stack: Deployed, proxy: Proxy) -> dict[str, Any]:
    first = proxy.apply()
    # Caddy issues its internal certificates in the background.
    host = f"{INNER_PORT}-web.{DOMAIN}"
    wait_for(lambda: proxy.get(host) == 401, 30, interval=0.5, what="caddy serving")
    return first


def test_routes_for_each_published_port(applied: dict[str, Any]) -> None:
    hosts = [r["host"] for r in applied["routes"]]
    assert f"{INNER_PORT}-web.{DOMAIN}" in hosts
    assert f"{INNER_PORT}-other.{DOMAIN}" in hosts
    published = [r for r in applied["routes"] if not r["discovered"]]
    assert all(r["upstream"].startswith("127.0.0.1:") for r in published), applied["routes"]


def test_second_run_changes_nothing(applied: dict[str, Any], proxy: Proxy) -> None:
    assert proxy.apply()["changed"] is False


def test_tokens_are_private(applied: dict[str, Any], proxy: Proxy) -> None:
    assert proxy.token_dir.stat().st_mode & 0o777 == 0o700
    for token in proxy.token_dir.iterdir():
        assert token.stat().st_mode & 0o777 == 0o600


def test_token_is_required_and_only_the_sessions_own_opens(
    applied: dict[str, Any], proxy: Proxy, stack: Deployed
) -> None:
    host = f"{INNER_PORT}-web.{DOMAIN}"
    own, other = proxy.token(stack, "web"), proxy.token(stack, "other")
    assert own != other
    assert proxy.get(host) == 401
    assert proxy.get(host, "Authorization: Bearer wrong") == 401
    assert proxy.get(host, f"Authorization: Bearer {other}") == 401
    assert proxy.get(host, f"Cookie: dockyard_preview={other}") == 401
    assert proxy.get(host, f"Authorization: Bearer {own}") == 200
    assert proxy.get(host, f"Cookie: dockyard_preview={own}") == 200
    assert proxy.get(f"{INNER_PORT}-other.{DOMAIN}", f"Authorization: Bearer {other}") == 200


def test_a_server_started_inside_gets_a_route_within_10s_and_loses_it(
    applied: dict[str, Any], proxy: Proxy, stack: Deployed
) -> None:
    host = f"{LATE_PORT}-web.{DOMAIN}"
    bearer = f"Authorization: Bearer {proxy.token(stack, 'web')}"
    watcher = subprocess.Popen(
        [*proxy.argv, "--watch", "2"], env=proxy.env, stdout=subprocess.DEVNULL
    )
    container = stack.container("web")
    try:
        assert proxy.get(host, bearer) != 200
        started = time.monotonic()
        container.exec_run(
            ["python3", "-m", "http.server", str(LATE_PORT)], user="1000:1000", detach=True
        )
        wait_for(lambda: proxy.get(host, bearer) == 200, 10, interval=0.25, what="a route")
        time_to_route = time.monotonic() - started
        print(f"time to route: {time_to_route:.1f} s (watch interval 2 s, noisy 2-core host)")
        assert proxy.get(host) == 401
        container.exec_run(["pkill", "-f", f"http.server {LATE_PORT}"], user="1000:1000")
        wait_for(lambda: proxy.get(host, bearer) != 200, 10, interval=0.25, what="route gone")
    finally:
        watcher.terminate()
        watcher.wait(timeout=10)


def test_routes_go_with_the_environment(
    applied: dict[str, Any], proxy: Proxy, deploy_own: Any
) -> None:
    gone = deploy_own(
        "previewgone",
        {
            "limits": {"cpus": 1, "memory": "512m"},
            "environments": [
                {"sessionId": "gone", "labels": {SCOPE_KEY: RUN_ID}, "ports": [INNER_PORT]}
            ],
        },
    )
    host = f"{INNER_PORT}-gone.{DOMAIN}"
    assert host in [r["host"] for r in proxy.apply()["routes"]]
    gone.destroy()
    after = proxy.apply()
    assert after["changed"] is True
    assert host not in [r["host"] for r in after["routes"]]
    assert proxy.get(host) == 0  # no route: no certificate, no answer


def test_proxy_overhead_against_the_direct_host_port(
    applied: dict[str, Any], proxy: Proxy, stack: Deployed
) -> None:
    """A figure, not a budget (2 shared cores: noisy): median of 20 curl requests each way,
    each a new TLS connection through Caddy against plain HTTP to the host port."""
    host = f"{INNER_PORT}-web.{DOMAIN}"
    bearer = f"Authorization: Bearer {proxy.token(stack, 'web')}"
    port = stack.manifests["web"]["container"]["portMappings"][0]["hostPort"]

    def median(argv: list[str]) -> float:
        times = []
        for _ in range(20):
            started = time.perf_counter()
            subprocess.run(argv, capture_output=True, check=True)
            times.append(time.perf_counter() - started)
        return sorted(times)[len(times) // 2]

    direct = median(["curl", "-s", "-o", "/dev/null", f"http://127.0.0.1:{port}/"])
    proxied = median(
        [
            "curl", "-sk", "-o", "/dev/null", "-H", bearer,
            "--resolve", f"{host}:{proxy.https_port}:127.0.0.1",
            f"https://{host}:{proxy.https_port}/",
        ]
    )  # fmt: skip
    print(
        f"proxy overhead: direct {direct * 1000:.1f} ms, through Caddy (TLS) "
        f"{proxied * 1000:.1f} ms, ratio {proxied / direct:.2f}"
    )
    assert proxied > 0


def test_remove_stops_caddy(applied: dict[str, Any], proxy: Proxy) -> None:
    removed = proxy.apply("--remove")
    assert "caddy stopped" in removed["actions"]
    assert proxy.get(f"{INNER_PORT}-web.{DOMAIN}") == 0
    # Back for any later test of the module (order-independent).
    proxy.apply()
