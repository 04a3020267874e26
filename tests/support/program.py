"""Run the real Pulumi program (``__main__.py``) in-process against a ``Mocks``.

Used by the unit tests (recording mocks) and by the Docker-realising harness. The
program runs exactly as ``pulumi up`` would run it, with the stack's config set through
the SDK; each registered resource reaches ``Mocks.new_resource``.
"""

from __future__ import annotations

import json
import runpy
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
import pulumi.runtime
from pulumi.runtime import config as runtime_config
from pulumi.runtime.mocks import MockMonitor
from pulumi.runtime.settings import SETTINGS
from pulumi.runtime.stack import run_pulumi_func
from pulumi.runtime.sync_await import _sync_await

from tests.support.secrets import unwrap

REPO = Path(__file__).resolve().parents[2]
PROGRAM = REPO / "__main__.py"


@dataclass
class Registered:
    """One resource as the program declared it (inputs as Pulumi serialised them)."""

    type: str
    name: str
    inputs: dict[str, Any]
    id: str
    outputs: dict[str, Any]


@dataclass
class ProgramRun:
    resources: list[Registered] = field(default_factory=list)
    module: dict[str, Any] = field(default_factory=dict)
    urns: list[str] = field(default_factory=list)
    """URNs of everything registered, components included; they encode the parent chain."""

    def of_type(self, type_token: str) -> list[Registered]:
        return [r for r in self.resources if r.type == type_token]

    def named(self, name: str) -> Registered:
        matches = [r for r in self.resources if r.name == name]
        assert len(matches) == 1, f"expected one resource named {name}, got {len(matches)}"
        return matches[0]

    def resolve(self, output: Any) -> Any:
        """The value of an Output of this run (secrets unwrapped)."""
        return _sync_await(pulumi.Output.from_input(output).future())

    def exports(self) -> dict[str, Any]:
        environments = self.module["environments"]
        return {sid: self.resolve(env.manifest) for sid, env in environments.items()}


def stack_config(
    values: Mapping[str, Any], secrets: Mapping[str, str] | None = None
) -> tuple[dict[str, str], list[str]]:
    """Pulumi's wire form: full keys, structured values as JSON text, secret key list."""
    config: dict[str, str] = {}
    for key, value in values.items():
        full = key if ":" in key else f"dockyard:{key}"
        config[full] = value if isinstance(value, str) else json.dumps(value)
    secret_keys = []
    for name, value in (secrets or {}).items():
        config[f"dockyard:{name}"] = value
        secret_keys.append(f"dockyard:{name}")
    return config, secret_keys


def run_program(
    mocks: pulumi.runtime.Mocks,
    values: Mapping[str, Any],
    secrets: Mapping[str, str] | None = None,
    *,
    stack: str = "dev",
    recorder: ProgramRun | None = None,
) -> ProgramRun:
    """Run ``__main__.py`` with ``values`` as the stack's ``dockyard:`` config.

    Raises what the program raises (e.g. ``pulumi.RunError`` for a bad config).
    """
    run = recorder or ProgramRun()
    monitor = MockMonitor(mocks)
    pulumi.runtime.set_mocks(mocks, project="dockyard", stack=stack, preview=False, monitor=monitor)
    config, secret_keys = stack_config(values, secrets)
    runtime_config.set_all_config(config, secret_keys)
    SETTINGS.rpc_manager.clear()
    SETTINGS.outputs.clear()

    def program() -> None:
        run.module = runpy.run_path(str(PROGRAM), run_name="dockyard_program")

    try:
        _sync_await(run_pulumi_func(program))
    finally:
        run.urns = list(monitor.resources)
    return run


class RecordingMocks(pulumi.runtime.Mocks):
    """Answers like the docker and command providers would, without an engine: host
    ports are assigned from a counter (never guessed by the program), ids are unique."""

    def __init__(self, run: ProgramRun) -> None:
        self.run = run
        self._counter = 0

    def _next(self) -> int:
        self._counter += 1
        return self._counter

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict]:
        inputs = dict(args.inputs)
        outputs = dict(inputs)
        number = self._next()
        resource_id = f"{number:064x}"
        if args.typ == "docker:index/container:Container":
            ports = unwrap(inputs.get("ports")) or []
            outputs["ports"] = [
                {**port, "external": 32768 + number * 10 + i, "ip": "0.0.0.0", "protocol": "tcp"}
                for i, port in enumerate(ports)
            ]
        elif args.typ == "command:local:Command":
            if "docker inspect" in str(inputs.get("create", "")):
                outputs["stdout"] = "2026-11-22T10:00:00.123456789Z"
            else:
                outputs["stdout"] = ""
        elif args.typ == "docker:index/image:Image":
            outputs["repoDigest"] = ""
        elif args.typ == "docker:index/remoteImage:RemoteImage":
            outputs["imageId"] = f"sha256:{number:064x}"
            outputs["repoDigest"] = f"{inputs['name'].split(':')[0]}@sha256:{number:064x}"
        elif args.typ.startswith("kubernetes:") and isinstance(inputs.get("metadata"), dict):
            # What the API server adds to every object, and the node ports it allocates.
            outputs["metadata"] = {
                **inputs["metadata"],
                "uid": str(uuid.UUID(int=number)),
                "creationTimestamp": "2026-11-22T10:00:00Z",
                "resourceVersion": str(number),
            }
            if args.typ == "kubernetes:core/v1:Service" and inputs["spec"]["type"] == "NodePort":
                outputs["spec"] = {
                    **inputs["spec"],
                    "ports": [
                        {**port, "nodePort": 30000 + (number * 10 + i) % 2768}
                        for i, port in enumerate(inputs["spec"]["ports"])
                    ],
                }
        self.run.resources.append(Registered(args.typ, args.name, inputs, resource_id, outputs))
        return resource_id, outputs

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict, list | None]:
        return {}, None


def record(
    values: Mapping[str, Any], secrets: Mapping[str, str] | None = None, stack: str = "dev"
) -> ProgramRun:
    """Run the program against :class:`RecordingMocks` and return what it registered."""
    run = ProgramRun()
    return run_program(RecordingMocks(run), values, secrets, stack=stack, recorder=run)
