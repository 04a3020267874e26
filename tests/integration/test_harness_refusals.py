"""The harness never lets an input it cannot honour pass silently."""

from __future__ import annotations

import docker
import pulumi
import pytest

from tests.harness.docker_mocks import DockerRealisingMocks, HarnessError, HarnessState

pytestmark = pytest.mark.docker


def args(typ: str, inputs: dict) -> pulumi.runtime.MockResourceArgs:
    return pulumi.runtime.MockResourceArgs(
        typ=typ, name="probe", inputs=inputs, provider=None, resource_id=None, custom=True
    )


def test_unknown_resource_type_is_refused(docker_client: docker.DockerClient) -> None:
    mocks = DockerRealisingMocks(docker_client, HarnessState())
    with pytest.raises(
        HarnessError, match=r"resource type docker:index/service:Service \(probe\) is not supported"
    ):
        mocks.new_resource(args("docker:index/service:Service", {}))


def test_unknown_input_is_refused_before_anything_is_created(
    docker_client: docker.DockerClient,
) -> None:
    state = HarnessState()
    mocks = DockerRealisingMocks(docker_client, state)
    with pytest.raises(HarnessError, match=r"inputs \['privileged'\] are not supported"):
        mocks.new_resource(
            args(
                "docker:index/container:Container", {"name": "x", "image": "y", "privileged": True}
            )
        )
    assert state.resources == {}


def test_start_interval_on_an_old_engine_is_refused(docker_client: docker.DockerClient) -> None:
    mocks = DockerRealisingMocks(docker_client, HarnessState())
    if mocks.api_version >= (1, 44):
        pytest.skip(f"engine API {mocks.api_version} supports startInterval")
    inputs = {
        "name": "x",
        "image": "y",
        "healthcheck": {"tests": ["CMD", "true"], "startInterval": "2s"},
    }
    with pytest.raises(HarnessError, match=r"startInterval needs engine API >= 1.44"):
        mocks.new_resource(args("docker:index/container:Container", inputs))


def test_failing_command_is_an_error(docker_client: docker.DockerClient) -> None:
    mocks = DockerRealisingMocks(docker_client, HarnessState())
    with pytest.raises(HarnessError, match=r"create exited 3: boom"):
        mocks.new_resource(args("command:local:Command", {"create": "echo boom >&2; exit 3"}))
