"""The `dockyard` wheel, as a new user gets it: built, installed into a fresh virtualenv
outside this repository, imported as `dockyard`, and used by a small Pulumi program
(under mocks that build the declared image on the real engine) — the image's build
context must come from the wheel, not from a checkout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import docker
import pytest

pytestmark = [pytest.mark.docker, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]

PROGRAM = textwrap.dedent(
    """
    import json, os, sys
    import docker, pulumi
    from pulumi.runtime import mocks, set_mocks
    from pulumi.runtime.stack import run_pulumi_func
    from pulumi.runtime.sync_await import _sync_await

    client = docker.from_env(timeout=600)
    built = {}

    class BuildingMocks(pulumi.runtime.Mocks):
        def new_resource(self, args):
            if args.typ == "docker:index/image:Image":
                build = args.inputs["build"]
                built["context"] = build["context"]
                for chunk in client.api.build(path=build["context"], tag=args.inputs["imageName"],
                                              buildargs=build.get("args") or {}, rm=True, decode=True):
                    if "error" in chunk:
                        raise RuntimeError(chunk["error"])
                return args.name, {**args.inputs, "repoDigest": ""}
            return args.name, dict(args.inputs)

        def call(self, args):
            return {}, None

    set_mocks(BuildingMocks(), project="wheel", stack="check", preview=False)

    import dockyard
    from dockyard import AgentEnvironment, AgentImage, AgentImageArgs, Manifest  # the public API

    def program():
        image = AgentImage("image", AgentImageArgs(tag_prefix="wheel", extra_ca=os.environ.get("EXTRA_CA") or None))
        built["image"] = image.image_id

    _sync_await(run_pulumi_func(program))
    tag = _sync_await(pulumi.Output.from_input(built["image"]).future())
    client.images.get(tag)
    print(json.dumps({"version": dockyard.__version__, "file": dockyard.__file__,
                      "context": built["context"], "tag": tag}))
    """
)


def test_the_wheel_installs_and_builds_the_image_from_its_own_context(
    tmp_path_factory: pytest.TempPathFactory, docker_client: docker.DockerClient
) -> None:
    work = tmp_path_factory.mktemp("wheel")
    dist = work / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(REPO)],
        check=True,
        capture_output=True,
    )
    (wheel,) = dist.glob("dockyard-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "dockyard/py.typed" in names
    assert "dockyard/sessions/__init__.py" in names
    assert "dockyard/cli/__init__.py" in names
    assert "dockyard/_images/core/Dockerfile" in names
    assert "dockyard/_images/versions.env" in names
    assert not [n for n in names if n.startswith("components/") or n.endswith((".crt", ".pem"))]
    assert not [n for n in names if n.startswith(("tests/", "roles/", "benchmarks/"))]
    version = (REPO / "components" / "VERSION").read_text().strip()
    assert wheel.name.startswith(f"dockyard-{version}-")

    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    install = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", str(wheel)],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    # A new user's project: outside the repository, with a `components/` folder of its own.
    project = work / "project"
    (project / "components").mkdir(parents=True)
    (project / "components" / "__init__.py").write_text("OWN = True\n")
    (project / "program.py").write_text(PROGRAM)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["EXTRA_CA"] = os.environ.get("DOCKYARD_EXTRA_CA", "")
    env["XDG_CACHE_HOME"] = str(work / "cache")
    result = subprocess.run(
        [str(venv / "bin" / "python"), "program.py"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["version"] == version
    assert report["file"].startswith(str(venv))
    assert report["context"].startswith((str(venv), str(work / "cache")))
    assert report["tag"].startswith("dockyard-core:wheel-")
    labels = docker_client.images.get(report["tag"]).labels
    assert labels.get("dockyard.claude-code.version")
    # The user's own components/ is theirs: the wheel did not shadow it.
    own = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import components; print(components.OWN)"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert own.stdout.strip() == "True"


def test_the_console_script_is_installed_with_the_wheel() -> None:
    script = Path(sys.executable).with_name("dockyard")
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, check=False)
    assert result.returncode == 0
    assert "validate" in result.stdout
