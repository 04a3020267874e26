"""Fixtures for the role tests; the helpers themselves are in tests/support/ansible.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from tests.support.ansible import TargetFleet


@pytest.fixture
def fleet(
    docker_client: docker.DockerClient, core_image: str, tmp_path: Path
) -> Iterator[TargetFleet]:
    """Containers from the core image to run playbooks against; removed after the test."""
    targets = TargetFleet(docker_client, core_image, tmp_path, [])
    try:
        yield targets
    finally:
        for container in targets.containers:
            container.remove(force=True, v=True)
