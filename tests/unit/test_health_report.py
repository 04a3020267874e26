"""The health script's pure parts: refresh reasons, its configuration, and keeping
manifests true to the engine through the host library's validated rewrite (the
engine-backed paths run in tests/roles and tests/reliability)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from tests.support.scripts import load_script

health = load_script("env_health", "dockyard-health.py")
CONFIG = dict(health.DEFAULTS)
OLD_ID, NEW_ID = "a" * 64, "b" * 64
MANIFEST: dict[str, Any] = {
    "version": 1,
    "environmentId": "dockyard-dev-a",
    "sessionId": "a",
    "backend": "claude",
    "createdAt": "2026-11-23T10:00:01.123Z",
    "cwd": "/home/me/shop",
    "image": "dockyard-core:dev",
    "container": {
        "id": OLD_ID,
        "name": "dockyard-dev-a",
        "cwd": "/workspace",
        "portMappings": [
            {"containerPort": 3000, "hostPort": 32768},
            {"containerPort": 8080, "hostPort": 32769},
        ],
    },
    "requested": {"ports": [3000, 8080], "volumes": [], "env": []},
}


@pytest.fixture(params=["jsonschema", "stdlib"])
def validator(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each manifest test runs with both validators the host may use."""
    monkeypatch.setattr(health.host, "VALIDATOR", request.param)
    return str(request.param)


def status(**fields: Any) -> Any:
    base = {
        "name": "dockyard-dev-a",
        "id": OLD_ID,
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


def test_each_threshold_is_a_reason() -> None:
    reasons = health.evaluate(
        status(age_hours=80.0, disk_pct=91.0, memory_pct=95.5, failing_streak=3), CONFIG
    )
    assert reasons == [
        "age 80.0 h > 72 h",
        "disk 91% > 80%",
        "memory 95.5% > 90%",
        "3 failed health checks >= 3",
    ]


def info(container_id: str, ports: dict[str, Any], running: bool = True) -> dict[str, Any]:
    return {
        "Id": container_id,
        "Created": "2026-11-23T10:00:01.123456789Z",
        "State": {"Running": running},
        "NetworkSettings": {"Ports": ports},
    }


def write_manifest(directory: Path, manifest: dict[str, Any] | None = None) -> Path:
    path = directory / "a.json"
    path.write_text(json.dumps(manifest or MANIFEST, indent=2) + "\n")
    return path


def test_manifest_follows_ports_a_restart_reallocated(tmp_path: Path, validator: str) -> None:
    path = write_manifest(tmp_path)
    (tmp_path / "other.json").write_text("not json: skipped, not fatal")
    ports = {
        "3000/tcp": [{"HostIp": "0.0.0.0", "HostPort": "32790"}],
        "8080/tcp": [{"HostIp": "0.0.0.0", "HostPort": "32791"}],
    }
    assert health.sync_manifest(str(tmp_path), OLD_ID, info(OLD_ID, ports)) == "updated"
    manifest = json.loads(path.read_text())
    assert manifest["container"]["portMappings"] == [
        {"containerPort": 3000, "hostPort": 32790},
        {"containerPort": 8080, "hostPort": 32791},
    ]
    assert manifest["createdAt"] == "2026-11-23T10:00:01.123Z"
    assert health.host.manifest_problems(manifest) == []
    # Already true: not rewritten.
    before = path.stat().st_mtime_ns
    assert health.sync_manifest(str(tmp_path), OLD_ID, info(OLD_ID, ports)) == "unchanged"
    assert path.stat().st_mtime_ns == before


def test_manifest_points_at_the_replacement_and_keeps_ports_of_a_stopped_one(
    tmp_path: Path, validator: str
) -> None:
    path = write_manifest(tmp_path)
    assert health.sync_manifest(str(tmp_path), OLD_ID, info(NEW_ID, {}, running=False)) == (
        "updated"
    )
    manifest = json.loads(path.read_text())
    assert manifest["container"]["id"] == NEW_ID
    assert manifest["container"]["portMappings"][0] == {"containerPort": 3000, "hostPort": 32768}
    assert health.sync_manifest(str(tmp_path), "c" * 64, info("d" * 64, {})) == "unchanged"
    assert path.stat().st_mode & 0o777 == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]  # no temporary file left


