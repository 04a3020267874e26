"""dockyard as a Pulumi component package, checked without a Pulumi CLI.

The schema comes from the provider process itself, launched the way Pulumi's Python
language host launches a source-based plugin (``python <main> <engine address>``, from
another directory), and read over its gRPC interface. The components are then constructed
through the provider in-process under mocks: an environment declared through the package
registers exactly what the same environment in a stack file registers.
"""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args

import grpc
import pulumi
import pytest
import yaml
from google.protobuf import empty_pb2
from pulumi.provider.experimental.component import ComponentProvider
from pulumi.provider.server import ComponentInitError
from pulumi.runtime import config as runtime_config
from pulumi.runtime.mocks import MockMonitor
from pulumi.runtime.proto import provider_pb2, provider_pb2_grpc
from pulumi.runtime.settings import SETTINGS
from pulumi.runtime.stack import run_pulumi_func
from pulumi.runtime.sync_await import _sync_await
from pydantic.alias_generators import to_camel

from dockyard import environment, image, provider
from dockyard import manifest as manifest_contract
from dockyard.assets import version
from dockyard.config import Environment, Healthcheck, Limits, Runtime
from tests.support.program import REPO, ProgramRun, RecordingMocks, record
from tests.support.secrets import is_secret_wrapped, unwrap

ENVIRONMENT = "dockyard:index:AgentEnvironment"
IMAGE = "dockyard:index:AgentImage"
DOCKER_IMAGE = "docker:index/image:Image"
CONTAINER = "docker:index/container:Container"
CANARY = "sk-ant-canary-5e0d"


# --- The schema, as the plugin process serves it ------------------------------------------------


