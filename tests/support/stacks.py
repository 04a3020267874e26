"""A stack realised on the real engine through the harness, for tests that need running
environments (integration and role tests)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import docker
import docker.errors
import pytest

from dockyard import storage
from dockyard.config import from_stack_file
from dockyard.environment import resource_prefix
from tests.harness.docker_mocks import DockerRealisingMocks, HarnessState
from tests.support.engine import RUN_ID, is_ready, remove_volume, wait_for
from tests.support.program import REPO, ProgramRun, run_program

RUNTIME_VARIABLE = "DOCKYARD_TEST_RUNTIME"
RUNTIMES = ("runc", "runsc")
# What Debian 12's runsc (0.0~20221219, ptrace platform, host network) cannot keep, as
# measured in docs/isolation.md ("Limits of runsc as packaged in Debian 12").
RUNSC_NO_PIDS_LIMIT = (
    "runsc 0.0~20221219 has no `update`: the engine cannot give a running gVisor container "
    "a pids limit, so runsc environments have none (docs/isolation.md)"
)
RUNSC_NO_STATX = (
    "runsc 0.0~20221219 answers coreutils 9.1's statx with EINVAL: `ls -l` and `stat` fail "
    "on every path (docs/isolation.md)"
)
# Measured by running the reliability suite on runsc (Debian 12 VM, Docker 20.10); not
# yet in docs/isolation.md:
RUNSC_OOM_KILLS_SANDBOX = (
    "runsc 0.0~20221219 enforces the memory limit on the whole sandbox: one process over "
    "it gets the sandbox (Sentry) OOM-killed by the host — every process of the environment "
    "dies and the engine's restart policy restarts it; the exec sees 'WaitPID failed: EOF' "
    "or hangs until the client's timeout (300 s), so it is not tried"
)
RUNSC_PROC_ENVIRON_READABLE = (
    "runsc 0.0~20221219 shows /proc/<pid>/environ as mode 0444: another uid in the sandbox "
    "reads the agent's environment, secrets the tmux session exports included (runc: "
    "Permission denied)"
)


def deploy_runtime() -> str:
    """The OCI runtime every environment a test deploys runs on: ``DOCKYARD_TEST_RUNTIME``
    (``make test-runsc`` sets ``runsc``), default ``runc``. Read here only, so the same
    suites prove the same promises on either runtime."""
    runtime = os.environ.get(RUNTIME_VARIABLE) or "runc"
    if runtime not in RUNTIMES:
        raise pytest.UsageError(
            f"{RUNTIME_VARIABLE}={runtime!r} is not allowed (allowed: {', '.join(RUNTIMES)})"
        )
    return runtime


def on_runtime(values: Mapping[str, Any], runtime: str) -> dict[str, Any]:
    """``values`` with ``runtime`` on every environment that names none itself or through
    its profile: a test that picks a runtime on purpose keeps it."""
    result = dict(values)
    environments = values.get("environments")
    if runtime == "runc" or not isinstance(environments, list):
        return result
    profiles = values.get("profiles") if isinstance(values.get("profiles"), dict) else {}
    default_profile = values.get("profile", "standard")
    changed = []
    for env in environments:
        if isinstance(env, dict) and "runtime" not in env:
            profile = profiles.get(env.get("profile", default_profile))
            if not (isinstance(profile, dict) and "runtime" in profile):
                env = {**env, "runtime": runtime}
        changed.append(env)
    result["environments"] = changed
    return result


def runsc_cannot(reason: str, *, run: bool = True) -> pytest.MarkDecorator:
    """Strict expected failure of a check runsc as packaged cannot keep (``reason``, as
    measured): a runsc that keeps it turns the mark into a failure to remove. ``run=False``
    where trying costs minutes on a shared engine (then it is reported, not tried)."""
    return pytest.mark.xfail(deploy_runtime() == "runsc", reason=reason, strict=True, run=run)


def runs_on_gvisor(container: docker.models.containers.Container) -> bool:
    """What the engine says the container runs on, not what the run asked for."""
    return container.attrs["HostConfig"].get("Runtime") == "runsc"


# Unique per test run, so a hit can only come from this run's secrets.
CANARIES = {
    "ANTHROPIC_API_KEY": f"sk-ant-canary-{RUN_ID}-a1",
    "OPENAI_API_KEY": f"sk-openai-canary-{RUN_ID}-b2",
    "GITHUB_TOKEN": f"ghp_canary_{RUN_ID}_c3",
}


@dataclass
class Deployed:
    """One stack on the engine: ``up`` runs the program (again), ``destroy`` undoes it."""

    client: docker.DockerClient
    stack: str
    cwd: Path
    values: dict[str, Any]
    secrets: dict[str, str]
    state: HarnessState = field(default_factory=HarnessState)
    run: ProgramRun | None = None

    def up(self, values: Mapping[str, Any] | None = None) -> ProgramRun:
        if values is not None:
            self.values = dict(values)
        mocks = DockerRealisingMocks(self.client, self.state)
        self.run = run_program(mocks, self.values, self.secrets, stack=self.stack)
        return self.run

    @property
    def manifests(self) -> dict[str, dict[str, Any]]:
        assert self.run is not None
        return self.run.exports()

    def container(self, session: str) -> docker.models.containers.Container:
        return self.client.containers.get(self.manifests[session]["container"]["id"])

    def wait_ready(self, timeout: float = 120) -> None:
        """Until every environment of the stack has its ready marker; a failure names the
        ones still pending."""
        pending = {s: self.container(s) for s in self.manifests}

        def all_ready() -> bool:
            for session, container in list(pending.items()):
                if is_ready(container):
                    del pending[session]
            return not pending

        wait_for(all_ready, timeout, interval=0.2, what=lambda: f"ready: {sorted(pending)}")

    def manifest_file(self, session: str) -> Path:
        return self.cwd / ".companion" / "cloud" / "environments" / f"{session}.json"

    def destroy(self) -> None:
        DockerRealisingMocks(self.client, self.state).destroy()

    def leftovers(self) -> list[str]:
        selector = {"label": f"dockyard.stack={self.stack}"}
        found = [
            f"container {c.name}" for c in self.client.containers.list(all=True, filters=selector)
        ]
        found += [f"network {n.name}" for n in self.client.networks.list(filters=selector)]
        found += [f"volume {v.name}" for v in self.client.volumes.list(filters=selector)]
        found += [f"disk images {d}" for d in disk_dirs(self.stack)]
        return found

    def drop_replacements(self) -> None:
        """Remove containers of this stack the harness did not create — what a health
        refresh put in place behind the state's back (users run `pulumi refresh`) — so
        the stack's own teardown can remove its networks."""
        known = {r.id for r in self.state.resources.values()}
        selector = {"label": f"dockyard.stack={self.stack}"}
        for container in self.client.containers.list(all=True, filters=selector):
            if container.id not in known:
                container.remove(force=True)

    def force_cleanup(self) -> None:
        """Safety net after a failed test: remove whatever carries this stack's label.
        Sweeps until a sweep finds nothing: when a run fails, registrations still in
        flight on other threads can create resources after the first sweep."""
        for _ in range(10):
            if not self._sweep():
                return
            time.sleep(1)

    def _sweep(self) -> int:
        selector = {"label": f"dockyard.stack={self.stack}"}
        found = 0
        for container in self.client.containers.list(all=True, filters=selector):
            container.remove(force=True)
            found += 1
        for network in self.client.networks.list(filters=selector):
            with contextlib.suppress(docker.errors.APIError):
                network.remove()
            found += 1
        for volume in self.client.volumes.list(filters=selector):
            with contextlib.suppress(docker.errors.APIError):
                remove_volume(volume)
            found += 1
        for directory in disk_dirs(self.stack):  # loop devices and images (dockyard.storage)
            subprocess.run(
                [
                    "sh",
                    "-c",
                    storage.DELETE_SCRIPT,
                    "sweep",
                    str(directory),
                    storage.link_dir(directory.name),
                ],
                capture_output=True,
                timeout=60,
                check=False,
            )
            found += 1
        return found


