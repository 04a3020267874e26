"""Examples in docs/ are run, not just shown: the extension Dockerfile of
docs/core-image.md builds on top of the core image and keeps its contract."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import docker
import pytest

from tests.support.images import REPO, build_image

pytestmark = [pytest.mark.docker, pytest.mark.slow]


def doc_block(doc: str, marker: str, language: str) -> str:
    text = (REPO / "docs" / doc).read_text()
    after = text.split(f"<!-- {marker} -->", 1)[1]
    match = re.search(rf"```{language}\n(.*?)```", after, re.S)
    assert match, f"no {language} block after {marker} in docs/{doc}"
    return match.group(1)


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