@pytest.fixture(scope="module")
def plugin() -> dict[str, Any]:
    return yaml.safe_load((REPO / "PulumiPlugin.yaml").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def served(plugin: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A gRPC stub of the provider, started as the language host starts a plugin."""
    main = REPO / plugin["main"]
    process = subprocess.Popen(
        [sys.executable, str(main), "127.0.0.1:1"],  # engine address: not dialled for these calls
        cwd=tmp_path_factory.mktemp("consumer"),  # a consumer's project, not the checkout
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        port = process.stdout.readline().decode().strip()
        if not port.isdigit():
            process.kill()
            pytest.fail(
                f"the provider printed no port: {process.communicate()[1].decode()[-2000:]}"
            )
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield provider_pb2_grpc.ResourceProviderStub(channel)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def schema(served: Any) -> dict[str, Any]:
    return json.loads(served.GetSchema(provider_pb2.GetSchemaRequest()).schema)


def test_plugin_manifest_runs_the_provider_with_the_projects_virtualenv(
    plugin: dict[str, Any],
) -> None:
    assert plugin["runtime"]["name"] == "python"
    assert plugin["runtime"]["options"]["virtualenv"] == ".venv"
    main = REPO / plugin["main"] / "__main__.py"
    assert main.is_file(), f"PulumiPlugin.yaml main: {plugin['main']} has no __main__.py"
    # The root __main__.py is the stack program: the plugin must not start that one.
    assert (REPO / plugin["main"]).resolve() != REPO.resolve()


def test_served_package_is_dockyard_at_the_project_version(served: Any, schema: dict) -> None:
    assert schema["name"] == "dockyard"
    assert schema["version"] == version()
    assert served.GetPluginInfo(empty_pb2.Empty()).version == version()
    assert sorted(schema["resources"]) == [ENVIRONMENT, IMAGE]
    assert all(r["isComponent"] for r in schema["resources"].values())


def test_agent_environment_inputs_and_outputs(schema: dict) -> None:
    resource = schema["resources"][ENVIRONMENT]
    assert set(resource["inputProperties"]) == {
        "sessionId", "imageId", "imageRef", "backend", "ports", "volumes", "env", "secrets",
        "limits", "profile", "gpu", "labels", "workspaceHostPath", "egress", "egressAllow",
        "runtime", "tenant", "stack", "cwd", "manifestDir", "bindRoots", "dockerHost",
        "healthcheck", "backup", "restore", "ssh", "publishAddress", "credentials", "broker",
    }  # fmt: skip
    assert resource["requiredInputs"] == ["imageId", "sessionId"]
    inputs = resource["inputProperties"]
    # Outputs of another resource may flow in here; everything else decides names and
    # checks, so it must be known when the program runs.
    assert not inputs["imageId"].get("plain")
    assert not inputs["imageRef"].get("plain")
    assert not inputs["secrets"]["additionalProperties"].get("plain")
    assert inputs["sessionId"]["plain"]
    assert inputs["ports"]["plain"]
    assert inputs["limits"]["$ref"] == "#/types/dockyard:index:Limits"
    assert {k: v.get("type", v.get("$ref")) for k, v in resource["properties"].items()} == {
        "containerId": "string",
        "containerName": "string",
        "manifest": "#/types/dockyard:index:Manifest",
        "manifestPath": "string",
    }
    assert resource["required"] == sorted(resource["properties"])


def test_agent_image_inputs_and_outputs(schema: dict) -> None:
    resource = schema["resources"][IMAGE]
    assert set(resource["inputProperties"]) == {
        "variant", "ref", "buildArgs", "repository", "tagPrefix", "context", "extraCa",
        "baseVariant", "dockerHost",
    }  # fmt: skip
    assert resource["requiredInputs"] == []
    assert {k: v["type"] for k, v in resource["properties"].items()} == {
        "imageId": "string",
        "imageRef": "string",
        "tag": "string",
    }


def _properties(schema: dict) -> Iterator[tuple[str, dict]]:
    for token, resource in schema["resources"].items():
        for kind in ("inputProperties", "properties"):
            for name, prop in resource[kind].items():
                yield f"{token}.{kind}.{name}", prop
    for token, kind in schema["types"].items():
        for name, prop in (kind.get("properties") or {}).items():
            yield f"{token}.{name}", prop


def test_every_property_has_one_concrete_type(schema: dict) -> None:
    """What other languages need: no unions, no Any, typed lists and maps, and every
    reference resolves to a type of the package."""
    problems = []

    def check(where: str, prop: dict) -> None:
        kinds = [key for key in ("type", "$ref", "oneOf", "anyOf") if key in prop]
        if kinds not in (["type"], ["$ref"]):
            problems.append(f"{where}: {kinds}")
            return
        ref = prop.get("$ref")
        if ref is not None and ref.removeprefix("#/types/") not in schema["types"]:
            problems.append(f"{where}: {ref} is no type of the package (Any or external)")
        if prop.get("type") == "array":
            check(f"{where}[]", prop["items"])
        if prop.get("type") == "object":
            if "additionalProperties" not in prop:
                problems.append(f"{where}: an object without a value type")
            else:
                check(f"{where}{{}}", prop["additionalProperties"])

    for where, prop in _properties(schema):
        check(where, prop)
    assert not problems, "\n".join(problems)


def _assert_same_shape(json_schema: dict, schema: dict, token: str) -> None:
    kind = schema["types"][token]
    assert set(kind["properties"]) == set(json_schema["properties"]), token
    assert kind["required"] == sorted(json_schema["required"]), token
    for name, expected in json_schema["properties"].items():
        prop = kind["properties"][name]
        if expected.get("type") == "object":
            _assert_same_shape(expected, schema, prop["$ref"].removeprefix("#/types/"))
        elif expected.get("type") == "array" and expected["items"].get("type") == "object":
            assert prop["type"] == "array", f"{token}.{name}"
            _assert_same_shape(
                expected["items"], schema, prop["items"]["$ref"].removeprefix("#/types/")
            )
        else:
            # const and enum: the JSON type of their values.
            values = expected.get("enum") or [expected.get("const")]
            wanted = expected.get("type") or {int: "integer", str: "string"}[type(values[0])]
            assert prop.get("type") == wanted, f"{token}.{name}: {prop} is not {wanted}"


def test_manifest_output_has_the_shape_of_contract_v1(schema: dict) -> None:
    _assert_same_shape(manifest_contract.schema(), schema, "dockyard:index:Manifest")


def _enum_values(schema: dict, name: str) -> list[Any]:
    return [member["value"] for member in schema["types"][f"dockyard:index:{name}"]["enum"]]


def test_enums_offer_exactly_what_dockyard_accepts(schema: dict) -> None:
    def literal(field: str) -> list[str]:
        return sorted(get_args(Environment.model_fields[field].annotation))

    assert sorted(_enum_values(schema, "Backend")) == literal("backend")
    assert sorted(_enum_values(schema, "EgressMode")) == literal("egress")
    assert sorted(_enum_values(schema, "Credentials")) == literal("credentials")
    assert sorted(_enum_values(schema, "Restore")) == literal("restore")
    assert sorted(_enum_values(schema, "Runtime")) == sorted(get_args(Runtime))
    assert sorted(_enum_values(schema, "ImageVariant")) == sorted(image.VARIANTS)


def test_every_stack_environment_key_is_an_input(schema: dict) -> None:
    """A key added to stack files must reach the package too (or be left out on purpose)."""
    inputs = set(schema["resources"][ENVIRONMENT]["inputProperties"])
    # Left out on purpose: image (a per-environment published image; through the package,
    # imageId says what runs) and host (a name from a stack's dockerHosts, placed by the
    # stack; through the package, dockerHost names the engine itself), variant (it picks
    # the image a stack builds; through the package, AgentImage's variant does).
    left_out = {"image", "host", "variant"}
    missing = {to_camel(f) for f in Environment.model_fields} - left_out - inputs
    assert not missing, f"add to components/provider.py AgentEnvironmentInputs: {missing}"
    limits = schema["types"]["dockyard:index:Limits"]["properties"]
    assert set(limits) == {to_camel(f) for f in Limits.model_fields}
    health = schema["types"]["dockyard:index:Healthcheck"]["properties"]
    assert set(health) == {to_camel(f) for f in Healthcheck.model_fields}


def test_every_output_of_the_python_components_is_declared_for_the_schema() -> None:
    """The analyzer also reads the base classes' annotations, which are strings it cannot
    resolve: each must be declared again, typed, on the provider's class."""
    for base, exposed in (
        (environment.AgentEnvironment, provider.AgentEnvironment),
        (image.AgentImage, provider.AgentImage),
    ):
        public = {name for name in inspect.get_annotations(base) if not name.startswith("_")}
        redeclared = set(inspect.get_annotations(exposed))
        assert public <= redeclared, f"{exposed.__name__} lacks {public - redeclared}"


# --- Constructing through the provider -------------------------------------------------------------


def construct(
    token: str, name: str, inputs: dict[str, Any], stack: str = "dev"
) -> tuple[ProgramRun, dict[str, Any]]:
    """Construct ``token`` through the component provider, as the engine asks a plugin to,
    in a mocked program; returns what it registered and its resolved outputs."""
    run = ProgramRun()
    mocks = RecordingMocks(run)
    monitor = MockMonitor(mocks)
    pulumi.runtime.set_mocks(mocks, project="consumer", stack=stack, preview=False, monitor=monitor)
    runtime_config.set_all_config({}, [])
    SETTINGS.rpc_manager.clear()
    SETTINGS.outputs.clear()
    state: dict[str, Any] = {}

    def program() -> None:
        host = ComponentProvider(provider.COMPONENTS, provider.PACKAGE, None, version())
        state.update(host.construct(name, token, inputs, None).state)

    try:
        _sync_await(run_pulumi_func(program))
    finally:
        run.urns = list(monitor.resources)
    return run, {key: run.resolve(value) for key, value in state.items()}


STACK_ENVIRONMENT: dict[str, Any] = {
    "sessionId": "alpha",
    "backend": "codex",
    "ports": [3000, 5173],
    "volumes": ["/srv/src:/workspace/src:ro", "cache:/home/agent/.cache"],
    "env": {"NODE_ENV": "development"},
    "secrets": ["ANTHROPIC_API_KEY"],
    "limits": {"cpus": 2.5, "memory": 6144, "pids": 500, "nofileSoft": 4096, "nofileHard": 8192},
    "labels": {"team": "platform"},
    "egress": "allowlist",
    "egressAllow": ["pypi.org", "10.20.0.0/16:5432"],
    "tenant": "acme",
}
STACK = {
    "bindRoots": ["/srv"],
    "healthcheck": {"interval": "30s", "retries": 5},
    "environments": [STACK_ENVIRONMENT],
}


def package_inputs(image_id: str) -> dict[str, Any]:
    """The stack's environment as a TypeScript or YAML program passes it: names from the
    schema, numbers as the wire carries them (floats), secrets as values."""
    inputs: dict[str, Any] = {
        **STACK_ENVIRONMENT,
        "imageId": image_id,
        "ports": [3000.0, 5173.0],
        "limits": {k: float(v) for k, v in STACK_ENVIRONMENT["limits"].items()},
        "secrets": {"ANTHROPIC_API_KEY": CANARY},
        "bindRoots": ["/srv"],
        "healthcheck": {"interval": "30s", "retries": 5.0},
    }
    return inputs


@pytest.fixture(scope="module")
def both() -> tuple[ProgramRun, ProgramRun, dict[str, Any]]:
    """The environment from a stack file, and the same one through the package."""
    stack_run = record(STACK, {"ANTHROPIC_API_KEY": CANARY})
    image_name = stack_run.of_type(DOCKER_IMAGE)[0].inputs["imageName"]
    package_run, state = construct(ENVIRONMENT, "env-alpha", package_inputs(image_name))
    return stack_run, package_run, state


def _by_name(run: ProgramRun) -> dict[str, Any]:
    return {r.name: r for r in run.resources if r.name.startswith("env-alpha")}


def test_package_environment_registers_what_the_stack_program_registers(both: Any) -> None:
    stack_run, package_run, _ = both
    stack, package = _by_name(stack_run), _by_name(package_run)
    assert {(r.type, n) for n, r in package.items()} == {(r.type, n) for n, r in stack.items()}
    # The component itself, its network, 5 volumes (3, $HOME, /run/secrets), container
    # and 3 commands (one of them the disk images and their mounts).
    assert len(stack) == 11, sorted(stack)
    for name, resource in stack.items():
        expected, actual = dict(resource.inputs), dict(package[name].inputs)
        if resource.type == "command:local:Command":
            # Engine ids differ between the two runs (the mocks count resources).
            for inputs in (expected, actual):
                env = dict(unwrap(inputs.pop("environment", {})))
                env.pop("DOCKYARD_CONTAINER_ID", None)
                env.pop("DOCKYARD_MANIFEST", None)
                inputs["environment"] = env
                inputs.pop("triggers", None)
        assert unwrap(actual) == unwrap(expected), f"{name} differs from the stack's"


def test_package_environment_outputs_a_v1_manifest(both: Any) -> None:
    _, package_run, state = both
    manifest = state["manifest"]
    manifest_contract.check_written(manifest, "package output")
    assert manifest["requested"]["env"] == ["NODE_ENV", "ANTHROPIC_API_KEY"]
    container = package_run.named("env-alpha-container")
    assert manifest["container"]["id"] == container.id
    assert state["containerId"] == container.id
    assert state["containerName"] == "dockyard-dev-alpha"
    assert state["manifestPath"].endswith("/.companion/cloud/environments/acme/alpha.json")


def test_package_environment_keeps_secret_values_secret(both: Any) -> None:
    _, package_run, _ = both
    uploads = package_run.named("env-alpha-container").inputs["uploads"]
    assert is_secret_wrapped(uploads), "a plain string passed as a secret must become one"
    assert unwrap(uploads)[0]["content"] == CANARY
    for resource in package_run.resources:
        for key, value in resource.inputs.items():
            if resource.type == CONTAINER and key == "uploads":
                continue
            assert CANARY not in json.dumps(value, default=str), f"{resource.name}.{key}"


def test_package_image_builds_the_shipped_context_with_overlaid_args() -> None:
    run, state = construct(
        IMAGE, "image", {"tagPrefix": "ts", "buildArgs": {"NPM_VERSION": "1.2.3"}}
    )
    build = run.named("image-build").inputs
    assert build["imageName"].startswith("dockyard-core:ts-")
    assert build["build"]["args"] == {**image.default_build_args(), "NPM_VERSION": "1.2.3"}
    assert state["imageId"] == build["imageName"]


def test_package_image_uses_a_published_reference() -> None:
    ref = "registry.example.com/agents/core:1.0"
    run, state = construct(IMAGE, "published", {"ref": ref, "variant": "core"})
    assert run.named("published-remote").inputs["name"] == ref
    assert state["imageRef"].startswith("registry.example.com/agents/core@sha256:")


def test_package_image_without_a_repository_is_tagged_after_its_variant() -> None:
    """AgentImageArgs' default repository (the package leaves it out unless given): the
    layered variant's build in dockyard-python, its base build in dockyard-core."""
    run, _ = construct(IMAGE, "py", {"variant": "python", "tagPrefix": "t"})
    built = sorted(r.inputs["imageName"].split(":")[0] for r in run.of_type(DOCKER_IMAGE))
    assert built == ["dockyard-core", "dockyard-python"]


class ProviderRecordingMocks(RecordingMocks):
    """Also records which provider each resource was registered with."""

    def __init__(self, run: ProgramRun) -> None:
        super().__init__(run)
        self.providers: dict[str, str] = {}

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict]:
        self.providers[args.name] = args.provider or ""
        return super().new_resource(args)


def test_docker_host_sends_every_docker_resource_to_that_engine(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    recorded: list[ProviderRecordingMocks] = []

    def mocks(run: ProgramRun) -> ProviderRecordingMocks:
        recorded.append(ProviderRecordingMocks(run))
        return recorded[-1]

    monkeypatch.setattr(sys.modules[__name__], "RecordingMocks", mocks)
    host = "ssh://agent@team-host"
    run, _ = construct(
        ENVIRONMENT, "remote", {"sessionId": "remote", "imageId": "sha256:0", "dockerHost": host}
    )
    engine = run.named("remote-engine")
    assert engine.type == "pulumi:providers:docker"
    assert engine.inputs["host"] == host
    providers = recorded[-1].providers
    docker_resources = [r.name for r in run.resources if r.type.startswith("docker:")]
    assert len(docker_resources) == 7, docker_resources  # $HOME and /run/secrets volumes too
    for name in docker_resources:
        assert "::remote-engine::" in providers[name], f"{name} goes to {providers[name]!r}"
    # The pids limit is set with the docker CLI: it must talk to the same engine.
    assert run.named("remote-runtime").inputs["environment"]["DOCKER_HOST"] == host


def test_bad_environment_inputs_are_reported_together_under_their_input_names() -> None:
    bad = {
        "session_id": "not ok",
        "image_id": "sha256:0",
        "ports": [0],
        "limits": {"memory": 1, "nofile_soft": 10, "nofile_hard": 5},
        "volumes": ["/var/run/docker.sock:/sock"],
        "egress_allow": ["pypi.org"],
        "healthcheck": {"interval": "soon"},
        "gpu": ["all"],
        "stack": "dev",
    }
    with pytest.raises(provider.InputError) as caught:
        provider.to_environment_args("bad", bad)
    message = str(caught.value)
    assert message.startswith("AgentEnvironment 'bad': the inputs are invalid (")
    for key in (
        "sessionId:",
        "ports[0]:",
        "limits.memory:",
        "limits.nofileHard:",
        "volumes[0]:",
        "egressAllow:",
        "healthcheck.interval:",
        "gpu:",
    ):
        assert f"  - {key}" in message, f"{key} missing from:\n{message}"
    assert "dockyard:" not in message
    assert "environments[0]" not in message


def test_outputs_are_refused_where_values_must_be_known() -> None:
    with pytest.raises(provider.InputError, match=r"ports: an output is not allowed"):
        provider.to_environment_args(
            "late",
            {"session_id": "late", "image_id": "x", "ports": pulumi.Output.from_input([1])},
        )


def test_bad_image_inputs_name_the_input() -> None:
    with pytest.raises(provider.InputError) as caught:
        provider.to_image_args(
            "img",
            {
                "variant": "huge",
                "repository": "Has:Tag",
                "tag_prefix": "NO SPACES",
                "build_args": {"1BAD": "x"},
            },
        )
    message = str(caught.value)
    for key in ("variant:", "repository:", "tagPrefix:", "buildArgs."):
        assert f"  - {key}" in message, f"{key} missing from:\n{message}"


def test_a_layered_base_variant_is_refused_naming_the_buildable_bases() -> None:
    with pytest.raises(provider.InputError) as caught:
        provider.to_image_args("img", {"variant": "python", "base_variant": "node"})
    assert "baseVariant: 'node' is not allowed (allowed: core, gpu)" in str(caught.value)


def test_construct_reports_bad_inputs_as_a_component_error() -> None:
    with pytest.raises(ComponentInitError, match=r"sessionId: 'a b' is not allowed"):
        construct(ENVIRONMENT, "bad", {"sessionId": "a b", "imageId": "sha256:0"})


def test_entry_point_file_matches_plugin_manifest(plugin: dict[str, Any]) -> None:
    entry = (REPO / plugin["main"] / "__main__.py").read_text(encoding="utf-8")
    assert "from dockyard.provider import main" in entry
    assert Path(provider.__file__).name == "provider.py"
