"""Fixtures shared by every test directory. Docker-backed fixtures connect lazily, so
unit tests run on machines without an engine."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import docker
import pytest

from tests.support.engine import RUN_ID, connect, remove_labelled
from tests.support.images import build_image
from tests.support.stacks import Deployed


@pytest.fixture(scope="session")
def docker_client() -> Iterator[docker.DockerClient]:
    client = connect()
    try:
        yield client
    finally:
        remove_labelled(client)
        client.close()


@pytest.fixture(scope="session")
def core_image(docker_client: docker.DockerClient) -> str:
    """The core image built from images/core with its default build args."""
    return build_image(docker_client, "dockyard-core")


@pytest.fixture(scope="module")
def deploy(
    docker_client: docker.DockerClient, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    """Factory: deploy(label, values, secrets) -> Deployed, torn down after the module."""
    deployed: list[Deployed] = []

    def make(
        label: str, values: Mapping[str, Any], secrets: Mapping[str, str] | None = None
    ) -> Deployed:
        cwd = tmp_path_factory.mktemp(f"project-{label}")
        # Each run gets its own stack name, so nothing collides with a user's stacks.
        stack = f"it{label}{RUN_ID[:6]}"
        all_values = {"cwd": str(cwd), "image": {"tag": "it"}, **values}
        target = Deployed(docker_client, stack, cwd, all_values, dict(secrets or {}))
        deployed.append(target)
        target.up()
        return target

    try:
        yield make
    finally:
        for target in deployed:
            try:
                target.drop_replacements()
                target.destroy()
            finally:
                target.force_cleanup()
