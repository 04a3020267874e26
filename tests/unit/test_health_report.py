"""The health script's pure parts: refresh reasons and keeping manifests true to the
engine (the engine-backed paths run in tests/roles and tests/reliability)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.support.scripts import load_script

health = load_script("env_health", "dockyard-health.py")
CONFIG = dict(health.DEFAULTS)


def status(**fields: Any) -> Any:
    base = {
        "name": "dockyard-dev-a",
        "id": "a" * 64,
        "status": "running",
        "health": "healthy",
        "failing_streak": 0,
        "age_hours": 1.0,
        "memory_used_mb": 10.0,
        "memory_limit_mb": 100.0,
        "memory_pct": 10.0,
        "disk_pct": 10.0,
    }
    return health.Status(**{**base, **fields})


def test_killed_environment_is_a_reason_a_clean_stop_is_not() -> None:
    assert health.evaluate(status(status="exited", exit_code=137), CONFIG) == [
        "exited with code 137 (killed or crashed; a clean stop exits 0)"
    ]
    assert health.evaluate(status(status="exited", exit_code=0), CONFIG) == []


def info(container_id: str, ports: dict[str, Any], running: bool = True) -> dict[str, Any]:
    return {
        "Id": container_id,
        "Created": "2026-11-23T10:00:01.123456789Z",
        "State": {"Running": running},
        "NetworkSettings": {"Ports": ports},
    }


def write_manifest(directory: Path, container_id: str) -> Path:
    path = directory / "a.json"
    path.write_text(
        json.dumps(
            {
                "createdAt": "2026-11-23T10:00:01.123Z",
                "container": {
                    "id": container_id,
                    "portMappings": [
                        {"containerPort": 3000, "hostPort": 32768},
                        {"containerPort": 8080, "hostPort": 32769},
                    ],
                },
            }
        )
    )
    return path


def test_manifest_follows_ports_a_restart_reallocated(tmp_path: Path) -> None:
    path = write_manifest(tmp_path, "a" * 64)
    ports = {
        "3000/tcp": [{"HostIp": "0.0.0.0", "HostPort": "32790"}],
        "8080/tcp": [{"HostIp": "0.0.0.0", "HostPort": "32791"}],
    }
    assert health.sync_manifest(str(tmp_path), "a" * 64, info("a" * 64, ports)) == str(path)
    manifest = json.loads(path.read_text())
    assert manifest["container"]["portMappings"] == [
        {"containerPort": 3000, "hostPort": 32790},
        {"containerPort": 8080, "hostPort": 32791},
    ]
    assert manifest["createdAt"] == "2026-11-23T10:00:01.123Z"
    # Already true: not rewritten.
    assert health.sync_manifest(str(tmp_path), "a" * 64, info("a" * 64, ports)) is None


def test_manifest_points_at_the_replacement_and_keeps_ports_of_a_stopped_one(
    tmp_path: Path,
) -> None:
    path = write_manifest(tmp_path, "a" * 64)
    assert health.sync_manifest(str(tmp_path), "a" * 64, info("b" * 64, {}, running=False))
    manifest = json.loads(path.read_text())
    assert manifest["container"]["id"] == "b" * 64
    assert manifest["container"]["portMappings"][0] == {"containerPort": 3000, "hostPort": 32768}
    assert health.sync_manifest(str(tmp_path), "c" * 64, info("d" * 64, {})) is None
