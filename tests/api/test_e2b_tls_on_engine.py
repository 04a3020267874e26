"""The public ``e2b`` Python SDK, unchanged, against ``dockyard serve`` over TLS
(``--tls-cert/--tls-key``), both ways the SDK reaches a sandbox: the ``E2B_SANDBOX_URL``
header form, and the host form it builds itself, ``https://<port>-<id>.<domain>``, where
the certificate must cover ``*.<domain>`` (docs/e2b.md). The SDK trusts the test's own
authority through ``SSL_CERT_FILE`` (what a user with a private CA sets) and no other
setting. The wildcard DNS record a deployment has is stood in for by a forward proxy
(the SDK's own ``proxy`` option) that connects ``*.e2b.test`` to loopback; TLS stays end
to end, so the SDK checks the certificate for the sandbox's own host name."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import pytest

from dockyard.api.store import default_url
from tests.support.connect_proxy import wildcard_proxy
from tests.support.engine import RUN_ID
from tests.support.harness_home import make_home, sweep_tenant
from tests.support.server import create_key, serve
from tests.support.upstream import make_ca_and_server_cert

pytestmark = [pytest.mark.docker, pytest.mark.slow]

DOMAIN = "e2b.test"
API_HOST = f"api.{DOMAIN}"


@dataclass
class TlsServer:
    port: int
    key: str
    ca: Path
    """The authority's certificate: what a client that trusts the server trusts."""

    @property
    def api_url(self) -> str:
        return f"https://{API_HOST}:{self.port}"


@pytest.fixture(scope="module")
def tls_server(
    docker_client: docker.DockerClient, core_image: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TlsServer]:
    base = tmp_path_factory.mktemp("e2b-tls")
    tls = base / "tls"
    tls.mkdir()
    make_ca_and_server_cert(tls, API_HOST, f"*.{API_HOST}", addresses=("127.0.0.1",))
    home = make_home(base, core_image, {})
    store = default_url(home.state)
    env = home.env()
    tenant = f"t{RUN_ID[:8]}"
    key = create_key(env, store, "--tenant", tenant)["key"]
    args = ("--tls-cert", str(tls / "upstream.pem"), "--tls-key", str(tls / "upstream.key"))
    try:
        with serve(env, store, base / "server.log", *args) as serving:
            assert serving.url.startswith("https://127.0.0.1:"), serving.url
            yield TlsServer(int(serving.url.rsplit(":", 1)[1]), key, tls / "ca.pem")
    finally:
        sweep_tenant(docker_client, tenant)


# The SDK's program, in a process of its own as an application's would be: the SDK keeps
# one HTTP transport per process, and its trust store is read when that is made.
PROGRAM = """
import json, os, sys
from e2b import Sandbox
key, loopback, api_url, proxy, run = sys.argv[1:6]
try:
    sbx = Sandbox.create("base", timeout=300, api_key=key, api_url=loopback, sandbox_url=loopback)
except Exception as error:
    print(json.dumps({"refused": str(error)}))
    sys.exit(0)
try:
    seen = []
    ran = sbx.commands.run("echo over-tls", on_stdout=seen.append)
    sbx.files.write("tls.txt", "written " + run)
    # The host form: no sandbox URL, so the SDK builds <port>-<id>.<domain> from the
    # domain the server answered (the host name it was reached by) and reaches the
    # sandbox's daemon by that name, over TLS with the wildcard certificate.
    by_host = Sandbox.connect(sbx.sandbox_id, api_key=key, api_url=api_url, proxy=proxy)
    print(json.dumps({
        "stdout": ran.stdout, "exit": ran.exit_code, "seen": "".join(seen),
        "host": by_host.get_host(49983), "id": sbx.sandbox_id,
        "read": by_host.files.read("tls.txt"),
        "user": by_host.commands.run("id -un").stdout.strip(),
    }))
finally:
    sbx.kill()
"""


def _program(tls_server: TlsServer, proxy: str, trusted: bool) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k not in ("SSL_CERT_FILE", "SSL_CERT_DIR")}
    if trusted:
        env["SSL_CERT_FILE"] = str(tls_server.ca)
    loopback = f"https://127.0.0.1:{tls_server.port}"
    args = [tls_server.key, loopback, tls_server.api_url, proxy, RUN_ID]
    ran = subprocess.run(
        [sys.executable, "-c", PROGRAM, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert ran.returncode == 0, ran.stderr[-3000:]
    return dict(json.loads(ran.stdout.strip().splitlines()[-1]))


def test_sdk_over_tls_by_header_and_by_host_name(tls_server: TlsServer) -> None:
    with wildcard_proxy(DOMAIN) as proxy:
        # Without the authority the SDK's connection is refused: the server really is
        # TLS with this certificate (not plain HTTP, not one a system store trusts).
        untrusted = _program(tls_server, proxy, trusted=False)
        assert "certificate" in untrusted.get("refused", "").lower(), untrusted
        got = _program(tls_server, proxy, trusted=True)
    assert "refused" not in got, got["refused"]
    assert (got["exit"], got["stdout"], got["seen"]) == (0, "over-tls\n", "over-tls\n")
    assert got["host"] == f"49983-{got['id']}.{API_HOST}:{tls_server.port}"
    assert got["read"] == f"written {RUN_ID}"
    assert got["user"] == "agent"
