"""The GPU variant's wiring: images/core built with images/gpu/variant.env's build args.

CI cannot pull nvidia/cuda and has no GPU driver, so the base is a stand-in with the
traits that matter (uid 1000 taken by `ubuntu`, NVIDIA runtime variables); see
images/gpu/README.md for the real build.
"""

from __future__ import annotations

from pathlib import Path

import docker
import pytest

from dockyard.image import variant_build_args
from tests.support.images import build_image

pytestmark = [pytest.mark.docker, pytest.mark.slow]

STANDIN = Path(__file__).parent / "cuda-standin"


def test_variant_env_selects_a_cuda_base() -> None:
    args = variant_build_args("gpu")
    assert set(args) == {"BASE_IMAGE"}
    assert args["BASE_IMAGE"].startswith("nvidia/cuda:")
    assert "-runtime-ubuntu" in args["BASE_IMAGE"]


def test_core_dockerfile_builds_on_a_cuda_like_base(docker_client: docker.DockerClient) -> None:
    standin = build_image(docker_client, "dockyard-cuda-standin", context=STANDIN)
    gpu = build_image(
        docker_client, "dockyard-gpu", {**variant_build_args("gpu"), "BASE_IMAGE": standin}
    )
    script = (
        "id -un; id -u; claude --version; codex --version; "
        "echo $NVIDIA_VISIBLE_DEVICES $NVIDIA_DRIVER_CAPABILITIES; "
        "getent passwd ubuntu || echo no-ubuntu-user; "
        "ls /usr/local/bin/dockyard-entrypoint /usr/local/bin/dockyard-healthcheck "
        "/usr/local/bin/git-askpass"
    )
    out = docker_client.containers.run(gpu, ["bash", "-c", script], entrypoint=[], remove=True)
    lines = out.decode().splitlines()
    assert lines[:2] == ["agent", "1000"]
    assert "(Claude Code)" in lines[2]
    assert lines[3].startswith("codex-cli ")
    assert lines[4] == "all compute,utility"
    assert lines[5] == "no-ubuntu-user"
    config = docker_client.images.get(gpu).attrs["Config"]
    assert config["Healthcheck"]["Test"] == ["CMD", "/usr/local/bin/dockyard-healthcheck"]
    assert config["Entrypoint"] == ["/usr/local/bin/dockyard-entrypoint"]
