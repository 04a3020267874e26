"""Examples in README.md and docs/ are run, not just shown: the extension Dockerfile of
docs/core-image.md builds on top of the core image and keeps its contract; the README's
install lines work from a clean virtualenv outside the repository. (Which shell blocks
run where, and why the others cannot: tests/unit/test_docs_match_code.py.)"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import docker
import pytest

from tests.support.images import REPO, build_image
from tests.unit.test_docs_match_code import ALL_BLOCKS, run_block

pytestmark = [pytest.mark.slow]


def doc_block(doc: str, marker: str, language: str) -> str:
    text = (REPO / "docs" / doc).read_text()
    after = text.split(f"<!-- {marker} -->", 1)[1]
    match = re.search(rf"```{language}\n(.*?)```", after, re.S)
    assert match, f"no {language} block after {marker} in docs/{doc}"
    return match.group(1)


@pytest.mark.docker
def test_extension_example_builds_on_the_core_image_and_keeps_its_contract(
    docker_client: docker.DockerClient, core_image: str, tmp_path: Path
) -> None:
    context = tmp_path / "extension"
    context.mkdir()
    (context / "Dockerfile").write_text(
        doc_block("core-image.md", "extension-example", "dockerfile")
    )
    image = build_image(
        docker_client, "dockyard-extension", {"DOCKYARD_IMAGE": core_image}, context=context
    )
    attrs = docker_client.images.get(image).attrs["Config"]
    base = docker_client.images.get(core_image).attrs["Config"]
    # The contract the components rely on is inherited untouched.
    assert attrs["User"] == "1000:1000"
    assert attrs["Entrypoint"] == base["Entrypoint"]
    assert attrs["Healthcheck"] == base["Healthcheck"]
    output = docker_client.containers.run(
        image,
        entrypoint=["bash", "-c"],
        command=[
            "id -un; jq --version; command -v mcp-server-filesystem;"
            " timeout 10 mcp-server-filesystem /workspace </dev/null 2>&1 | head -1; sudo -n true 2>&1 || echo no-sudo"
        ],
        remove=True,
        labels={"dockyard.test": "1"},
    ).decode()
    lines = output.splitlines()
    assert lines[0] == "agent"
    assert lines[1].startswith("jq-1.6")
    assert lines[2] == "/usr/bin/mcp-server-filesystem"
    assert "MCP Filesystem Server running on stdio" in lines[3]
    assert lines[-1] == "no-sudo"


def test_extension_example_is_hadolint_clean() -> None:
    dockerfile = doc_block("core-image.md", "extension-example", "dockerfile")
    run = subprocess.run(
        [str(REPO / ".venv" / "bin" / "hadolint"), "--no-color", "-"],
        input=dockerfile,
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout == ""


def _checkout_copy(target: Path) -> Path:
    """The checkout's files (tracked and new, not ignored) copied to ``target``: builds
    run there, never leaving build/ or egg-info in the shared tree."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    )
    for name in filter(None, listed.stdout.decode().split("\0")):
        if (REPO / name).is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, target / name)
    return target


def _readme_stack_example() -> str:
    """The README's stacks/Pulumi.dev.yaml example (the YAML block after its name)."""
    readme = (REPO / "README.md").read_text()
    after = readme.split("`stacks/Pulumi.dev.yaml`:", 1)[1]
    (block,) = [b for b in ALL_BLOCKS if b.page.name == "README.md" and b.text in after][:1]
    return block.text


def test_readme_install_lines_work_from_a_clean_virtualenv(
    tmp_path: Path, record_property: pytest.RecordProperty
) -> None:
    """The README's install block, line by line, as a user runs it outside the repository:
    a new virtualenv, the release wheel (built here once from the checkout, under the name
    the README gives it), `dockyard --help` and `dockyard validate` on the README's stack
    example; then the checkout line (`pip install ./`) in another new virtualenv. The git
    URL line cannot reach GitHub from here: it must name this repository at the version's
    tag. The time from the new virtualenv to `validate` passing is recorded (not judged)."""
    version = (REPO / "components" / "VERSION").read_text().strip()
    lines = [line.split("  #", 1)[0].strip() for line in run_block("install").text.splitlines()]
    kinds = {
        "venv": [x for x in lines if x.startswith("python3 -m venv ")],
        "wheel": [x for x in lines if re.fullmatch(r"pip install dockyard-\S+\.whl", x)],
        "checkout": [x for x in lines if x == "pip install ./"],
        "git": [x for x in lines if x.startswith('pip install "git+https://')],
        "help": [x for x in lines if x == "dockyard --help"],
        "validate": [x for x in lines if x.startswith("dockyard validate --stack ")],
    }
    assert all(len(v) == 1 for v in kinds.values()), kinds
    assert sum(len(v) for v in kinds.values()) == len(lines), "a line this test does not run"
    ((venv,), (wheel_line,), (checkout_line,), (git_line,), (help_line,), (validate_line,)) = (
        kinds.values()
    )
    repository = re.search(r"^repository: (\S+)$", (REPO / "galaxy.yml").read_text(), re.M)
    assert repository is not None
    assert git_line == f'pip install "git+{repository.group(1)}@v{version}"'

    checkout = _checkout_copy(tmp_path / "checkout")
    dist = tmp_path / "dist"
    subprocess.run(
        [str(REPO / ".venv" / "bin" / "python"), "-m", "pip", "wheel", "--quiet", "--no-deps",
         "--wheel-dir", str(dist), str(checkout)],
        check=True, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    (built,) = dist.glob("dockyard-*.whl")
    wheel_name = wheel_line.split()[-1]
    assert built.name == wheel_name, "the README names the wheel a release builds"

    stack_file = validate_line.split()[-1]
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("VIRTUAL_ENV", "PYTHONPATH") and not k.startswith("PULUMI_")
    }
    env["PATH"] = os.pathsep.join(
        p for p in env.get("PATH", "").split(os.pathsep) if not p.startswith(str(REPO))
    )

    def run(script: list[str], cwd: Path, home: Path) -> subprocess.CompletedProcess[str]:
        home.mkdir(parents=True, exist_ok=True)
        return subprocess.run(
            ["bash", "-euo", "pipefail", "-c", "\n".join(script)],
            cwd=cwd,
            env={**env, "HOME": str(home)},
            capture_output=True,
            text=True,
            timeout=1800,
            check=False,
        )

    user = tmp_path / "user"
    (user / stack_file).parent.mkdir(parents=True)
    (user / stack_file).write_text(_readme_stack_example())
    shutil.copy2(built, user / wheel_name)
    started = time.monotonic()
    first = run([venv, wheel_line, help_line, validate_line], user, tmp_path / "home-wheel")
    seconds = time.monotonic() - started
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "validate" in first.stdout
    assert (
        str(tmp_path / "home-wheel" / ".venvs" / "dockyard")
        in run([venv, "command -v dockyard"], user, tmp_path / "home-wheel").stdout
    )
    record_property("readme_wheel_install_to_validate_seconds", round(seconds, 1))
    (tmp_path.parent / "readme-install-timing.json").write_text(
        json.dumps({"wheel_install_to_validate_seconds": round(seconds, 1)})
    )
    print(f"README install: clean virtualenv to `dockyard validate` passing in {seconds:.1f} s")

    (checkout / stack_file).write_text(_readme_stack_example())
    second = run([venv, checkout_line, help_line, validate_line], checkout, tmp_path / "home-src")
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