def test_an_invalid_rewrite_is_refused_and_the_file_left_alone(
    tmp_path: Path, validator: str
) -> None:
    """The health script used to write whatever it had; now the schema decides."""
    broken = copy.deepcopy(MANIFEST)
    broken["requested"]["env"] = ["NOT A NAME"]
    path = write_manifest(tmp_path, broken)
    text = path.read_text()
    ports = {"3000/tcp": [{"HostIp": "0.0.0.0", "HostPort": "32790"}]}
    outcome = health.sync_manifest(str(tmp_path), OLD_ID, info(OLD_ID, ports))
    assert outcome.startswith(f"refused: {path}: {path} is not a valid v1 manifest")
    assert "requested/env/0" in outcome
    assert path.read_text() == text


def test_config_defaults_file_and_flags_in_that_order(tmp_path: Path) -> None:
    path = tmp_path / "health.json"
    path.write_text(json.dumps({"max_disk_pct": 70, "label": "dockyard.stack=team"}))
    config = health.load_config(str(path), {"label": "dockyard.session=a", "refresh": None})
    assert config == {
        **health.DEFAULTS,
        "max_disk_pct": 70.0,
        "label": "dockyard.session=a",
    }


@pytest.mark.parametrize(
    ("written", "message"),
    [
        ({"max_disk_pct": 0}, "max_disk_pct: 0.0 is not allowed (allowed: a positive number)"),
        ({"max_disk_pct": "80"}, 'max_disk_pct: "80" is not allowed (allowed: a number)'),
        ({"refresh": "yes"}, 'refresh: "yes" is not allowed (allowed: true or false)'),
        ({"max_failed_checks": 2.5}, "max_failed_checks: 2.5 is not allowed (allowed: a whole"),
        ({"max_age": 1}, "unknown keys ['max_age'] (allowed: label, log_format, manifest_dir,"),
        ({"label": "x=1; rm -rf /"}, 'label selector: "x=1; rm -rf /" is not allowed'),
    ],
)
def test_bad_config_is_refused_naming_key_value_and_allowed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], written: dict, message: str
) -> None:
    path = tmp_path / "health.json"
    path.write_text(json.dumps(written))
    assert health.main(["--config", str(path), "--check-config"]) == 2
    assert message in capsys.readouterr().err


def test_check_config_accepts_what_the_role_writes(tmp_path: Path) -> None:
    path = tmp_path / "health.json"
    path.write_text(json.dumps({**health.DEFAULTS, "manifest_dir": "/srv/m"}))
    assert health.main(["--config", str(path), "--check-config"]) == 0


def test_a_remote_docker_host_is_refused(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DOCKER_HOST", "tcp://10.0.0.5:2375")
    assert health.main(["--check-config"]) == 2
    assert "DOCKER_HOST=tcp://10.0.0.5:2375 is not a unix socket" in capsys.readouterr().err


def test_metrics_are_prometheus_text_with_escaped_labels() -> None:
    from datetime import UTC, datetime

    status = health.Status(
        name="dockyard-dev-a",
        id="a" * 64,
        status="running",
        health="healthy",
        failing_streak=0,
        age_hours=1.5,
        memory_used_mb=100.0,
        memory_limit_mb=1024.0,
        memory_pct=9.8,
        disk_pct=None,
        oom_kills=2,
        restarts=1,
        labels={"dockyard.session": 'a"b\\c', "dockyard.stack": "dev"},
    )
    text = health.metrics([status], datetime(2026, 1, 1, tzinfo=UTC))
    labels = 'environment="dockyard-dev-a",session="a\\"b\\\\c",stack="dev",tenant=""'
    assert f"dockyard_environment_up{{{labels}}} 1.0\n" in text
    assert f"dockyard_environment_memory_limit_bytes{{{labels}}} 1073741824.0\n" in text
    assert f"dockyard_environment_oom_kills_total{{{labels}}} 2.0\n" in text
    assert f"dockyard_environment_restarts_total{{{labels}}} 1.0\n" in text
    assert "# TYPE dockyard_environment_oom_kills_total counter" in text
    assert "dockyard_environment_disk_used_ratio{" not in text  # not measured: no sample
    assert text.endswith("\n")


def test_an_engine_that_does_not_answer_is_an_error_not_a_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path / 'no-engine.sock'}")
    report = tmp_path / "report.json"
    assert health.main(["--report-file", str(report)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("ERROR: cannot read the environments: GET /containers/json")
    assert not report.exists()
