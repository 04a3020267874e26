"""roles/control_plane (playbooks/control_plane.yml) on a host with systemd as PID 1
(tests/support/systemd_host.py): the dockyard package is this checkout and its Python,
mounted read-only at the same paths; Caddy comes from the Debian mirror.

What must hold: both units enabled and running, the server on loopback only, the key
store's directory root's with mode 0700 and the environment file root's with 0600; a key
made on the host works through Caddy with TLS (Caddy's internal CA, the client verifying
against its root certificate) and a request without one answers 401 through it; the second
run changes nothing; a changed limit restarts the server (not Caddy); malformed variables are refused all at once before anything changes, never
echoing the key store URL."""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import pytest

from tests.support import systemd_host
from tests.support.ansible import REPO, VENV_BIN, PlaybookRun, run_playbook
from tests.support.engine import require_docker
from tests.support.systemd_host import SystemdHost

pytestmark = [pytest.mark.docker, pytest.mark.slow]

DOMAIN = "dockyard-api.test"
HTTPS_PORT = 8443
KEY_STORE_DIR = "/var/lib/dockyard/control-plane"
STORE = f"sqlite:///{KEY_STORE_DIR}/api-keys.db"
CADDY_ROOT = "/var/lib/dockyard/control-plane-caddy/caddy/pki/authorities/local/root.crt"
VARIABLES: dict[str, Any] = {
    "control_plane_domain": DOMAIN,
    "control_plane_tls": "internal",
    "control_plane_executable": str(VENV_BIN / "dockyard"),
    "control_plane_http_port": 8080,
    "control_plane_https_port": HTTPS_PORT,
    "control_plane_environment": {"DOCKYARD_STATE_DIR": "/var/lib/dockyard/api-sessions"},
    # This machine's Caddy (CI installs Debian's package), mounted: apt in the test host
    # would cost a minute and more of CI; Debian's package path is host_common's.
    "control_plane_caddy_package": "",
    "control_plane_caddy_binary": "/usr/local/bin/caddy",
}
UNITS = ("dockyard-control-plane.service", "dockyard-control-plane-caddy.service")
# Run inside the host with the checkout's Python: dockyard.client through Caddy.
CLIENT = """
import json, sys
from dockyard.client import Client
from dockyard.errors import DockyardError
url, key, ca = sys.argv[1:4]
out = {}
with Client(url, key, verify=ca, timeout=30) as dock:
    out["page"] = dock.list_page()
for name, (k, v) in {"nokey": (None, ca), "unverified": (key, True)}.items():
    try:
        with Client(url, k, verify=v, timeout=30) as dock:
            dock.list_page()
        out[name] = None
    except DockyardError as error:
        out[name] = [type(error).__name__, error.status, error.problems]
print(json.dumps(out))
"""


def _mounts() -> dict[str, dict[str, str]]:
    """The checkout (with its virtualenv), the Python it was made from and this machine's
    caddy, read-only."""
    caddy = shutil.which("caddy")
    if caddy is None:
        message = "caddy is not installed (apt-get install caddy; .ci/run does)"
        if require_docker():
            pytest.fail(message)
        pytest.skip(message)
    paths = {REPO, Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve()}
    mounts = {
        str(path): {"bind": str(path), "mode": "ro"}
        for path in paths
        if path != Path("/usr") and not (path != REPO and path.is_relative_to(REPO))
    }
    mounts[str(Path(caddy).resolve())] = {"bind": "/usr/local/bin/caddy", "mode": "ro"}
    return mounts


def converge(host: SystemdHost, check: bool = True, **overrides: Any) -> PlaybookRun:
    return run_playbook(
        "control_plane.yml",
        inventory=host.inventory,
        extra_vars={**VARIABLES, **overrides},
        check=check,
    )


@dataclass
class Converged:
    host: SystemdHost
    first: PlaybookRun
    second: PlaybookRun


@pytest.fixture(scope="module")
def converged(
    docker_client: docker.DockerClient, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Converged]:
    for host in systemd_host.started(
        docker_client, tmp_path_factory.mktemp("control-plane"), "dockyard_control_plane", _mounts()
    ):
        first = converge(host)
        second = converge(host)
        yield Converged(host, first, second)


def _main_pid(host: SystemdHost, unit: str) -> str:
    return host.exec("systemctl", "show", "-p", "MainPID", "--value", unit)[1].strip()


