"""Fixtures shared by every test directory. Docker-backed fixtures connect lazily, so
unit tests run on machines without an engine."""

from __future__ import annotations

from collections.abc import Iterator

import docker
import pytest

from tests.support.engine import connect, remove_labelled
from tests.support.images import build_image


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
