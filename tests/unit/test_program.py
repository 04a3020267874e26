"""The real program under pulumi.runtime mocks: every config field reaches the right
resource input, secrets stay inside uploads, manifests honour contract v1."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pulumi
import pytest

from dockyard import manifest as manifest_contract
from dockyard import storage
from dockyard.config import from_stack_file, parse
from dockyard.image import default_build_args
from tests.support.program import REPO, ProgramRun, RecordingMocks, record, run_program
from tests.support.secrets import is_secret_wrapped, unwrap

CONTAINER = "docker:index/container:Container"
COMMAND = "command:local:Command"
CANARIES = {
    "ANTHROPIC_API_KEY": "sk-ant-canary-7c1e",
    "GITHUB_TOKEN": "ghp_canary_93b2",
    "OPENAI_API_KEY": "sk-openai-canary-d41f",
}

FULL = {
    "bindRoots": ["/srv"],
    "environments": [
        {
            "sessionId": "alpha",
            "backend": "codex",
            "ports": [3000, 5173],
            "volumes": ["/srv/src:/workspace/src:ro", "cache:/home/agent/.cache"],
            "env": {"NODE_ENV": "development", "RETRIES": 3},
            "secrets": ["ANTHROPIC_API_KEY", "GITHUB_TOKEN"],
            "limits": {
                "cpus": 2.5,
                "memory": "6g",
                "pids": 500,
                "nofileSoft": 4096,
                "nofileHard": 8192,
            },
            "labels": {"team": "platform"},
        },
        {
            "sessionId": "beta",
            "ports": [8080],
            "egress": "allowlist",
            "egressAllow": ["anthropic", "10.20.0.0/16:5432", "pypi.org"],
        },
    ],
}


@pytest.fixture(scope="module")
def full() -> ProgramRun:
    return record(FULL, CANARIES)


def container_of(run: ProgramRun, session: str) -> dict[str, Any]:
    return run.named(f"env-{session}-container").inputs


def test_resources_per_environment_are_parented_to_their_component(full: ProgramRun) -> None:
    for session in ("alpha", "beta"):
        children = [u for u in full.urns if f"::env-{session}-" in u]
        kinds = sorted(u.split("$")[-1].split("::")[0] for u in children)
        assert kinds == [
            COMMAND,
            COMMAND,
            COMMAND,  # the disk images and their mounts, one helper run (dockyard.storage)
            CONTAINER,
            "docker:index/network:Network",
            "docker:index/volume:Volume",
            "docker:index/volume:Volume",
            "docker:index/volume:Volume",
            "docker:index/volume:Volume",  # $HOME, bounded
            "docker:index/volume:Volume",  # /run/secrets, bounded
        ], children
        assert all("dockyard:index:AgentEnvironment$" in u for u in children), children
    assert any(u.endswith("dockyard:index:AgentImage::image-core") for u in full.urns)


def test_ports_are_published_without_host_ports(full: ProgramRun) -> None:
    ports = container_of(full, "alpha")["ports"]
    # Host port: the engine's choice; address: loopback unless dockyard:publishAddress says.
    assert ports == [
        {"internal": 3000.0, "ip": "127.0.0.1"},
        {"internal": 5173.0, "ip": "127.0.0.1"},
    ]


def test_volumes_mount_own_named_volumes_and_declared_ones(full: ProgramRun) -> None:
    volumes = container_of(full, "alpha")["volumes"]
    assert volumes == [
        {
            "containerPath": "/workspace",
            "volumeName": "dockyard-dev-alpha-workspace",
            "readOnly": False,
        },
        {"containerPath": "/config", "volumeName": "dockyard-dev-alpha-config", "readOnly": False},
        {
            "containerPath": "/checkpoints",
            "volumeName": "dockyard-dev-alpha-checkpoints",
            "readOnly": False,
        },
        {
            "containerPath": "/home/agent",
            "volumeName": "dockyard-dev-alpha-home",
            "readOnly": False,
        },
        {
            "containerPath": "/run/secrets",
            "volumeName": "dockyard-dev-alpha-"
            + storage.secrets_role(["ANTHROPIC_API_KEY", "GITHUB_TOKEN"]),
            "readOnly": False,
        },
        {"containerPath": "/workspace/src", "hostPath": "/srv/src", "readOnly": True},
        {"containerPath": "/home/agent/.cache", "volumeName": "cache", "readOnly": False},
    ]
    names = {r.inputs["name"] for r in full.of_type("docker:index/volume:Volume")}
    assert "dockyard-dev-beta-workspace" in names
    assert "dockyard-dev-alpha-workspace" in names


def test_limits_reach_the_container_and_the_pids_command(full: ProgramRun) -> None:
    container = container_of(full, "alpha")
    assert (
        container["cpuPeriod"],
        container["cpuQuota"],
        container["memory"],
        container["memorySwap"],
    ) == (100000.0, 250000.0, 6144.0, 6144.0)
    assert container["ulimits"][0] == {"name": "nofile", "soft": 4096.0, "hard": 8192.0}
    runtime = full.named("env-alpha-runtime").inputs
    assert runtime["environment"]["DOCKYARD_PIDS_LIMIT"] == "500"
    assert "docker update --pids-limit" in runtime["create"]
    assert "$DOCKYARD_CONTAINER_ID" in runtime["create"]  # values by environment, not text
    defaults = container_of(full, "beta")
    assert (defaults["cpuQuota"], defaults["memory"]) == (400000.0, 8192.0)
    assert defaults["ulimits"][0] == {"name": "nofile", "soft": 1024.0, "hard": 2048.0}
    assert full.named("env-beta-runtime").inputs["environment"]["DOCKYARD_PIDS_LIMIT"] == "1000"


def test_hardening_inputs(full: ProgramRun) -> None:
    for session in ("alpha", "beta"):
        container = container_of(full, session)
        assert container["user"] == "1000:1000"
        assert container["capabilities"] == {"drops": ["ALL"]}
        assert container["securityOpts"] == ["no-new-privileges:true"]
        assert container["restart"] == "unless-stopped"
        assert container["workingDir"] == "/workspace"
        assert not container.get("privileged")
        assert container["networksAdvanced"] == [{"name": f"dockyard-dev-{session}"}]


def test_env_labels_and_health(full: ProgramRun) -> None:
    container = container_of(full, "alpha")
    assert container["envs"] == [
        "DOCKYARD_BACKEND=codex",
        "DOCKYARD_SESSION_ID=alpha",
        "NODE_ENV=development",
        "RETRIES=3",
    ]
    labels = {item["label"]: item["value"] for item in container["labels"]}
    assert labels == {
        "team": "platform",
        "dockyard.environment": "dockyard-dev-alpha",
        "dockyard.session": "alpha",
        "dockyard.backend": "codex",
        "dockyard.stack": "dev",
        "dockyard.managed": "true",
        "dockyard.egress": "open",
        "dockyard.credentials": "files",
        "dockyard.limits.cpus": "2.5",
        "dockyard.limits.memory": "6144",
    }
    assert container["healthcheck"] == {
        "tests": ["CMD", "/usr/local/bin/dockyard-healthcheck"],
        "interval": "60s",
        "timeout": "10s",
        "retries": 3.0,
        "startPeriod": "30s",
    }


def test_secrets_are_uploaded_as_agent_owned_0400_files(full: ProgramRun) -> None:
    uploads = container_of(full, "alpha")["uploads"]
    assert is_secret_wrapped(uploads), "the uploads input must be a Pulumi secret"
    assert unwrap(uploads) == [
        {
            "file": "/run/secrets/ANTHROPIC_API_KEY",
            "content": CANARIES["ANTHROPIC_API_KEY"],
            "permissions": "0400",
            "owner": "1000",
            "group": "1000",
        },
        {
            "file": "/run/secrets/GITHUB_TOKEN",
            "content": CANARIES["GITHUB_TOKEN"],
            "permissions": "0400",
            "owner": "1000",
            "group": "1000",
        },
    ]


def test_no_secret_outside_the_upload_content(full: ProgramRun) -> None:
    leaks = []
    for resource in full.resources:
        for key, value in resource.inputs.items():
            if resource.type == CONTAINER and key == "uploads":
                continue
            text = json.dumps(value, default=str)
            leaks += [f"{resource.name}.{key}" for c in CANARIES.values() if c in text]
        for key, value in resource.outputs.items():
            if resource.type == CONTAINER and key == "uploads":
                continue
            text = json.dumps(value, default=str)
            leaks += [f"{resource.name} output {key}" for c in CANARIES.values() if c in text]
    exported = json.dumps(full.exports())
    leaks += [f"export {c}" for c in CANARIES.values() if c in exported]
    assert not leaks, f"secret values found in {leaks}"


def test_manifests_follow_contract_v1(full: ProgramRun) -> None:
    manifests = full.exports()
    assert set(manifests) == {"alpha", "beta"}
    alpha = manifests["alpha"]
    manifest_contract.validate(alpha)
    assert list(alpha) == [
        "version",
        "environmentId",
        "sessionId",
        "backend",
        "createdAt",
        "cwd",
        "image",
        "container",
        "requested",
    ]
    assert list(alpha["container"]) == ["id", "name", "cwd", "portMappings"]
    assert alpha["createdAt"] == "2026-11-22T10:00:00.123Z"  # read back from the engine
    assert alpha["requested"] == {
        "ports": [3000, 5173],
        "volumes": ["/srv/src:/workspace/src:ro", "cache:/home/agent/.cache"],
        "env": ["NODE_ENV", "RETRIES", "ANTHROPIC_API_KEY", "GITHUB_TOKEN"],
    }
    container = full.named("env-alpha-container")
    resolved = {p["internal"]: p["external"] for p in container.outputs["ports"]}
    assert alpha["container"]["portMappings"] == [
        {"containerPort": 3000, "hostPort": resolved[3000.0]},
        {"containerPort": 5173, "hostPort": resolved[5173.0]},
    ]
    assert alpha["container"]["id"] == container.id


def test_manifest_command_writes_to_configured_dir_via_environment(full: ProgramRun) -> None:
    command = full.named("env-alpha-manifest").inputs
    assert command["create"].endswith("-m dockyard.manifest write")
    assert 'rm -f -- "$DOCKYARD_MANIFEST_PATH"' in command["delete"]
    environment = command["environment"]
    assert (
        environment["DOCKYARD_MANIFEST_PATH"] == f"{REPO}/.companion/cloud/environments/alpha.json"
    )
    assert json.loads(environment["DOCKYARD_MANIFEST"]) == full.exports()["alpha"]


def test_properties_across_all_containers(full: ProgramRun) -> None:
    # Host ports are the engine's choice: their uniqueness is checked where stacks are
    # realised (tests/integration), not on the counter this mock hands out.
    for container in full.of_type(CONTAINER):
        assert container.inputs.get("healthcheck"), f"{container.name} has no health check"
        assert not container.inputs.get("privileged"), f"{container.name} is privileged"
        mounts = json.dumps(container.inputs.get("volumes", []))
        assert "docker.sock" not in mounts, f"{container.name} mounts the Docker socket"
        assert "adds" not in container.inputs["capabilities"], f"{container.name} adds capabilities"


@pytest.mark.parametrize(
    ("gpu", "expected"),
    [
        ("all", {"gpus": "all"}),
        (
            [0, "GPU-1a"],
            {
                "deviceRequests": [
                    {"driver": "nvidia", "deviceIds": ["0", "GPU-1a"], "capabilities": ["gpu"]}
                ]
            },
        ),
    ],
)
def test_gpu_requests(gpu: Any, expected: dict[str, Any]) -> None:
    run = record({"profile": "gpu", "environments": [{"sessionId": "g", "gpu": gpu}]})
    container = container_of(run, "g")
    assert {k: container[k] for k in expected} == expected
    image = run.of_type("docker:index/image:Image")[0].inputs
    assert image["imageName"].startswith("dockyard-gpu:dev-")
    assert image["build"]["args"]["BASE_IMAGE"].startswith("nvidia/cuda:")


def test_core_image_is_built_with_the_classic_builder_and_build_args() -> None:
    run = record(
        {"image": {"args": {"CODEX_VERSION": "0.166.0"}}, "environments": [{"sessionId": "a"}]}
    )
    image = run.of_type("docker:index/image:Image")[0].inputs
    assert image["build"]["builderVersion"] == "BuilderV1"
    # The stack's args overlay the pinned ones of images/versions.env.
    assert image["build"]["args"] == {**default_build_args(), "CODEX_VERSION": "0.166.0"}
    assert image["skipPush"] is True
    assert container_of(run, "a")["image"] == image["imageName"]


def test_build_args_change_the_image_tag() -> None:
    one = record({"environments": [{"sessionId": "a"}]}).of_type("docker:index/image:Image")[0]
    two = record(
        {"image": {"args": {"CODEX_VERSION": "0.166.0"}}, "environments": [{"sessionId": "a"}]}
    ).of_type("docker:index/image:Image")[0]
    assert one.inputs["imageName"] != two.inputs["imageName"]


def test_published_image_and_remote_host() -> None:
    run = record(
        {
            "dockerHost": "ssh://agent@host.example",
            "image": {"ref": "ghcr.io/acme/dockyard-core:1.2"},
            "environments": [{"sessionId": "a"}],
        }
    )
    remote = run.of_type("docker:index/remoteImage:RemoteImage")
    assert [r.inputs["name"] for r in remote] == ["ghcr.io/acme/dockyard-core:1.2"]
    assert not run.of_type("docker:index/image:Image")
    provider = [r for r in run.resources if r.type == "pulumi:providers:docker"]
    assert [p.inputs["host"] for p in provider] == ["ssh://agent@host.example"]
    assert container_of(run, "a")["image"] == remote[0].outputs["imageId"]
    manifest = run.exports()["a"]
    assert manifest["image"] == remote[0].outputs["repoDigest"]
    assert (
        run.named("env-a-runtime").inputs["environment"]["DOCKER_HOST"]
        == "ssh://agent@host.example"
    )


def test_bad_config_registers_nothing() -> None:
    run = ProgramRun()
    with pytest.raises(pulumi.RunError) as info:
        run_program(
            RecordingMocks(run), {"environments": [{"sessionId": "a", "ports": [0]}]}, recorder=run
        )
    assert "dockyard:environments[0].ports[0]: 0 is not allowed" in str(info.value)
    assert run.resources == []


STACK_FILES = sorted((REPO / "stacks").glob("Pulumi.*.yaml"))


@pytest.mark.parametrize(
    "path", STACK_FILES, ids=[p.stem.removeprefix("Pulumi.") for p in STACK_FILES]
)
def test_every_stack_file_loads_validates_and_evaluates(path: Path) -> None:
    raw, secret_keys = from_stack_file(str(path))
    stack = path.stem.removeprefix("Pulumi.")
    names = sorted(
        {n for env in raw.get("dockyard:environments", []) for n in env.get("secrets", [])}
    )
    # A user sets these with `pulumi config set --secret`; they are not in the repo.
    raw.update({f"dockyard:{n}": f"test-{n}" for n in names})
    parse(raw, stack=stack, cwd="/p", secret_keys={*secret_keys, *(f"dockyard:{n}" for n in names)})
    values = {k.split(":", 1)[1]: v for k, v in raw.items() if k.split(":", 1)[1] not in names}
    run = record(values, {n: f"test-{n}" for n in names}, stack=stack)
    # Whatever the backend (containers on an engine, pods on Kubernetes): one manifest
    # per declared environment.
    assert set(run.exports()) == {e["sessionId"] for e in raw["dockyard:environments"]}


def test_required_stacks_exist() -> None:
    assert {p.stem for p in STACK_FILES} >= {"Pulumi.dev", "Pulumi.ci", "Pulumi.gpu", "Pulumi.team"}
    raw, _ = from_stack_file(str(REPO / "stacks" / "Pulumi.dev.yaml"))
    assert raw["dockyard:environments"] == [
        {"sessionId": "dev", "backend": "claude", "ports": [3000, 5173]}
    ]
    team, _ = from_stack_file(str(REPO / "stacks" / "Pulumi.team.yaml"))
    assert team["dockyard:dockerHost"].startswith("ssh://")
    assert {e["backend"] for e in team["dockyard:environments"]} == {"claude", "codex"}


def test_hundred_environments_evaluate() -> None:
    """Correctness at scale; the time it takes is a benchmark (benchmarks/), not asserted."""
    run = record(
        {"environments": [{"sessionId": f"s{i:03d}", "ports": [3000]} for i in range(100)]}
    )
    containers = run.of_type(CONTAINER)
    assert len(containers) == 100
    assert len({c.inputs["name"] for c in containers}) == 100
    assert len(run.exports()) == 100


def test_egress_policy_reaches_the_network_labels(full: ProgramRun) -> None:
    def network_labels(session: str) -> dict[str, str]:
        network = full.named(f"env-{session}-net")
        return {item["label"]: item["value"] for item in network.inputs["labels"]}

    assert network_labels("alpha")["dockyard.egress"] == "open"
    assert "dockyard.egress.allow" not in network_labels("alpha")
    beta = network_labels("beta")
    assert beta["dockyard.egress"] == "allowlist"
    assert json.loads(beta["dockyard.egress.allow"]) == [
        "api.anthropic.com:443",
        "statsig.anthropic.com:443",
        "console.anthropic.com:443",
        "claude.ai:443",
        "10.20.0.0/16:5432",
        "pypi.org",
    ]
    # The container carries no capability for it: enforcement is on the host.
    assert container_of(full, "beta")["capabilities"] == {"drops": ["ALL"]}