def test_the_services_run_under_systemd_and_the_second_run_changes_nothing(
    converged: Converged,
) -> None:
    host = converged.host
    assert (
        "control_plane : Ensure the server and Caddy are enabled and running (systemd)"
        in converged.first.tasks_changed()
    )
    assert set(converged.second.changed().values()) == {0}, converged.second.tasks_changed()
    for unit in UNITS:
        assert host.exec("systemctl", "is-enabled", unit, check=False)[1].strip() == "enabled"
        assert host.exec("systemctl", "is-active", unit, check=False)[1].strip() == "active"
    listening = host.sh("ss -Hltn")
    assert "127.0.0.1:8787 " in listening
    assert "0.0.0.0:8787 " not in listening
    assert "*:8787 " not in listening
    assert f":{HTTPS_PORT} " in listening
    # Caddy runs as its own user, the server as root.
    caddy = _main_pid(host, UNITS[1])
    assert host.sh(f"ps -o user= -p {caddy}").strip() == "caddy"


def test_the_key_store_directory_is_roots_alone(converged: Converged) -> None:
    host = converged.host
    modes = host.sh(
        f"stat -c '%U:%G %a %n' {KEY_STORE_DIR} /etc/dockyard/control-plane/server.env"
    ).splitlines()
    assert modes == [
        f"root:root 700 {KEY_STORE_DIR}",
        "root:root 600 /etc/dockyard/control-plane/server.env",
    ]


def test_a_key_works_through_caddy_with_tls(converged: Converged) -> None:
    host = converged.host
    made = host.exec(
        str(VENV_BIN / "dockyard"), "keys", "create", "--tenant", "acme", "--json",
        "--key-store", STORE,
    )[1]  # fmt: skip
    key = json.loads(made.splitlines()[-1])["key"]
    host.sh(f"grep -q ' {DOMAIN}$' /etc/hosts || echo '127.0.0.1 {DOMAIN}' >> /etc/hosts")
    code, output = host.exec(
        str(VENV_BIN / "python"),
        "-c",
        CLIENT,
        f"https://{DOMAIN}:{HTTPS_PORT}",
        key,
        CADDY_ROOT,
        check=False,
    )
    assert code == 0, output
    answer = json.loads(output.splitlines()[-1])
    assert answer["page"] == {"items": [], "total": 0, "offset": 0, "next": None}
    assert answer["nokey"][:2] == ["Unauthorized", 401]
    # Without Caddy's root the certificate is not trusted: TLS, not plain HTTP.
    assert answer["unverified"][:2] == ["Failed", 0]
    assert key not in output.replace(made, "")
    # The request went through Caddy to the server: its audit line names the key.
    key_id = json.loads(made.splitlines()[-1])["id"]
    audit = host.sh("cat /var/lib/dockyard/api-sessions/audit.jsonl")
    assert f'"actor": "key:{key_id}"' in audit


def test_a_changed_limit_restarts_the_server_only_and_malformed_values_change_nothing(
    converged: Converged,
) -> None:
    host = converged.host
    before = {unit: _main_pid(host, unit) for unit in UNITS}
    changed = converge(host, control_plane_burst=41)
    # The unit, then its handler (reported under the flush).
    assert changed.tasks_changed() == [
        "control_plane : Ensure the server's systemd unit is in place",
        "control_plane : Apply changed configuration now",
    ]
    after = {unit: _main_pid(host, unit) for unit in UNITS}
    assert after[UNITS[0]] != before[UNITS[0]]
    assert after[UNITS[1]] == before[UNITS[1]]
    assert "--burst 41" in host.sh(f"cat /proc/{after[UNITS[0]]}/cmdline | tr '\\0' ' '")

    secret_url = "postgresql://u:hunter2-canary@db/x y"
    # The playbook's check of every role variable's format, before any change.
    refused = converge(
        host,
        check=False,
        control_plane_domain="Not A Domain",
        control_plane_https_port=70000,
        control_plane_burst=41,
    )
    assert refused.rc != 0
    for line in (
        'control_plane_domain: "Not A Domain" is not allowed (allowed: a DNS name',
        'control_plane_https_port: "70000" is not allowed (allowed: a TCP port 1-65535)',
    ):
        assert line in refused.output, refused.output[-3000:]
    # The role's own checks (also when the role is used without the playbook): what
    # depends on another variable, and values that are never shown.
    refused = converge(
        host,
        check=False,
        control_plane_tls="files",
        control_plane_key_store_url=secret_url,
        control_plane_environment={"lower": "x", "OK": "it's"},
        control_plane_burst=41,
    )
    assert refused.rc != 0
    for line in (
        "control_plane_tls_cert, control_plane_tls_key: missing",
        "control_plane_key_store_url: not allowed",
        'control_plane_environment: "lower" is not allowed as a name',
        "control_plane_environment.OK: the value has a newline, quote or backslash",
    ):
        assert line in refused.output, refused.output[-3000:]
    assert "hunter2-canary" not in refused.output
    assert "it's" not in refused.output
    assert refused.tasks_changed() == []
    assert _main_pid(host, UNITS[0]) == after[UNITS[0]]
