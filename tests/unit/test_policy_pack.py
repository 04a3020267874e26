"""The policy pack (policy/): each rule against compliant and violating resources, and
dockyard's own stacks against the pack as Pulumi runs it.

The stacks run through the real program under mocks; every resource they register goes to
the policy pack process over its gRPC interface (Analyze with the resource's inputs,
AnalyzeStack with every resource, its parent and dependencies), exactly as the engine
sends them during `pulumi preview --policy-pack policy`.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
import pytest
import yaml
from google.protobuf import empty_pb2, struct_pb2
from pulumi.runtime.mocks import MockMonitor
from pulumi.runtime.proto import analyzer_pb2, analyzer_pb2_grpc
from pulumi.runtime.rpc import UNKNOWN
from pulumi_policy import (
    PolicyResource,
    PolicyResourceOptions,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
    StackValidationPolicy,
)
from pulumi_policy.deserialize import deserialize_properties
from pulumi_policy.policy import PolicyCustomTimeouts
from pulumi_policy.proxy import unknown_checking_proxy

import tests.support.program as program_support
from dockyard.config import FORBIDDEN_BIND_SOURCES, from_stack_file
from tests.support.program import REPO, ProgramRun, RecordingMocks, run_program

POLICY_DIR = REPO / "policy"
CONTAINER = "docker:index/container:Container"
VOLUME = "docker:index/volume:Volume"
COMMAND = "command:local:Command"


def _load_policies() -> ModuleType:
    # The pack is a folder Pulumi runs, not a package: load its module by path.
    spec = importlib.util.spec_from_file_location(
        "dockyard_policy", POLICY_DIR / "dockyard_policy.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


pack = _load_policies()
RESOURCE_POLICIES = [p for p in pack.POLICIES if isinstance(p, ResourceValidationPolicy)]
STACK_POLICIES = [p for p in pack.POLICIES if isinstance(p, StackValidationPolicy)]
OPTIONS = PolicyResourceOptions(False, [], None, [], PolicyCustomTimeouts(0, 0, 0), [])

# A container as dockyard declares one (camelCase, numbers as floats on the wire).
COMPLIANT: dict[str, Any] = {
    "name": "dockyard-dev-alpha",
    "image": "dockyard-core:dev-0123",
    "user": "1000:1000",
    "capabilities": {"drops": ["ALL"]},
    "securityOpts": ["no-new-privileges:true"],
    "memory": 8192.0,
    "memorySwap": 8192.0,
    "volumes": [
        {"containerPath": "/workspace", "volumeName": "dockyard-dev-alpha-workspace"},
        {"containerPath": "/workspace/src", "hostPath": "/srv/src", "readOnly": True},
    ],
}


def violations(props: dict[str, Any], resource_type: str = CONTAINER) -> dict[str, list[str]]:
    """Policy name -> its messages, for one resource, as the analyzer builds the args."""
    found: dict[str, list[str]] = {}
    for policy in RESOURCE_POLICIES:
        messages: list[str] = []

        def report(message: str, urn: str | None = None, sink: list[str] = messages) -> None:
            sink.append(message)

        args = ResourceValidationArgs(
            resource_type,
            unknown_checking_proxy(deserialize_properties(props)),
            f"urn:pulumi:dev::p::{resource_type}::r",
            "r",
            OPTIONS,
            None,
        )
        policy.validate(args, report)
        if messages:
            found[policy.name] = messages
    return found


def test_dockyards_container_complies() -> None:
    assert violations(COMPLIANT) == {}


def _without(key: str) -> dict[str, Any]:
    return {k: v for k, v in COMPLIANT.items() if k != key}


VIOLATING = [
    ("privileged", {**COMPLIANT, "privileged": True}, "not-privileged", "privileged: true"),
    ("host pid", {**COMPLIANT, "pidMode": "host"}, "not-privileged", "pidMode: 'host'"),
    ("no capabilities", _without("capabilities"), "drops-all-capabilities", "capabilities.drops"),
    (
        "some dropped",
        {**COMPLIANT, "capabilities": {"drops": ["NET_RAW"]}},
        "drops-all-capabilities",
        "capabilities.drops: ['NET_RAW']",
    ),
    (
        "one added back",
        {**COMPLIANT, "capabilities": {"drops": ["ALL"], "adds": ["SYS_ADMIN"]}},
        "drops-all-capabilities",
        "capabilities.adds: ['SYS_ADMIN']",
    ),
    ("no security opts", _without("securityOpts"), "no-new-privileges", "securityOpts: []"),
    (
        "other opt only",
        {**COMPLIANT, "securityOpts": ["seccomp=unconfined"]},
        "no-new-privileges",
        "securityOpts: ['seccomp=unconfined']",
    ),
    ("image's user", _without("user"), "non-root-user", "user: ''"),
    ("root by name", {**COMPLIANT, "user": "root"}, "non-root-user", "user: 'root'"),
    ("root by uid", {**COMPLIANT, "user": "0:1000"}, "non-root-user", "user: '0:1000'"),
    ("no memory limit", _without("memory"), "memory-limit-without-swap", "memory: None"),
    (
        "swap on top",
        {**COMPLIANT, "memorySwap": 16384.0},
        "memory-limit-without-swap",
        "memorySwap: 16384.0",
    ),
    (
        "unlimited swap",
        {**COMPLIANT, "memorySwap": -1.0},
        "memory-limit-without-swap",
        "memorySwap: -1.0",
    ),
]
ENGINE_MOUNTS = [
    "/var/run/docker.sock",
    "/run/docker.sock",
    "/var/run",  # holds the socket
    "/",
    "/var/lib/docker/volumes/other",  # inside the engine's state
    "/run/containerd/containerd.sock",
    "/var/lib/containerd",
    "/srv/../var/run/docker.sock",
]


@pytest.mark.parametrize(
    ("props", "policy", "fragment"),
    [pytest.param(props, policy, fragment, id=case) for case, props, policy, fragment in VIOLATING],
)
def test_violation_is_reported_by_its_policy_only(
    props: dict[str, Any], policy: str, fragment: str
) -> None:
    found = violations(props)
    name = f"docker-container-{policy}"
    assert set(found) == {name}, found
    assert any(fragment in message for message in found[name]), found[name]


@pytest.mark.parametrize("source", ENGINE_MOUNTS)
def test_engine_socket_and_state_are_refused_as_bind_sources(source: str) -> None:
    as_volume = {**COMPLIANT, "volumes": [{"containerPath": "/x", "hostPath": source}]}
    as_mount = {**COMPLIANT, "mounts": [{"type": "bind", "source": source, "target": "/x"}]}
    named = {
        "name": "v",
        "driver": "local",
        "driverOpts": {"type": "none", "o": "bind", "device": source},
    }
    for props, resource_type, where in (
        (as_volume, CONTAINER, "volumes[0].hostPath"),
        (as_mount, CONTAINER, "mounts[0].source"),
        (named, VOLUME, "driverOpts.device"),
    ):
        found = violations(props, resource_type)
        assert set(found) == {"docker-no-engine-socket-or-state"}, (source, where, found)
        assert found["docker-no-engine-socket-or-state"][0].startswith(f"{where}: {source!r}")


@pytest.mark.parametrize(
    "source", ["/srv/docker-data", "/var/lib/dockerish", "/home/me/run/docker.sock.bak"]
)
def test_paths_that_only_look_like_the_engines_are_allowed(source: str) -> None:
    props = {**COMPLIANT, "volumes": [{"containerPath": "/x", "hostPath": source}]}
    assert violations(props) == {}


def test_the_pack_refuses_at_least_what_the_stack_config_refuses() -> None:
    assert set(FORBIDDEN_BIND_SOURCES) <= set(pack.ENGINE_PATHS)


# --- The pids limit: a stack policy --------------------------------------------------------------


def resource(kind: str, name: str, props: dict[str, Any]) -> PolicyResource:
    return PolicyResource(
        kind,
        unknown_checking_proxy(deserialize_properties(props)),
        f"urn:pulumi:dev::p::{kind}::{name}",
        name,
        OPTIONS,
        None,
        None,
        [],
        {},
    )


def pids_command(
    container: PolicyResource,
    create: str = 'docker update --pids-limit "$DOCKYARD_PIDS_LIMIT" "$DOCKYARD_CONTAINER_ID"',
    limit: str = "1000",
    depends: bool = True,
) -> PolicyResource:
    # During a preview the container's id is unknown: the policy must not need it.
    command = resource(
        COMMAND,
        "runtime",
        {
            "create": create,
            "environment": {"DOCKYARD_PIDS_LIMIT": limit, "DOCKYARD_CONTAINER_ID": UNKNOWN},
        },
    )
    if depends:
        command.property_dependencies["environment"] = [container]
    return command


def stack_violations(resources: list[PolicyResource]) -> list[tuple[str, str | None]]:
    reported: list[tuple[str, str | None]] = []

    def report(message: str, urn: str | None = None) -> None:
        reported.append((message, urn))

    for policy in STACK_POLICIES:
        policy.validate(StackValidationArgs(resources), report)
    return reported


@pytest.fixture
def container() -> PolicyResource:
    return resource(CONTAINER, "container", COMPLIANT)


def test_a_container_limited_by_its_command_complies(container: PolicyResource) -> None:
    assert stack_violations([container, pids_command(container)]) == []


def test_a_literal_limit_counts_too(container: PolicyResource) -> None:
    literal = pids_command(container, create='docker update --pids-limit=512 "$ID"')
    assert stack_violations([container, literal]) == []


@pytest.mark.parametrize(
    ("case", "command_kwargs", "fragment"),
    [
        ("no command", None, "no pids limit"),
        ("command for another container", {"depends": False}, "no pids limit"),
        ("command without docker update", {"create": "echo $DOCKYARD_PIDS_LIMIT"}, "no pids limit"),
        ("unlimited", {"limit": "-1"}, "pids limit -1 is not allowed"),
        ("zero", {"limit": "0"}, "pids limit 0 is not allowed"),
        ("not a number", {"limit": "many"}, "no pids limit"),
    ],
)
def test_containers_without_a_pids_limit_are_reported(
    container: PolicyResource, case: str, command_kwargs: dict[str, Any] | None, fragment: str
) -> None:
    resources = [container]
    if command_kwargs is not None:
        resources.append(pids_command(container, **command_kwargs))
    reported = stack_violations(resources)
    assert len(reported) == 1, (case, reported)
    message, urn = reported[0]
    assert fragment in message, (case, message)
    assert urn == container.urn


# --- The pack as Pulumi runs it, on dockyard's own stacks -------------------------------------------


@pytest.fixture(scope="module")
def analyzer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The pack's gRPC analyzer, started the way Pulumi starts a Python policy pack."""
    settings = yaml.safe_load((POLICY_DIR / "PulumiPolicy.yaml").read_text(encoding="utf-8"))
    assert settings["runtime"]["name"] == "python"
    assert (POLICY_DIR / settings["runtime"]["options"]["virtualenv"]).resolve() == (
        REPO / ".venv"
    ).resolve()
    process = subprocess.Popen(
        [sys.executable, str(POLICY_DIR), "127.0.0.1:1"],
        cwd=tmp_path_factory.mktemp("program"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        port = process.stdout.readline().decode().strip()
        if not port.isdigit():
            process.kill()
            pytest.fail(
                f"the policy pack printed no port: {process.communicate()[1].decode()[-2000:]}"
            )
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield analyzer_pb2_grpc.AnalyzerStub(channel)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_served_pack_enforces_every_policy(analyzer: Any) -> None:
    info = analyzer.GetAnalyzerInfo(empty_pb2.Empty())
    assert info.name == "dockyard-container-hardening"
    assert sorted(p.name for p in info.policies) == sorted(p.name for p in pack.POLICIES)
    assert {p.enforcementLevel for p in info.policies} == {analyzer_pb2.MANDATORY}


@dataclass
class Recorded:
    """What the engine would hand the analyzer for one registered resource."""

    analyze: analyzer_pb2.AnalyzeRequest
    stack: analyzer_pb2.AnalyzerResource


class RecordingMonitor(MockMonitor):
    """The mock monitor, also keeping each registration in the analyzer's wire form."""

    def __init__(self, mocks: Any) -> None:
        super().__init__(mocks)
        self.recorded: list[Recorded] = []

    def RegisterResource(self, request: Any) -> Any:
        response = super().RegisterResource(request)
        if request.type != "pulumi:pulumi:Stack":
            dependencies = {
                key: analyzer_pb2.AnalyzerPropertyDependencies(urns=list(value.urns))
                for key, value in request.propertyDependencies.items()
            }
            self.recorded.append(
                Recorded(
                    analyzer_pb2.AnalyzeRequest(
                        type=request.type,
                        properties=request.object,
                        urn=response.urn,
                        name=request.name,
                    ),
                    analyzer_pb2.AnalyzerResource(
                        type=request.type,
                        properties=response.object,  # the state: outputs, as after a step
                        urn=response.urn,
                        name=request.name,
                        parent=request.parent,
                        dependencies=list(request.dependencies),
                        propertyDependencies=dependencies,
                    ),
                )
            )
        return response


def run_stack_file(path: Path, monkeypatch: pytest.MonkeyPatch) -> list[Recorded]:
    monitors: list[RecordingMonitor] = []

    def monitor(mocks: Any) -> RecordingMonitor:
        monitors.append(RecordingMonitor(mocks))
        return monitors[-1]

    monkeypatch.setattr(program_support, "MockMonitor", monitor)
    raw, _ = from_stack_file(str(path))
    names = sorted(
        {n for env in raw.get("dockyard:environments", []) for n in env.get("secrets", [])}
    )
    # A user sets the secrets with `pulumi config set --secret`; they are not in the repo.
    values = {k.split(":", 1)[1]: v for k, v in raw.items() if k.split(":", 1)[1] not in names}
    run = ProgramRun()
    stack = path.stem.removeprefix("Pulumi.")
    run_program(
        RecordingMocks(run), values, {n: f"test-{n}" for n in names}, stack=stack, recorder=run
    )
    assert len(monitors) == 1
    return monitors[0].recorded


def diagnostics(analyzer: Any, recorded: list[Recorded]) -> list[str]:
    found = []
    for item in recorded:
        for d in analyzer.Analyze(item.analyze).diagnostics:
            found.append(f"{item.analyze.urn}: {d.policyName}: {d.message}")
    stack = analyzer.AnalyzeStack(
        analyzer_pb2.AnalyzeStackRequest(resources=[r.stack for r in recorded])
    )
    found += [f"{d.urn}: {d.policyName}: {d.message}" for d in stack.diagnostics]
    return found


STACK_FILES = sorted((REPO / "stacks").glob("Pulumi.*.yaml"))


@pytest.mark.parametrize(
    "path", STACK_FILES, ids=[p.stem.removeprefix("Pulumi.") for p in STACK_FILES]
)
def test_dockyards_stacks_pass_the_pack(
    analyzer: Any, path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorded = run_stack_file(path, monkeypatch)
    assert recorded, "the program registered nothing"
    assert diagnostics(analyzer, recorded) == []
    containers = [r for r in recorded if r.analyze.type == CONTAINER]
    backend, _ = from_stack_file(str(path))
    if backend.get("dockyard:backend", "docker") == "docker":
        # Not vacuous: every declared environment's container was checked.
        assert len(containers) == len(backend["dockyard:environments"])


def test_the_served_pack_catches_a_weakened_stack(
    analyzer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorded = run_stack_file(REPO / "stacks" / "Pulumi.dev.yaml", monkeypatch)
    weakened = []
    for item in recorded:
        if item.analyze.type == COMMAND and "--pids-limit" in str(item.analyze.properties):
            continue  # the pids limit is never applied
        if item.analyze.type == CONTAINER:
            props = struct_pb2.Struct()
            props.CopyFrom(item.analyze.properties)
            props.update({"privileged": True})
            item.analyze.properties.CopyFrom(props)
        weakened.append(item)
    found = diagnostics(analyzer, weakened)
    assert len(found) == 2, found
    # The served message starts with the policy's description, then the violation.
    assert any(
        "env-dev-container: docker-container-not-privileged:" in d
        and "privileged: true is not allowed" in d
        for d in found
    ), found
    assert any(
        "env-dev-container: docker-container-pids-limit:" in d and "no pids limit" in d
        for d in found
    ), found


def test_a_brokered_stack_passes_the_pack_brokers_included(
    analyzer: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A credential broker is a container too: hardened, limited, pids-capped."""
    stack = tmp_path / "Pulumi.brokered.yaml"
    stack.write_text(
        "config:\n"
        "  dockyard:environments:\n"
        "    - sessionId: held\n"
        "      credentials: brokered\n"
        "      secrets: [ANTHROPIC_API_KEY, OPENAI_API_KEY, GITHUB_TOKEN]\n"
    )
    monkeypatch.chdir(tmp_path)
    recorded = run_stack_file(stack, monkeypatch)
    containers = [r.analyze.urn for r in recorded if r.analyze.type == CONTAINER]
    assert len(containers) == 2, containers
    assert any(urn.endswith("::env-held-broker-container") for urn in containers)
    assert diagnostics(analyzer, recorded) == []
