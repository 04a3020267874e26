"""Manifest contract v1: builder, schema, atomic writer, CLI, and the Modal preview."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from dockyard import manifest as contract
from dockyard import modal_plan
from tests.support.program import REPO

CONTAINER_ID = "3f2a" * 16


def example(**overrides: Any) -> dict[str, Any]:
    manifest = contract.build(
        environment_id="dockyard-dev-dev",
        session_id="dev",
        backend="claude",
        created_at="2026-02-13T00:00:00.123456789Z",
        cwd="/home/u/project",
        image="ghcr.io/acme/dockyard-core:latest",
        container_id=CONTAINER_ID,
        container_name="dockyard-dev-dev",
        ports=[{"internal": 5173, "external": 49154}, {"internal": 3000, "external": 49153}],
        requested_ports=[3000, 5173],
        requested_volumes=["cache:/home/agent/.cache", "/srv/data:/data:ro"],
        requested_env=["NODE_ENV", "ANTHROPIC_API_KEY"],
    )
    manifest.update(overrides)
    return manifest


def test_build_produces_exact_contract() -> None:
    assert example() == {
        "version": 1,
        "environmentId": "dockyard-dev-dev",
        "sessionId": "dev",
        "backend": "claude",
        "createdAt": "2026-02-13T00:00:00.123Z",
        "cwd": "/home/u/project",
        "image": "ghcr.io/acme/dockyard-core:latest",
        "container": {
            "id": CONTAINER_ID,
            "name": "dockyard-dev-dev",
            "cwd": "/workspace",
            "portMappings": [
                {"containerPort": 3000, "hostPort": 49153},
                {"containerPort": 5173, "hostPort": 49154},
            ],
        },
        "requested": {
            "ports": [3000, 5173],
            "volumes": ["cache:/home/agent/.cache", "/srv/data:/data:ro"],
            "env": ["NODE_ENV", "ANTHROPIC_API_KEY"],
        },
    }


@pytest.mark.parametrize(
    ("docker_time", "iso"),
    [
        ("2026-11-22T11:12:50.628123456Z", "2026-11-22T11:12:50.628Z"),
        ("2026-11-22T11:12:50Z", "2026-11-22T11:12:50.000Z"),
        ("2026-11-22T12:12:50.5+01:00", "2026-11-22T11:12:50.500Z"),
    ],
)
def test_created_at_is_utc_with_milliseconds(docker_time: str, iso: str) -> None:
    assert contract.iso_millis(docker_time) == iso


def test_unresolved_host_port_is_refused() -> None:
    with pytest.raises(contract.ManifestError, match="has no host port resolved by the engine"):
        contract.port_mappings([{"internal": 3000, "external": 0}])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"version": 2}, "version: 1 was expected"),
        ({"extra": True}, "(top): Additional properties are not allowed ('extra' was unexpected)"),
        ({"backend": "gemini"}, "backend: 'gemini' is not one of ['claude', 'codex']"),
        ({"createdAt": "2026-02-13T00:00:00Z"}, "createdAt: '2026-02-13T00:00:00Z' does not match"),
        ({"cwd": "relative"}, "cwd: 'relative' does not match '^/'"),
    ],
)
def test_schema_rejects_contract_violations(change: dict[str, Any], message: str) -> None:
    with pytest.raises(contract.ManifestError) as info:
        contract.validate(example(**change), "m.json")
    assert str(info.value).startswith("m.json is not a valid v1 manifest:")
    assert message in str(info.value)


def test_env_values_cannot_enter_the_manifest() -> None:
    manifest = example()
    manifest["requested"]["env"] = ["NODE_ENV=production"]
    with pytest.raises(contract.ManifestError, match="does not match"):
        contract.validate(manifest)


def test_write_is_atomic_and_remove_is_idempotent(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "dir" / "dev.json"
    contract.write(target, example())
    assert json.loads(target.read_text()) == example()
    assert oct(target.stat().st_mode & 0o777) == "0o644"
    assert sorted(p.name for p in target.parent.iterdir()) == ["dev.json"]  # no temp left
    with pytest.raises(contract.ManifestError):
        contract.write(target, example(version=3))
    assert json.loads(target.read_text()) == example()  # old content intact
    assert sorted(p.name for p in target.parent.iterdir()) == ["dev.json"]
    contract.remove(target)
    contract.remove(target)
    assert not target.exists()


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dockyard.manifest", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, **env},
        check=False,
    )


def test_cli_writes_from_environment_and_never_runs_values(tmp_path: Path) -> None:
    hostile = tmp_path / "x$(touch pwned);`touch pwned2`.json"
    result = run_cli(
        "write",
        env={"DOCKYARD_MANIFEST": json.dumps(example()), "DOCKYARD_MANIFEST_PATH": str(hostile)},
    )
    assert result.returncode == 0, result.stderr
    assert hostile.exists()
    assert not (tmp_path / "pwned").exists()
    assert not (REPO / "pwned").exists()
    assert run_cli("remove", env={"DOCKYARD_MANIFEST_PATH": str(hostile)}).returncode == 0
    assert not hostile.exists()


def test_cli_refuses_invalid_input(tmp_path: Path) -> None:
    target = tmp_path / "m.json"
    bad = run_cli(
        "write", env={"DOCKYARD_MANIFEST": '{"version": 1}', "DOCKYARD_MANIFEST_PATH": str(target)}
    )
    assert bad.returncode == 1
    assert bad.stderr.startswith(f"ERROR: {target} is not a valid v1 manifest:")
    assert not target.exists()
    relative = run_cli("write", env={"DOCKYARD_MANIFEST": "{}", "DOCKYARD_MANIFEST_PATH": "m.json"})
    assert relative.returncode == 2
    assert (
        relative.stderr.strip() == "ERROR: DOCKYARD_MANIFEST_PATH='m.json' is not an absolute path"
    )
    usage = run_cli("publish", env={})
    assert usage.returncode == 2


def test_load_names_the_file(tmp_path: Path) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(contract.ManifestError, match=f"{broken}: not JSON"):
        contract.load(broken)
    with pytest.raises(contract.ManifestError, match="no such manifest file"):
        contract.load(tmp_path / "missing.json")


def test_load_checks_again_whatever_changed_in_the_file(tmp_path: Path) -> None:
    # load() skips the schema for a text it already found valid at that path; a file
    # rewritten afterwards (same size, its times set back) is checked again.
    path = tmp_path / "m.json"
    contract.write(path, example())
    before = os.stat(path)
    assert contract.load(path)["sessionId"] == "dev"
    bad = path.read_text().replace('"version": 1', '"version": 9')
    assert len(bad) == len(path.read_text())
    path.write_text(bad)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    with pytest.raises(contract.ManifestError, match="version"):
        contract.load(path)
    contract.write(path, example())
    assert contract.load(path)["version"] == 1


# --- Modal preview (R-MAN-3) -----------------------------------------------------------------


def test_modal_plan_prints_the_equivalent_sandbox(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "dev.json"
    contract.write(path, example())
    assert modal_plan.main([str(path), "--memory", "6g", "--gpu", "all"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == (
        "# Modal sandbox preview for session dev (claude). Preview only: nothing is created."
    )
    for line in [
        'image=modal.Image.from_registry("ghcr.io/acme/dockyard-core:latest"),',
        "encrypted_ports=[3000, 5173],",
        "cpu=4,",
        "memory=6144,",
        "gpu='any',",
        '"/home/agent/.cache": modal.Volume.from_name("cache", create_if_missing=True),',
        'secrets=[modal.Secret.from_name("dockyard-dev-dev")],  # must provide: NODE_ENV, ANTHROPIC_API_KEY',
        "# NOTE: bind mount /srv/data:/data:ro has no Modal equivalent: copy /srv/data into a Volume",
    ]:
        assert line in out, f"missing {line!r} in:\n{out}"
    compile(out, "plan", "exec")  # the preview is valid Python


def test_modal_plan_takes_limits_from_a_stack(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "carol.json"
    contract.write(path, example(sessionId="carol-migrate", image="dockyard-core:team-abc"))
    assert modal_plan.main([str(path), "--stack", str(REPO / "stacks" / "Pulumi.team.yaml")]) == 0
    out = capsys.readouterr().out
    assert "cpu=2," in out
    assert "memory=6144," in out
    assert "# NOTE: image dockyard-core:team-abc is a local tag" in out


def test_modal_plan_rejects_a_bad_manifest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.json"
    path.write_text('{"version": 1}')
    assert modal_plan.main([str(path)]) == 1
    assert capsys.readouterr().err.startswith(f"ERROR: {path} is not a valid v1 manifest:")


def test_docs_example_manifest_is_one_dockyard_writes() -> None:
    doc = (REPO / "docs" / "manifest.md").read_text()
    block = doc.split("<!-- example-manifest -->", 1)[1].split("```json", 1)[1].split("```", 1)[0]
    contract.check_written(json.loads(block), "docs/manifest.md example manifest")


def test_writer_takes_only_what_the_engine_reports_readers_take_the_schema(
    tmp_path: Path,
) -> None:
    short = example()
    short["container"]["id"] = CONTAINER_ID[:12]  # what `docker ps` shows
    contract.validate(short)  # a reader takes it: the schema allows short ids
    target = tmp_path / "dev.json"
    with pytest.raises(contract.ManifestError) as info:
        contract.write(target, short)
    assert str(info.value) == (
        f"{target} is not a manifest dockyard writes:\n  container/id: "
        f"'{CONTAINER_ID[:12]}' is not allowed (allowed: the engine's full container id, "
        "64 lowercase hex digits)"
    )
    assert not target.exists()
    renamed = example(environmentId="dockyard-dev-other")
    with pytest.raises(contract.ManifestError, match=r"environmentId: 'dockyard-dev-other'"):
        contract.check_written(renamed)
    cli = run_cli(
        "write", env={"DOCKYARD_MANIFEST": json.dumps(short), "DOCKYARD_MANIFEST_PATH": str(target)}
    )
    assert cli.returncode == 1
    assert "container/id" in cli.stderr
    assert not target.exists()


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("sessionId",), "dev\n"),
        (("environmentId",), "dockyard-dev-dev\n"),
        (("container", "name"), "dockyard-dev-dev\n"),
        (("container", "id"), CONTAINER_ID + "\n"),
        (("createdAt",), "2026-02-13T00:00:00.123Z\n"),
        (("requested", "env"), ["NODE_ENV\n"]),
    ],
)
def test_schema_refuses_a_trailing_newline(path: tuple[str, ...], value: Any) -> None:
    """Python's `$` also matches before a final newline; the schema's patterns must not."""
    manifest = example()
    node = manifest
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(contract.ManifestError, match="does not match"):
        contract.validate(manifest)
