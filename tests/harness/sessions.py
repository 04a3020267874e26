"""A sessions driver that realises each session's stack on the real engine through the
Docker-realising harness, for the places the Pulumi CLI cannot go (CI machines here).

``DOCKYARD_DRIVER=tests.harness.sessions:HarnessDriver`` makes the ``dockyard`` command
and ``dockyard.sessions`` use it: the same plan and the same program
(``dockyard.program.run``) reach :class:`DockerRealisingMocks` instead of the Automation
API. Each session stack's harness state is kept in ``<state>/harness/<stack>.json``
(mode 0600) so ``up`` in one process and ``down`` in another see the same resources, as
Pulumi's state would. Secret file contents are stored only as SHA-256 digests: enough to
tell whether a container's uploads changed, never the values.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pulumi
import pulumi.runtime
from pulumi.runtime import config as runtime_config
from pulumi.runtime.settings import SETTINGS
from pulumi.runtime.stack import run_pulumi_func
from pulumi.runtime.sync_await import _sync_await

from dockyard import program as stack_program
from dockyard.config import StackConfig
from dockyard.sessions import driver as session_driver
from dockyard.sessions.driver import IMAGES_STACK, PROJECT, container_urn
from dockyard.sessions.request import SessionPlan
from dockyard.sessions.settings import Paths
from tests.harness.docker_mocks import (
    DockerRealisingMocks,
    HarnessError,
    HarnessState,
    Realised,
    UrnMonitor,
)
from tests.support.secrets import unwrap

CONTAINER = "docker:index/container:Container"
# One program per process at a time: Pulumi's runtime settings are process-global.
_RUN_LOCK = threading.Lock()


def _digested(inputs: dict[str, Any]) -> dict[str, Any]:
    """Inputs as persisted: upload contents replaced by their digest."""
    uploads = inputs.get("uploads")
    if not uploads:
        return inputs
    return {
        **inputs,
        "uploads": [
            {
                **u,
                "content": "sha256:"
                + hashlib.sha256(str(u.get("content", "")).encode()).hexdigest(),
            }
            for u in uploads
        ],
    }


class PersistentMocks(DockerRealisingMocks):
    """The harness, comparing against persisted (digested) inputs."""

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict]:
        previous = self.state.resources.get(args.name)
        if (
            previous is not None
            and previous.type == args.typ
            and previous.undo is not None
            and previous.inputs == _digested(unwrap(dict(args.inputs)))
            and not self.forced_replace()
        ):
            return previous.id, previous.outputs
        return super().new_resource(args)


def _undo_for(client: docker.DockerClient, realised: Realised) -> Callable[[], None] | None:
    """How to remove a persisted resource (what the live harness would have done)."""
    kind, ident, inputs = realised.type, realised.id, realised.inputs
    if kind == CONTAINER:
        return lambda: _suppress(lambda: client.api.remove_container(ident, force=True, v=False))
    if kind == "docker:index/network:Network":
        return lambda: _suppress(lambda: client.networks.get(ident).remove())
    if kind == "docker:index/volume:Volume":
        return lambda: _suppress(lambda: client.volumes.get(ident).remove(force=True))
    if kind == "command:local:Command" and inputs.get("delete"):

        def delete() -> None:
            subprocess.run(
                ["/bin/sh", "-c", inputs["delete"]],
                cwd=inputs.get("dir"),
                env={**os.environ, **(inputs.get("environment") or {})},
                capture_output=True,
                text=True,
                timeout=120,
                check=True,
            )

        return delete
    return None


def _suppress(action: Callable[[], Any]) -> None:
    with contextlib.suppress(docker.errors.NotFound):
        action()


class HarnessDriver:
    def __init__(self, where: Paths) -> None:
        self.where = where
        self.client = docker.from_env()

    # --- persisted state -----------------------------------------------------------------

    def _file(self, stack_name: str) -> Path:
        return self.where.state / "harness" / f"{stack_name}.json"

    def _load(self, stack_name: str) -> HarnessState:
        state = HarnessState()
        path = self._file(stack_name)
        if path.is_file():
            for item in json.loads(path.read_text(encoding="utf-8")):
                realised = Realised(**item, undo=None)
                realised.undo = _undo_for(self.client, realised)
                state.resources[realised.name] = realised
        return state

    def _save(self, stack_name: str, state: HarnessState) -> None:
        path = self._file(stack_name)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        items = [
            {
                "type": r.type,
                "name": r.name,
                "inputs": _digested(r.inputs),
                "id": r.id,
                "outputs": r.outputs,
            }
            for r in state.resources.values()
        ]
        if not items:
            path.unlink(missing_ok=True)
            return
        fd = os.open(f"{path}.tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(items, handle)
        os.replace(f"{path}.tmp", path)

    # --- running the program ---------------------------------------------------------------

    def _run(
        self,
        stack_name: str,
        body: Callable[[], Any],
        secrets: Mapping[str, str],
        replace: frozenset[str] = frozenset(),
    ) -> Any:
        """Run ``body`` as the stack's program; ``replace``: URNs replaced even when
        unchanged (``pulumi up --replace``), each of which the program must register."""
        with _RUN_LOCK:
            state = self._load(stack_name)
            mocks = PersistentMocks(self.client, state, replace=replace)
            monitor = UrnMonitor(mocks)
            pulumi.runtime.set_mocks(
                mocks, project=PROJECT, stack=stack_name, preview=False, monitor=monitor
            )
            runtime_config.set_all_config(
                {f"dockyard:{k}": v for k, v in secrets.items()},
                [f"dockyard:{k}" for k in secrets],
            )
            SETTINGS.rpc_manager.clear()
            SETTINGS.outputs.clear()
            result: dict[str, Any] = {}
            try:
                _sync_await(run_pulumi_func(lambda: result.update(value=body())))
                value = _sync_await(pulumi.Output.from_input(result["value"]).future())
                unknown = sorted(replace - set(monitor.resources))
                if unknown:
                    raise HarnessError(
                        f"replace targets {unknown} are not resources of the program; it "
                        f"registered {sorted(monitor.resources)}"
                    )
                return value
            finally:
                self._save(stack_name, state)

    def up(
        self, plan: SessionPlan, secrets: Mapping[str, str], progress: Callable[[str], None]
    ) -> dict[str, Any]:
        progress(f"harness: realising {plan.stack_name} on the engine")
        return dict(
            self._run(
                plan.stack_name,
                lambda: stack_program.run(plan.config)[plan.session_id].manifest,
                secrets,
            )
        )

    def recreate(
        self, plan: SessionPlan, secrets: Mapping[str, str], progress: Callable[[str], None]
    ) -> dict[str, Any]:
        # What the Pulumi driver asks of `pulumi up --replace`: only the session's
        # container is replaced (and what depends on its id, by the program's own diff).
        target = container_urn(plan)
        progress(f"harness: replacing {target}")
        return dict(
            self._run(
                plan.stack_name,
                lambda: stack_program.run(plan.config)[plan.session_id].manifest,
                secrets,
                replace=frozenset({target}),
            )
        )

    def destroy(self, plan: SessionPlan, progress: Callable[[str], None]) -> None:
        progress(f"harness: destroying {plan.stack_name}")
        state = self._load(plan.stack_name)
        try:
            DockerRealisingMocks(self.client, state).destroy()
        finally:
            self._save(plan.stack_name, state)

    def build_image(self, config: StackConfig, progress: Callable[[str], None]) -> str:
        progress("harness: building the core image")
        return str(
            self._run(IMAGES_STACK, lambda: session_driver.images_program(config).image_id, {})
        )
