"""Fixtures for tests that run the core image on the real engine."""

from __future__ import annotations

from collections.abc import Iterator

import docker
import pytest

from tests.support.agent_runner import AgentRunner


@pytest.fixture
def runner(docker_client: docker.DockerClient, core_image: str) -> Iterator[AgentRunner]:
    agent_runner = AgentRunner(docker_client, core_image)
    try:
        yield agent_runner
    finally:
        agent_runner.cleanup()