def disk_dirs(stack: str) -> list[Path]:
    """The disk image directories of ``stack``'s environments on this (the engine's) host."""
    root = Path(storage.DISKS_DIR)
    return sorted(root.glob(f"{resource_prefix(stack, '')}*")) if root.is_dir() else []


def stack_values(name: str) -> dict[str, Any]:
    raw, _ = from_stack_file(str(REPO / "stacks" / f"Pulumi.{name}.yaml"))
    return {key.split(":", 1)[1]: value for key, value in raw.items()}


@dataclass
class StackFactory:
    """Deploys stacks for one test module and tears every one of them down at its end.

    Each stack gets its own name (``it<label><run id>``), project directory and engine
    objects, so a test that replaces or destroys its stack disturbs no other test: give
    such a test its own ``label``."""

    client: docker.DockerClient
    tmp_path_factory: pytest.TempPathFactory
    deployed: dict[str, Deployed] = field(default_factory=dict)
    live: ClassVar[set[str]] = set()
    """Stack names deployed and not yet torn down, across every factory of the run."""

    def deploy(
        self, label: str, values: Mapping[str, Any], secrets: Mapping[str, str] | None = None
    ) -> Deployed:
        """Realise ``values`` (the stack's ``dockyard:`` config) as stack ``label``."""
        # Each run gets its own stack name, so nothing collides with a user's stacks.
        stack = f"it{label}{RUN_ID[:6]}"
        if stack in self.live:
            raise ValueError(f"stack label {label!r} is deployed already: give this one its own")
        cwd = self.tmp_path_factory.mktemp(f"project-{label}")
        runtime = deploy_runtime()
        self._require_runtime(runtime)
        all_values = on_runtime({"cwd": str(cwd), "image": {"tag": "it"}, **values}, runtime)
        target = Deployed(self.client, stack, cwd, all_values, dict(secrets or {}))
        self.deployed[label] = target
        self.live.add(stack)
        target.up()
        return target

    def _require_runtime(self, runtime: str) -> None:
        # A run asked for gVisor proves nothing on runc: fail, never fall back.
        if runtime != "runc" and runtime not in self.client.info().get("Runtimes", {}):
            pytest.fail(
                f"{RUNTIME_VARIABLE}={runtime} but the engine has no {runtime} runtime: "
                "register it with the docker_host role (docker_host_gvisor: true)"
            )

    def teardown(self) -> None:
        """Destroy every stack, then sweep what carries its label; a failure in one stack
        does not stop the others' teardown and is raised at the end."""
        failures = []
        for label, target in self.deployed.items():
            try:
                target.drop_replacements()
                target.destroy()
            except Exception as exc:  # keep tearing down the other stacks
                failures.append(f"{label}: {exc}")
            finally:
                target.force_cleanup()
                self.live.discard(target.stack)
        self.deployed.clear()
        if failures:
            raise RuntimeError("stack teardown failed:\n  " + "\n  ".join(failures))
