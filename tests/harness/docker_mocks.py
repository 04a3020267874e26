"""A Pulumi ``Mocks`` that realises every declared resource on the real Docker engine.

Why it exists: the Pulumi CLI (the engine) and its provider plugins (pulumi-docker,
pulumi-command) download from outside and cannot be installed on CI machines. This
harness stands in for both. The real program (``__main__.py``) runs unchanged under
``pulumi.runtime.set_mocks``; each resource it registers reaches :meth:`new_resource`,
which performs the operation the provider would perform, with exactly the declared
inputs, and returns the engine's real outputs (ids, names, resolved host ports). What
the program declares is thereby proven to run; ``pulumi up`` remains the user's path.

It also stands in for the engine's diff: the state persists across runs of the same
stack, so an unchanged resource is left alone (same outputs), a changed container is
replaced (the provider marks these inputs ForceNew), a changed ``local.Command`` re-runs
its ``create`` (pulumi-command's update without an ``update`` command), and one whose
``triggers`` changed is replaced: the new ``create`` runs, then the old resource's
``delete`` (pulumi-command marks ``triggers`` replace-on-change; Pulumi replaces
create-before-delete unless told otherwise). A resource whose URN is in ``replace`` is
replaced even when unchanged (``pulumi up --replace URN``); the URN comes from
:class:`UrnMonitor`, which must be the run's monitor for that. :meth:`destroy`
tears down as ``pulumi destroy`` does: a resource goes once everything that depends on
it has gone, and everything whose dependents have gone goes at the same time (Pulumi's
``--parallel`` is unbounded by default; here as many at once as the Docker client has
connections), running each command's ``delete``.

Supported resource types and inputs are listed in ``SUPPORTED``, and the sub-keys of
each nested block in ``NESTED``; anything else raises :class:`HarnessError` — an input
the harness cannot honour must never pass silently. Values it honours only in part are
checked too (``ALLOWED_VALUES``: ``gpus`` is ``all`` only, as in the provider; a port's
protocol is tcp or udp, published as given).
Secrets arrive wrapped (Pulumi's secret signature) and are unwrapped only to be applied.

The container sequence follows the provider (kreuzwerker/terraform-provider-docker):
create on the default network, disconnect ``bridge``, connect each
``networks_advanced`` network (aliases, IPv4 address), upload files, start (always: the
provider's ``start`` defaults to true whatever ``mustRun`` says), read back; with
``mustRun`` (default true) a container that is not running by then fails the create
and is removed, as the provider's "exited after creation" does.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
import tarfile
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

import docker
import docker.errors
import pulumi
from docker.types import DeviceRequest, Ulimit
from pulumi.runtime.mocks import MockMonitor

from tests.support.secrets import unwrap

SUPPORTED: dict[str, set[str]] = {
    # buildOnPreview: the SDK's default; the harness only ever performs `up`.
    "docker:index/image:Image": {"imageName", "build", "skipPush", "buildOnPreview"},
    "docker:index/remoteImage:RemoteImage": {"name", "keepLocally"},
    "docker:index/network:Network": {"name", "driver", "labels", "internal"},
    "docker:index/volume:Volume": {"name", "labels", "driverOpts"},
    "docker:index/container:Container": {
        "name",
        "image",
        "hostname",
        "user",
        "workingDir",
        "restart",
        "mustRun",
        "stopTimeout",
        "networksAdvanced",
        "ports",
        "volumes",
        "envs",
        "uploads",
        "labels",
        "cpuPeriod",
        "cpuQuota",
        "memory",
        "memorySwap",
        "ulimits",
        "capabilities",
        "securityOpts",
        "healthcheck",
        "gpus",
        "deviceRequests",
        "runtime",
        "sysctls",
        "tmpfs",
    },
    "command:local:Command": {"create", "delete", "environment", "triggers", "dir"},
    "pulumi:providers:docker": {"host"},
}
LABEL_KEYS = {"label", "value"}
NESTED: dict[str, dict[str, set[str]]] = {
    # Each nested block (an object, or a list of objects) of a type: the sub-keys the
    # harness honours. The provider's others (ports[].* beyond these, volumes[].
    # fromContainer, networksAdvanced[].ipv6Address, healthcheck keys it does not know,
    # uploads[].source/contentBase64/executable, ...) are refused.
    "docker:index/image:Image": {
        "build": {"context", "dockerfile", "args", "builderVersion"},
    },
    "docker:index/network:Network": {"labels": LABEL_KEYS},
    "docker:index/volume:Volume": {"labels": LABEL_KEYS},
    "docker:index/container:Container": {
        "ports": {"internal", "external", "ip", "protocol"},
        "networksAdvanced": {"name", "aliases", "ipv4Address"},
        "volumes": {"containerPath", "hostPath", "volumeName", "readOnly"},
        "uploads": {"file", "content", "permissions", "owner", "group"},
        "labels": LABEL_KEYS,
        "ulimits": {"name", "soft", "hard"},
        "capabilities": {"adds", "drops"},
        "healthcheck": {"tests", "interval", "timeout", "retries", "startPeriod", "startInterval"},
        "deviceRequests": {"driver", "count", "deviceIds", "capabilities", "options"},
    },
}
ALLOWED_VALUES: dict[tuple[str, str], set[str]] = {
    # The provider: "Currently, only the value `all` is supported."
    ("docker:index/container:Container", "gpus"): {"all"},
    ("docker:index/container:Container", "ports[].protocol"): {"tcp", "udp"},
    ("docker:index/container:Container", "restart"): {
        "no",
        "on-failure",
        "always",
        "unless-stopped",
    },
}
COMPONENT_PREFIX = "dockyard:index:"
BUILD_KEYS = NESTED["docker:index/image:Image"]["build"]
START_INTERVAL_MIN_API = (1, 44)
ENGINE_ID = re.compile(r"(sha256:)?[0-9a-f]{32,}")
NETWORK = "docker:index/network:Network"
VOLUME = "docker:index/volume:Volume"
CONTAINER = "docker:index/container:Container"
COMMAND = "command:local:Command"
DESTROY_PARALLEL = 10
"""Operations at once in :meth:`DockerRealisingMocks.destroy`: the docker SDK's default
connection pool per client, so no worker waits for a connection or opens a stray one."""


class HarnessError(RuntimeError):
    """The harness cannot realise a declared resource faithfully."""


class UrnMonitor(MockMonitor):
    """Pulumi's mock monitor, telling a :class:`DockerRealisingMocks` the URN of the
    resource it is about to realise (``MockResourceArgs`` carries no parent, so the mocks
    alone cannot know it): what ``replace`` is matched against."""

    def RegisterResource(self, request: Any) -> Any:
        mocks = self.mocks
        if isinstance(mocks, DockerRealisingMocks):
            mocks.registering.urn = self.make_urn(request.parent, request.type, request.name)
        try:
            return super().RegisterResource(request)
        finally:
            if isinstance(mocks, DockerRealisingMocks):
                mocks.registering.urn = None


def check_nested(typ: str, name: str, inputs: dict[str, Any]) -> None:
    """Refuse a nested sub-key the harness does not honour, or a value it honours only in
    part; the message names the resource, the key, what was given and what is allowed."""
    problems = []
    for key, allowed in NESTED.get(typ, {}).items():
        value = inputs.get(key)
        if value is None:
            continue
        items = value if isinstance(value, list) else [value]
        for index, item in enumerate(items):
            where = f"{key}[{index}]" if isinstance(value, list) else key
            if not isinstance(item, dict):
                problems.append(f"{where} is {type(item).__name__}, not an object")
                continue
            unknown = sorted(set(item) - allowed)
            if unknown:
                problems.append(
                    f"{where}: sub-keys {unknown} are not supported (supported: {sorted(allowed)})"
                )
    for (kind, path), allowed in ALLOWED_VALUES.items():
        if kind != typ:
            continue
        key, _, sub = path.partition("[].")
        values = (
            [item.get(sub) for item in inputs.get(key) or [] if isinstance(item, dict)]
            if sub
            else [inputs.get(key)]
        )
        for value in values:
            if value is not None and value not in allowed:
                problems.append(f"{path} {value!r} is not supported (supported: {sorted(allowed)})")
    if typ == CONTAINER:
        for index, volume in enumerate(inputs.get("volumes") or []):
            if isinstance(volume, dict) and bool(volume.get("hostPath")) == bool(
                volume.get("volumeName")
            ):
                problems.append(
                    f"volumes[{index}]: exactly one of hostPath and volumeName is supported "
                    "(no anonymous volume, no both)"
                )
    if problems:
        raise HarnessError(f"{typ} {name}: " + "; ".join(problems))


@dataclass
class Realised:
    type: str
    name: str
    inputs: dict[str, Any]
    id: str
    outputs: dict[str, Any]
    undo: Callable[[], None] | None = None


@dataclass
class HarnessState:
    """What exists on the engine for one stack, in creation order."""

    resources: dict[str, Realised] = field(default_factory=dict)
    log: list[str] = field(default_factory=list)
    """Every harness action, for tests that check nothing leaks into it."""


def duration_ns(text: str | None) -> int:
    if not text:
        return 0
    match = re.fullmatch(r"(\d+)(ms|s|m|h)", text)
    if not match:
        raise HarnessError(f"duration {text!r} is not <number><ms|s|m|h>")
    scale = {"ms": 10**6, "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9}[match.group(2)]
    return int(match.group(1)) * scale


class DockerRealisingMocks(pulumi.runtime.Mocks):
    def __init__(
        self,
        client: docker.DockerClient,
        state: HarnessState,
        replace: Iterable[str] = (),
    ) -> None:
        self.client = client
        self.state = state
        self.replace = frozenset(replace)
        """URNs to replace even when unchanged (``pulumi up --replace``)."""
        self.registering = threading.local()
        """The URN being registered on this thread (set by :class:`UrnMonitor`)."""
        self._lock = threading.Lock()
        version = client.version().get("ApiVersion", "1.0")
        self.api_version = tuple(int(p) for p in version.split(".")[:2])

    # --- Pulumi mock protocol -------------------------------------------------------

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict]:
        if args.typ.startswith(COMPONENT_PREFIX):
            return f"{args.typ}::{args.name}", {}  # components group children; nothing to realise
        supported = SUPPORTED.get(args.typ)
        if supported is None:
            raise HarnessError(f"resource type {args.typ} ({args.name}) is not supported")
        unknown = sorted(set(args.inputs) - supported)
        if unknown:
            raise HarnessError(f"{args.typ} {args.name}: inputs {unknown} are not supported")
        inputs = unwrap(dict(args.inputs))
        check_nested(args.typ, args.name, inputs)
        with self._lock:
            previous = self.state.resources.get(args.name)
        if previous is not None and previous.type == args.typ:
            forced = self.forced_replace()
            if previous.inputs == inputs and not forced:
                return previous.id, previous.outputs
            if args.typ == "command:local:Command":
                if forced or previous.inputs.get("triggers") != inputs.get("triggers"):
                    # Replace, create-before-delete: the new create, then the old delete.
                    result = self._record(args, inputs, *self._command(args.name, inputs))
                    if previous.undo is not None:
                        previous.undo()
                    return result
                # An update: pulumi-command runs `create` again (no `update` command).
                return self._record(
                    args, inputs, *self._command(args.name, inputs), replace=previous
                )
            self._undo(previous)
        handler = {
            "docker:index/image:Image": self._image,
            "docker:index/remoteImage:RemoteImage": self._remote_image,
            "docker:index/network:Network": self._network,
            "docker:index/volume:Volume": self._volume,
            "docker:index/container:Container": self._container,
            "command:local:Command": lambda name, i: self._command(name, i),
            "pulumi:providers:docker": self._provider,
        }[args.typ]
        return self._record(args, inputs, *handler(args.name, inputs))

    def forced_replace(self) -> bool:
        """Whether the resource being registered is one ``replace`` names."""
        return getattr(self.registering, "urn", None) in self.replace

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict, list | None]:
        raise HarnessError(f"function {args.token} is not supported")

    # --- Teardown -----------------------------------------------------------------------

    def destroy(self, parallel: int = DESTROY_PARALLEL) -> None:
        """Undo everything, dependents before what they depend on and independent
        resources at the same time; collect failures, raise at the end."""
        resources = list(self.state.resources.values())
        waiting_on = {r.name: 0 for r in resources}  # dependents not yet undone
        depends_on: dict[str, list[Realised]] = {}
        index = DependencyIndex(resources)
        for resource in resources:
            depends_on[resource.name] = dependencies(resource, resources, index)
            for dependency in depends_on[resource.name]:
                waiting_on[dependency.name] += 1
        failures: list[str] = []
        with contextlib.ExitStack() as stack:
            # Commands run as processes of their own (no docker SDK connection): their
            # own pool, so a helper's run never waits behind the engine calls and the
            # reverse. Networks: a pool of their own too, a third of the engine calls at
            # once — the engine removes networks one at a time, so a shared pool full of
            # them held every container and volume back behind them (40 environments:
            # the volumes and disk images went only after all 40 networks), and behind
            # the containers in a shared queue they started only once every container
            # was gone, when `pulumi destroy` (unbounded parallelism) removes a network
            # as soon as what uses it has gone.
            def pool(workers: int, name: str) -> ThreadPoolExecutor:
                return stack.enter_context(ThreadPoolExecutor(workers, thread_name_prefix=name))

            engine = pool(max(1, parallel), "harness-destroy")
            commands = pool(parallel, "harness-destroy-cmd") if parallel > 1 else engine
            networks = (
                pool(max(1, parallel // 3), "harness-destroy-net") if parallel > 1 else engine
            )
            running: dict[Future[None], Realised] = {}

            def submit(ready: Iterable[Realised]) -> None:
                for resource in ready:
                    del pending[resource.name]
                    chosen = {COMMAND: commands, NETWORK: networks}.get(resource.type, engine)
                    running[chosen.submit(self._undo, resource)] = resource

            # Newest first among the ready ones, as the serial teardown went.
            pending = {r.name: r for r in reversed(resources)}
            submit([r for r in pending.values() if waiting_on[r.name] == 0])
            while running or pending:
                if not running:  # a dependency cycle (cannot come from Pulumi): break it
                    submit([next(iter(pending.values()))])
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    resource = running.pop(future)
                    error = future.exception()
                    if error is not None:  # keep tearing down the rest
                        failures.append(f"{resource.type} {resource.name}: {error}")
                    released = []
                    for dependency in depends_on[resource.name]:
                        waiting_on[dependency.name] -= 1
                        if waiting_on[dependency.name] == 0 and dependency.name in pending:
                            released.append(dependency)
                    submit(released)
        if failures:
            raise HarnessError("teardown failed:\n  " + "\n  ".join(failures))

    def _undo(self, realised: Realised) -> None:
        if realised.undo is not None:
            realised.undo()
        with self._lock:
            self.state.resources.pop(realised.name, None)

    def _record(
        self,
        args: pulumi.runtime.MockResourceArgs,
        inputs: dict[str, Any],
        resource_id: str,
        outputs: dict[str, Any],
        undo: Callable[[], None] | None,
        replace: Realised | None = None,
    ) -> tuple[str, dict]:
        realised = Realised(args.typ, args.name, inputs, resource_id, outputs, undo)
        with self._lock:
            if replace is not None:
                self.state.resources.pop(replace.name, None)
            self.state.resources[args.name] = realised
            self.state.log.append(f"realised {args.typ} {args.name} id={resource_id}")
        # Outputs go back to the program with the declared (still wrapped) inputs.
        return resource_id, {**args.inputs, **outputs}

    # --- Resource types -------------------------------------------------------------------

    def _provider(self, name: str, inputs: dict[str, Any]) -> tuple[str, dict, None]:
        host = inputs.get("host")
        local = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
        if host and host != local:
            raise HarnessError(f"provider {name}: host {host} is not this test's engine ({local})")
        return f"provider-{name}", {}, None

    def _image(self, name: str, inputs: dict[str, Any]) -> tuple[str, dict, None]:
        build = inputs["build"]
        if build.get("builderVersion", "BuilderV1") != "BuilderV1":
            raise HarnessError(f"image {name}: only the classic builder is available here")
        tag = inputs["imageName"]
        try:
            # The tag carries a digest of the build inputs, so an existing tag is this build.
            image = self.client.images.get(tag)
        except docker.errors.ImageNotFound:
            context = build["context"]
            dockerfile = os.path.relpath(build.get("dockerfile", f"{context}/Dockerfile"), context)
            log = []
            for chunk in self.client.api.build(
                path=context,
                dockerfile=dockerfile,
                tag=tag,
                buildargs=build.get("args") or {},
                rm=True,
                forcerm=True,
                decode=True,
            ):
                log.extend(chunk.get("stream", "").splitlines())
                if "error" in chunk:
                    raise HarnessError(
                        f"image {name}: build failed: {chunk['error']}\n" + "\n".join(log[-30:])
                    ) from None
            image = self.client.images.get(tag)
        # Images are a build cache, kept across runs like the provider's keep-locally.
        return image.id, {"imageName": tag, "repoDigest": ""}, None

    def _remote_image(self, name: str, inputs: dict[str, Any]) -> tuple[str, dict, None]:
        try:
            image = self.client.images.get(inputs["name"])
        except docker.errors.ImageNotFound:
            image = self.client.images.pull(inputs["name"])
        digests = image.attrs.get("RepoDigests") or [""]
        return image.id, {"imageId": image.id, "repoDigest": digests[0]}, None

    def _network(self, name: str, inputs: dict[str, Any]) -> tuple[str, dict, Callable[[], None]]:
        network = self.client.networks.create(
            inputs["name"],
            driver=inputs.get("driver", "bridge"),
            labels=_labels(inputs),
            internal=bool(inputs.get("internal", False)),
            check_duplicate=True,
        )

        def undo() -> None:
            # One API call (not a look-up first): the engine removes networks one at a
            # time, so every round trip in here adds up over a stack's teardown.
            with contextlib.suppress(docker.errors.NotFound):
                self.client.api.remove_network(network.id)

        return network.id, {"name": inputs["name"]}, undo

    def _volume(self, name: str, inputs: dict[str, Any]) -> tuple[str, dict, Callable[[], None]]:
        volume = self.client.volumes.create(
            inputs["name"], driver_opts=inputs.get("driverOpts") or None, labels=_labels(inputs)
        )

        def undo() -> None:
            with contextlib.suppress(docker.errors.NotFound):
                self.client.api.remove_volume(volume.name, force=True)

        return volume.name, {"name": volume.name, "mountpoint": volume.attrs["Mountpoint"]}, undo

    def _container(self, name: str, inputs: dict[str, Any]) -> tuple[str, dict, Callable[[], None]]:
        api = self.client.api
        health = inputs.get("healthcheck")
        healthcheck = None
        if health:
            # 0 means "inherit from the image", as in Docker's API.
            healthcheck = {
                "Test": health["tests"],
                "Interval": duration_ns(health.get("interval")),
                "Timeout": duration_ns(health.get("timeout")),
                "Retries": int(health.get("retries", 0)),
                "StartPeriod": duration_ns(health.get("startPeriod")),
            }
            if health.get("startInterval"):
                # What Docker's Go client (the provider's) does on engines older than API 1.44.
                if self.api_version < START_INTERVAL_MIN_API:
                    raise HarnessError(
                        f"container {name}: healthcheck startInterval needs engine API >= 1.44, "
                        f"this engine has {'.'.join(map(str, self.api_version))}"
                    )
                healthcheck["StartInterval"] = duration_ns(health["startInterval"])
        binds, volume_binds = [], []
        for volume in inputs.get("volumes", []):
            source = volume.get("hostPath") or volume.get("volumeName")
            mode = "ro" if volume.get("readOnly") else "rw"
            (binds if volume.get("hostPath") else volume_binds).append(
                f"{source}:{volume['containerPath']}:{mode}"
            )
        # "PORT/PROTOCOL" -> (host address, host port or None: a random free one). The
        # provider's defaults: protocol tcp, address 0.0.0.0 (like `docker run -p PORT`).
        port_bindings: dict[str, tuple[str, int | None]] = {}
        for port in inputs.get("ports", []):
            key = f"{int(port['internal'])}/{port.get('protocol') or 'tcp'}"
            if key in port_bindings:
                raise HarnessError(f"container {name}: port {key} is declared twice")
            external = int(port["external"]) if port.get("external") else None
            port_bindings[key] = (port.get("ip") or "0.0.0.0", external)
        device_requests = [
            DeviceRequest(
                driver=r.get("driver", ""),
                count=int(r.get("count") or 0),
                device_ids=r.get("deviceIds"),
                capabilities=[r.get("capabilities", [])],
                options=r.get("options") or {},
            )
            for r in inputs.get("deviceRequests", [])
        ]
        if inputs.get("gpus") == "all":
            device_requests.append(DeviceRequest(count=-1, capabilities=[["gpu"]]))
        host_config = api.create_host_config(
            port_bindings=port_bindings,
            binds=binds + volume_binds,
            restart_policy={"Name": inputs["restart"]} if inputs.get("restart") else None,
            cpu_period=int(inputs["cpuPeriod"]) if inputs.get("cpuPeriod") else None,
            cpu_quota=int(inputs["cpuQuota"]) if inputs.get("cpuQuota") else None,
            mem_limit=int(inputs["memory"]) * 1024 * 1024 if inputs.get("memory") else None,
            memswap_limit=int(inputs["memorySwap"]) * 1024 * 1024
            if inputs.get("memorySwap")
            else None,
            ulimits=[
                Ulimit(name=u["name"], soft=int(u["soft"]), hard=int(u["hard"]))
                for u in inputs.get("ulimits", [])
            ],
            cap_drop=inputs.get("capabilities", {}).get("drops"),
            cap_add=inputs.get("capabilities", {}).get("adds"),
            security_opt=inputs.get("securityOpts"),
            device_requests=device_requests or None,
            runtime=inputs.get("runtime"),
            sysctls=inputs.get("sysctls"),
            tmpfs=inputs.get("tmpfs"),
        )
        created = api.create_container(
            inputs["image"],
            name=inputs["name"],
            hostname=inputs.get("hostname"),
            user=inputs.get("user", ""),
            working_dir=inputs.get("workingDir"),
            environment=inputs.get("envs", []),
            labels=_labels(inputs),
            ports=[(int(k.split("/")[0]), k.split("/")[1]) for k in port_bindings],
            host_config=host_config,
            healthcheck=healthcheck,
            stop_timeout=int(inputs["stopTimeout"]) if inputs.get("stopTimeout") else None,
        )
        container_id = created["Id"]

        def undo() -> None:
            with contextlib.suppress(docker.errors.NotFound):
                api.remove_container(container_id, force=True, v=False)

        try:
            networks = inputs.get("networksAdvanced", [])
            if networks:
                api.disconnect_container_from_network(container_id, "bridge")
                for network in networks:
                    api.connect_container_to_network(
                        container_id,
                        network["name"],
                        aliases=network.get("aliases") or None,
                        ipv4_address=network.get("ipv4Address") or None,
                    )
            uploads = inputs.get("uploads", [])
            if uploads:
                assert api.put_archive(container_id, "/", _upload_tar(uploads))
            api.start(container_id)
            attrs = api.inspect_container(container_id)
            state = attrs.get("State") or {}
            if inputs.get("mustRun", True) and not state.get("Running"):
                raise HarnessError(
                    f"container {name}: exited after creation (status {state.get('Status')!r}, "
                    f"exit code {state.get('ExitCode')!r}, error {state.get('Error')!r})"
                )
            ports = _read_ports(attrs, inputs)
        except Exception:
            undo()  # nothing half-created is left
            raise
        return (
            container_id,
            {"name": attrs["Name"].lstrip("/"), "ports": ports},
            undo,
        )

    def _command(self, name: str, inputs: dict[str, Any]) -> tuple[str, dict, Callable[[], None]]:
        environment = {**os.environ, **(inputs.get("environment") or {})}
        result = subprocess.run(
            ["/bin/sh", "-c", inputs["create"]],
            cwd=inputs.get("dir"),
            env=environment,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if result.returncode != 0:
            raise HarnessError(
                f"command {name}: create exited {result.returncode}: {result.stderr.strip()}"
            )
        delete = inputs.get("delete")

        def undo() -> None:
            if delete:
                subprocess.run(
                    ["/bin/sh", "-c", delete],
                    cwd=inputs.get("dir"),
                    env=environment,
                    capture_output=True,
                    text=True,
                    timeout=120,
                    check=True,
                )

        outputs = {"stdout": result.stdout.rstrip("\n"), "stderr": result.stderr.rstrip("\n")}
        return f"{name}-{abs(hash(result.stdout)) & 0xFFFFFFFF:08x}", outputs, undo


HEX_RUN = re.compile(r"[0-9a-f]{32,}")


class DependencyIndex:
    """The stack's resources looked up by (type, name output) and by engine id, and the
    commands by the values they hold: built once per teardown, so
    the dependencies of all of a stack's resources cost the size of their inputs, not
    the square of their number (a look-up per pair of resources took 1.9 s for 100
    environments, 0.02 s for 10)."""

    def __init__(self, resources: Iterable[Realised]) -> None:
        self.resources = list(resources)
        self.position = {id(r): i for i, r in enumerate(self.resources)}
        self.by_name: dict[tuple[str, str], list[Realised]] = {}
        self.by_engine_id: dict[str, list[Realised]] = {}
        self.named_by_command: dict[str, list[Realised]] = {}
        """A string value -> the commands holding it as a value of their own."""
        for r in self.resources:
            if r.type == "command:local:Command":
                for value in set(_strings(r.inputs)):
                    self.named_by_command.setdefault(value, []).append(r)
            self.by_name.setdefault((r.type, str(r.outputs.get("name", ""))), []).append(r)
            if ENGINE_ID.fullmatch(r.id):
                self.by_engine_id.setdefault(r.id.removeprefix("sha256:"), []).append(r)

    def engine_ids_in(self, text: str) -> list[Realised]:
        """Resources whose engine id is a run of hex digits in ``text``: a whole run, or,
        for a longer run, any 64-digit (or the id's own length) window of it."""
        found: list[Realised] = []
        for run in HEX_RUN.findall(text):
            if run in self.by_engine_id:
                found += self.by_engine_id[run]
            elif len(run) > 64:
                found += [r for key, rs in self.by_engine_id.items() if key in run for r in rs]
        return found


def dependencies(
    resource: Realised, resources: Iterable[Realised], index: DependencyIndex | None = None
) -> list[Realised]:
    """What ``resource`` uses, as far as its inputs show it (Pulumi records dependencies
    from the outputs that flowed into a resource's inputs; the mock protocol passes only
    the inputs): the networks, volumes and image a container names, and the commands
    registered before it that prepared one of its volumes; for a command, every
    container, network or volume whose name is one of its values; and for any resource,
    an engine id (container, image) inside one of its values, e.g. a command's
    environment carrying the container id. ``index``: :class:`DependencyIndex` of
    ``resources`` (built here when not given)."""
    index = index or DependencyIndex(resources)
    used: set[tuple[str, str]] = set()
    values = list(_strings(resource.inputs))
    prepared: list[Realised] = []
    if resource.type == CONTAINER:
        used |= {(NETWORK, n["name"]) for n in resource.inputs.get("networksAdvanced", [])}
        mounted = {
            v["volumeName"] for v in resource.inputs.get("volumes", []) if v.get("volumeName")
        }
        used |= {(VOLUME, name) for name in mounted}
        # A command registered before the container that names one of its volumes
        # prepared that volume for it (dockyard.storage's mounts, a restore): the program
        # says so with depends_on, which the mock protocol does not pass. The container
        # goes first, so a filesystem is never unmounted under a running container.
        here = index.position.get(id(resource), len(index.resources))
        prepared = sorted(
            {
                id(other): other
                for volume in mounted
                for other in index.named_by_command.get(volume, [])
                if index.position.get(id(other), here) < here
            }.values(),
            key=lambda r: index.position[id(r)],
        )
    elif resource.type == "command:local:Command":
        used |= {(kind, value) for kind in (NETWORK, VOLUME, CONTAINER) for value in values}
    found = [r for key in used for r in index.by_name.get(key, [])]
    # Engine ids (containers, images) are long hex strings: a hit is that id.
    found += index.engine_ids_in("\n".join(values))
    seen = {id(resource)} | {id(r) for r in prepared}
    uses = []
    for other in sorted(found, key=lambda r: index.position.get(id(r), 0)):
        if id(other) not in seen:
            seen.add(id(other))
            uses.append(other)
    return prepared + uses


def _strings(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def _labels(inputs: dict[str, Any]) -> dict[str, str]:
    return {item["label"]: item["value"] for item in inputs.get("labels", [])}


def _upload_tar(uploads: list[dict[str, Any]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for upload in uploads:
            data = upload["content"].encode()
            info = tarfile.TarInfo(upload["file"].lstrip("/"))
            info.size = len(data)
            info.mode = int(upload.get("permissions", "0644"), 8)
            info.uid = int(upload.get("owner", "0"))
            info.gid = int(upload.get("group", "0"))
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _read_ports(attrs: dict[str, Any], inputs: dict[str, Any]) -> list[dict[str, Any]]:
    """The provider's ``ports`` output: each declared port with the host port the engine
    bound (first binding, as the provider reads it)."""
    bound = attrs["NetworkSettings"]["Ports"] or {}
    ports = []
    for port in inputs.get("ports", []):
        internal = int(port["internal"])
        protocol = port.get("protocol") or "tcp"
        bindings = bound.get(f"{internal}/{protocol}") or []
        if not bindings:
            raise HarnessError(
                f"container {inputs['name']}: port {internal}/{protocol} was not published"
            )
        external = int(bindings[0]["HostPort"])
        if port.get("external") and int(port["external"]) != external:
            raise HarnessError(
                f"container {inputs['name']}: port {internal}/{protocol} was published on "
                f"{external}, not on the declared {int(port['external'])}"
            )
        ports.append(
            {
                "internal": internal,
                "external": external,
                "ip": bindings[0]["HostIp"],
                "protocol": protocol,
            }
        )
    return ports
