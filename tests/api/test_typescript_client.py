"""The TypeScript client (components/api/typescript): it type-checks against the types
generated from the committed OpenAPI document, and its Node test (node:test) drives a real
``dockyard serve`` on loopback against the real engine: 20 sessions created at once,
listed, hidden from another tenant's key (404), destroyed.

Node and npm are needed: missing under CI they FAIL (.ci/run installs npm, which brings
node); elsewhere they skip. ``npm ci`` installs the locked packages into the client's own
folder (cache there too: nothing outside the repository)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import docker
import pytest

from tests.api.test_abuse_server import REPO, on_engine, running_server, tenant_names

CLIENT = REPO / "components" / "api" / "typescript"
SCHEMA = CLIENT / "src" / "schema.d.ts"
COUNT = 20


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is not installed: .ci/run installs npm (and node with it)")
        pytest.skip(f"{name} is not installed")
    return found


def _run(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> str:
    result = subprocess.run(
        args, cwd=CLIENT, env=env, capture_output=True, text=True, check=False, timeout=timeout
    )
    assert result.returncode == 0, f"{' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def node_modules() -> Path:
    """The locked packages, installed by ``npm ci`` unless already installed from this lock."""
    npm = _tool("npm")
    _tool("node")
    installed = CLIENT / "node_modules" / ".package-lock.json"
    lock = CLIENT / "package-lock.json"
    if not installed.is_file() or installed.stat().st_mtime < lock.stat().st_mtime:
        _run(npm, "ci", "--no-audit", "--no-fund", "--cache", str(CLIENT / ".npm-cache"))
    return CLIENT / "node_modules"


@pytest.fixture(scope="module")
def types(node_modules: Path) -> Path:
    """src/schema.d.ts generated from the committed document now (it is not tracked: a
    left-over one from an older document must not pass)."""
    SCHEMA.unlink(missing_ok=True)
    _run(
        str(node_modules / ".bin" / "openapi-typescript"),
        str(CLIENT.parent / "openapi.json"),
        "--output",
        str(SCHEMA),
    )
    return SCHEMA


def test_the_client_type_checks_against_the_documents_types(
    node_modules: Path, types: Path
) -> None:
    # The client and its test against the document's types (tsc --checkJs): a changed
    # operation, parameter or body the client or its test still spells the old way fails.
    assert "paths" in types.read_text(), f"{types} declares no paths"
    _run(str(node_modules / ".bin" / "tsc"), "--noEmit", "-p", ".")


@pytest.mark.docker
@pytest.mark.slow
def test_typescript_client_creates_lists_and_destroys_20_sessions_at_once(
    node_modules: Path,
    tmp_path: Path,
    core_image: str,
    docker_client: docker.DockerClient,
) -> None:
    tenants = tenant_names("ts", "tenant", "other")
    with running_server(
        tmp_path,
        core_image,
        docker_client,
        "--rate",
        "200",
        "--burst",
        "200",
        keys=tenants,
        tag="ts",
    ) as server:
        report = tmp_path / "created.json"
        env = {
            **os.environ,
            "DOCKYARD_URL": server.url,
            "DOCKYARD_KEY": server.keys["tenant"],
            "DOCKYARD_OTHER_KEY": server.keys["other"],
            "DOCKYARD_CWD": str(server.project),
            "DOCKYARD_PREFIX": "ts",
            "DOCKYARD_COUNT": str(COUNT),
            "DOCKYARD_REPORT": str(report),
            "NO_PROXY": "127.0.0.1,localhost",
        }
        node = _tool("node")
        test_file = "test/sessions.test.js"
        _run(node, "--test", test_file, env={**env, "DOCKYARD_PHASE": "create"})
        created = json.loads(report.read_text())
        assert sorted(created) == sorted(f"ts{i}" for i in range(COUNT))
        for session, container_id in created.items():
            container = docker_client.containers.get(container_id)
            assert container.status == "running", (session, container.status)
            assert container.labels["dockyard.tenant"] == tenants["tenant"]
            assert container.labels["dockyard.session"] == session
        _run(node, "--test", test_file, env={**env, "DOCKYARD_PHASE": "destroy"})
        assert on_engine(docker_client, tenants["tenant"]) == []
