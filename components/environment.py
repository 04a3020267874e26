"""AgentEnvironment: one isolated environment per agent session (R-ENV-1..9, R-MAN-1).

Children, all parented to the component and named after it:
  <name>-net          its own bridge network
  <name>-workspace    named volumes: /workspace, /config, /checkpoints
  <name>-config
  <name>-checkpoints
  <name>-broker       CredentialBroker (``credentials: brokered`` only): holds the keys the
                      environment would otherwise get, on a network only the two share
  <name>-container    the agent container (non-root, no capabilities, limits, health)
  <name>-restore      local.Command (``restore: latest`` only): the session's latest backup
                      into its empty workspace, before the container starts
  <name>-runtime      local.Command: cgroup pids cap (pulumi-docker has no input for it)
                      and the container's creation time, read back from the engine
  <name>-manifest     local.Command: writes the v1 manifest file, removes it on destroy
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pulumi
import pulumi_command as command
import pulumi_docker as docker

from . import broker as credential_broker
from . import egress, storage
from .component import Component
from .config import HELPER_IMAGE, Volume
from .contract import (
    AGENT_UID,
    HEALTHCHECK_PATH,
    IDENTITY_LABELS,
    LABEL_BACKEND,
    LABEL_CREDENTIALS,
    LABEL_EGRESS,
    LABEL_ENVIRONMENT,
    LABEL_HOST,
    LABEL_LIMITS_CPUS,
    LABEL_LIMITS_MEMORY,
    LABEL_MANAGED,
    LABEL_SESSION,
    LABEL_STACK,
    LABEL_VOLUME,
    MANAGED_VALUE,
    SECRETS_DIR,
    STOP_TIMEOUT_S,
    WORKSPACE_MOUNT,
    environment_id,
)
from .environment_inputs import EnvironmentInputs
from .manifest_file import declare_host_file, declare_manifest_file, manifest_path

HEALTHCHECK_COMMAND = ["CMD", HEALTHCHECK_PATH]
CPU_PERIOD_US = 100_000
SSH_PORT = 22
SSH_CA_PATH = "/etc/dockyard/ssh/user_ca.pub"  # images/core/sshd_config: TrustedUserCAKeys

# `docker update` is the only way to set the cgroup pids limit on an existing container;
# the nproc ulimit is no substitute (it counts a uid's processes across all containers).
RUNTIME_SCRIPT = (
    credential_broker.PIDS_SCRIPT
    + " && docker inspect --format '{{.Created}}' \"$DOCKYARD_CONTAINER_ID\""
)
# Debian 12's runsc (0.0~20221219) has no `update`: the engine refuses a pids limit on a
# running gVisor container, so runsc environments go without one (docs/isolation.md) and
# the policy pack's pids rule flags them.
RUNSC_RUNTIME_SCRIPT = "docker inspect --format '{{.Created}}' \"$DOCKYARD_CONTAINER_ID\""


@dataclass(frozen=True, kw_only=True)
class AgentEnvironmentArgs(EnvironmentInputs):
    """Flat, already-validated inputs for one environment on a Docker engine: the
    backends' shared ones (:class:`EnvironmentInputs`) and these."""

    image_id: pulumi.Input[str]
    image_ref: pulumi.Input[str]
    helper_image: str = HELPER_IMAGE
    """The operator's image the root disk helpers run from (``helperImage``), never
    ``image_id``: that is the tenant's choice (dockyard.storage)."""
    workspace_host_path: str | None = None
    """Host directory the workspace volume binds to; None: the engine's volume storage."""
    manifest_root: str | None = None
    """The directory holding manifests and host files (dockyard.config's manifest root):
    mounted read-only over its place wherever a bind of its parent shows it."""
    docker_host: str | None = None
    runtime: str = "runc"
    """OCI runtime: runc (the engine's default) or runsc (gVisor, registered on the host)."""
    host_name: str | None = None
    """The ``dockerHosts`` name of this environment's engine (several-host stacks): a
    ``dockyard.host`` label and a ``<sessionId>.host.json`` beside the manifest."""
    restore_from: str | None = None
    """``restore: latest``: the backup settings (JSON, :class:`dockyard.backup.Settings`)
    to restore the session's latest snapshot from into its empty workspace."""
    ssh_ca_public_key: str | None = None
    """``ssh: true``: the stack's SSH user CA (dockyard.ssh); sshd runs, port 22 is
    published, only certificates from this CA for ``agent@<session>`` open it."""
    broker: credential_broker.BrokerPlan | None = None
    """``credentials: brokered``: the keys named in it stay with a broker; the environment
    gets its token in their place, and base URLs at the broker (docs/isolation.md)."""
    environment_id: str | None = None
    """The engine name of the container and network, prefix of the volumes (the stack's
    ``environment_id_of``); None: :func:`resource_prefix` of stack and session."""
    volume_names: Mapping[str, str] = field(default_factory=dict)
    """Declared named volume -> its engine name (the stack's ``volume_name_of``); one whose
    engine name starts with the environment id is the session's own: declared here, so it
    carries the labels and goes with the environment."""
    publish_address: str = "127.0.0.1"
    """Host address the published ports bind to: loopback by default, so no other
    environment's bridge reaches them through the gateway or the host (docs/access.md)."""


def resource_prefix(stack: str, session_id: str) -> str:
    """Engine-side name shared by the container, network and volumes of a stack file's
    environment (and of sessions named v1: dockyard.contract.environment_id)."""
    return environment_id(stack, session_id)


class AgentEnvironment(Component):
    container_id: pulumi.Output[str]
    container_name: pulumi.Output[str]
    manifest: pulumi.Output[dict]
    manifest_path: str

    def __init__(
        self, name: str, args: AgentEnvironmentArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("AgentEnvironment", name, opts)
        prefix = args.environment_id or resource_prefix(args.stack, args.session_id)
        labels = {
            **args.labels,
            LABEL_ENVIRONMENT: prefix,
            LABEL_SESSION: args.session_id,
            LABEL_BACKEND: args.backend,
            LABEL_STACK: args.stack,
            LABEL_MANAGED: MANAGED_VALUE,
            **({LABEL_HOST: args.host_name} if args.host_name else {}),
            LABEL_EGRESS: args.egress,
        }

        network = docker.Network(
            f"{name}-net",
            name=prefix,
            driver="bridge",
            # The host's egress guard finds allowlisted networks by these labels.
            labels=_labels(
                docker.NetworkLabelArgs,
                {**labels, **egress.labels(args.egress, list(args.egress_rules))},
            ),
            opts=self.child,
        )
        # Every writable path gets a size bound (dockyard.storage, docs/stacks.md).
        # Its resources are declared with the mounts, after the volumes (disks.mount).
        disks = storage.declare(
            prefix, storage.bounds_of(args.limits), args.helper_image, args.docker_host,
            workspace_bound_elsewhere=bool(args.workspace_host_path),
            secret_names=[*args.secrets, *(args.broker.keys if args.broker else ())],
        )  # fmt: skip
        volumes = {
            role: docker.Volume(
                f"{name}-{role}",
                name=f"{prefix}-{role}",
                labels=_labels(docker.VolumeLabelArgs, {**labels, LABEL_VOLUME: role}),
                # Still a named volume (labelled, listed, removed with the environment),
                # but its data lives in the given host directory, which outlives it.
                driver_opts=(
                    {"type": "none", "o": "bind", "device": args.workspace_host_path}
                    if role == "workspace" and args.workspace_host_path
                    else disks.volume_options(role)
                ),
                opts=self.child,
            )
            for role in ("workspace", "config", "checkpoints", *disks.extra_roles)
        }
        # The bounded filesystems go onto those (plain) volumes' directories.
        mounted = disks.mount(
            f"{name}-disk-mounts",
            {role: volume.name for role, volume in volumes.items()},
            pulumi.ResourceOptions(parent=self, depends_on=list(volumes.values())),
        )
        # The session's own named volumes (issue 25.6): labelled, removed with it.
        owned = {
            source: docker.Volume(
                f"{name}-vol-{source}",
                name=engine_name,
                labels=_labels(docker.VolumeLabelArgs, {**labels, LABEL_VOLUME: f"vol-{source}"}),
                opts=self.child,
            ).name
            for source, engine_name in sorted(args.volume_names.items())
            if engine_name.startswith(f"{prefix}-")
        }

        # Between the workspace volume and the container, so the agent never sees a
        # half-restored workspace. Create only: nothing to undo on destroy.
        restored = []
        if args.restore_from:
            restored.append(
                command.local.Command(
                    f"{name}-restore",
                    create=f"{shlex.quote(sys.executable)} -m {__package__}.sessions.restore_at_create restore-if-empty",
                    dir=str(Path(__file__).resolve().parents[1]),
                    environment={
                        "DOCKYARD_BACKUP": args.restore_from,
                        "DOCKYARD_BACKUP_VOLUME": volumes["workspace"].name,
                        "DOCKYARD_BACKUP_STACK": args.stack,
                        "DOCKYARD_BACKUP_SESSION": args.session_id,
                    },
                    opts=pulumi.ResourceOptions(
                        parent=self, depends_on=[volumes["workspace"], *mounted]
                    ),
                )
            )

        networks = [docker.ContainerNetworksAdvancedArgs(name=network.name)]
        secrets = dict(args.secrets)
        broker_env: list[str] = []
        broker_files: list[docker.ContainerUploadArgs] = []
        if args.broker is not None:
            broker = credential_broker.CredentialBroker(
                f"{name}-broker",
                credential_broker.CredentialBrokerArgs(
                    environment_id=prefix,
                    plan=args.broker,
                    labels={k: labels[k] for k in IDENTITY_LABELS},
                    docker_host=args.docker_host,
                ),
                opts=self.child,
            )
            # Its own network first: an internal one never takes the default route.
            networks.append(docker.ContainerNetworksAdvancedArgs(name=broker.network_name))
            secrets.update(dict.fromkeys(args.broker.keys, broker.token))
            broker_env = credential_broker.environment_variables(
                broker.host, args.broker.services, args.broker.upstreams
            )
            if "openai" in args.broker.services:
                broker_files.append(
                    docker.ContainerUploadArgs(
                        file=credential_broker.CODEX_SYSTEM_CONFIG,
                        content=credential_broker.codex_config(broker.host),
                        permissions="0644",
                        owner="0",
                        group="0",
                    )
                )

        container = docker.Container(
            f"{name}-container",
            name=prefix,
            image=args.image_id,
            hostname=args.session_id,
            user=f"{AGENT_UID}:{AGENT_UID}",
            working_dir="/workspace",
            restart="unless-stopped",
            # Only when asked: runc is the engine's default and stays out of the inputs.
            runtime=None if args.runtime == "runc" else args.runtime,
            must_run=True,
            stop_timeout=STOP_TIMEOUT_S,
            networks_advanced=networks,
            ports=[
                docker.ContainerPortArgs(internal=port, ip=args.publish_address)
                for port in _published(args)
            ],
            # sshd runs as the agent, without capabilities: port 22 needs this namespaced
            # sysctl (it only lowers the bar inside the environment's own network).
            sysctls=(
                {"net.ipv4.ip_unprivileged_port_start": "22"} if args.ssh_ca_public_key else None
            ),
            volumes=[
                *(
                    docker.ContainerVolumeArgs(
                        container_path=storage.mount_path(role),
                        volume_name=volume.name,
                        read_only=False,
                    )
                    for role, volume in volumes.items()
                ),
                *(_declared_volume(v, args.volume_names, owned) for v in args.volumes),
                *_manifest_guards(args),
            ],
            envs=[
                f"DOCKYARD_BACKEND={args.backend}",
                f"DOCKYARD_SESSION_ID={args.session_id}",
                *(["DOCKYARD_SSH=1"] if args.ssh_ca_public_key else []),
                *broker_env,
                *(f"{key}={value}" for key, value in args.env.items()),
            ],
            uploads=[
                docker.ContainerUploadArgs(
                    file=f"{SECRETS_DIR}/{secret_name}",
                    content=value,
                    permissions="0400",
                    owner=str(AGENT_UID),
                    group=str(AGENT_UID),
                )
                for secret_name, value in secrets.items()
            ]
            + [
                docker.ContainerUploadArgs(
                    file=SSH_CA_PATH, content=key + "\n", permissions="0644", owner="0", group="0"
                )
                for key in [args.ssh_ca_public_key]
                if key
            ]
            + broker_files,
            # What it reserves, so quotas and placement count a host with one list call.
            labels=_labels(
                docker.ContainerLabelArgs,
                {
                    **labels,
                    LABEL_CREDENTIALS: "brokered" if args.broker is not None else "files",
                    LABEL_LIMITS_CPUS: f"{args.limits.cpus:g}",
                    LABEL_LIMITS_MEMORY: str(args.limits.memory),
                },
            ),
            # A CFS quota, not `cpus`: the engine rejects `cpus` above the host's core
            # count ("Range of CPUs is from 0.01 to 2.00"), so the 4-CPU default would fail
            # on a 2-core host. A quota above the host's cores simply does not bind.
            cpu_period=CPU_PERIOD_US,
            cpu_quota=round(args.limits.cpus * CPU_PERIOD_US),
            memory=args.limits.memory,
            # Equal to memory: no swap on top, so the limit is the limit and a hog is
            # OOM-killed instead of dragging the host into swap.
            memory_swap=args.limits.memory,
            ulimits=[
                docker.ContainerUlimitArgs(
                    name="nofile", soft=args.limits.nofile_soft, hard=args.limits.nofile_hard
                ),
                *disks.ulimits(docker.ContainerUlimitArgs),
            ],
            tmpfs=disks.tmpfs,
            # The entrypoint runs as the agent and needs no capability at all.
            capabilities=docker.ContainerCapabilitiesArgs(drops=["ALL"]),
            security_opts=["no-new-privileges:true"],
            healthcheck=docker.ContainerHealthcheckArgs(
                tests=HEALTHCHECK_COMMAND,
                interval=args.healthcheck.interval,
                timeout=args.healthcheck.timeout,
                retries=args.healthcheck.retries,
                start_period=args.healthcheck.start_period,
                start_interval=args.healthcheck.start_interval,
            ),
            **_gpu_inputs(args.gpu),
            opts=pulumi.ResourceOptions(
                parent=self, depends_on=[*volumes.values(), *mounted, *restored]
            ),
        )

        engine_env = {"DOCKER_HOST": args.docker_host} if args.docker_host else {}
        runtime = command.local.Command(
            f"{name}-runtime",
            create=RUNSC_RUNTIME_SCRIPT if args.runtime == "runsc" else RUNTIME_SCRIPT,
            environment={
                **engine_env,
                "DOCKYARD_CONTAINER_ID": container.id,
                "DOCKYARD_PIDS_LIMIT": str(args.limits.pids),
            },
            triggers=[container.id, args.limits.pids],
            opts=self.child,
        )

        self.manifest = pulumi.Output.all(
            container.id, container.name, container.ports, runtime.stdout, args.image_ref
        ).apply(
            lambda values: args.manifest(
                environment_id=prefix,
                created_at=values[3],
                image=values[4],
                container_id=values[0],
                container_name=values[1],
                ports=values[2],
            )
        )
        self.manifest_path = manifest_path(args.manifest_dir, args.session_id)
        declare_manifest_file(name, self.manifest, self.manifest_path, self.child)
        if args.host_name:
            declare_host_file(
                name,
                args.session_id,
                args.host_name,
                args.docker_host,
                self.manifest_path,
                self.child,
            )

        self.container_id = container.id
        self.container_name = container.name
        self.register_outputs(
            {
                "containerId": self.container_id,
                "containerName": self.container_name,
                "manifest": self.manifest,
                "manifestPath": self.manifest_path,
            }
        )


def _published(args: AgentEnvironmentArgs) -> list[int]:
    ports = list(args.ports)
    if args.ssh_ca_public_key and SSH_PORT not in ports:
        ports.append(SSH_PORT)
    return ports


def _labels(kind: type, labels: Mapping[str, str]) -> list:
    return [kind(label=key, value=value) for key, value in sorted(labels.items())]


def _manifest_guards(args: AgentEnvironmentArgs) -> list[docker.ContainerVolumeArgs]:
    """Read-only mounts of the manifest root over its place inside every bind that shows it:
    host tools read manifests and host files there, so the agent must not write them.
    (Configuration refuses binds that would hold it deeper than one level.)"""
    if not args.manifest_root:
        return []
    parent, name = os.path.split(args.manifest_root)
    binds = [(v.source, v.target) for v in args.volumes if v.is_bind]
    if args.workspace_host_path:
        binds.append((args.workspace_host_path, WORKSPACE_MOUNT))
    return [
        docker.ContainerVolumeArgs(
            container_path=f"{target.rstrip('/')}/{name}",
            host_path=args.manifest_root,
            read_only=True,
        )
        for source, target in binds
        if source == parent
    ]


def _declared_volume(
    volume: Volume, names: Mapping[str, str], owned: Mapping[str, pulumi.Output[str]]
) -> docker.ContainerVolumeArgs:
    if volume.is_bind:
        return docker.ContainerVolumeArgs(
            container_path=volume.target, host_path=volume.source, read_only=volume.read_only
        )
    return docker.ContainerVolumeArgs(
        container_path=volume.target,
        volume_name=owned.get(volume.source) or names.get(volume.source, volume.source),
        read_only=volume.read_only,
    )


def _gpu_inputs(gpu: str | Sequence[str] | None) -> dict:
    if gpu is None:
        return {}
    if gpu == "all":
        return {"gpus": "all"}
    return {
        "device_requests": [
            docker.ContainerDeviceRequestArgs(
                driver="nvidia", device_ids=list(gpu), capabilities=["gpu"]
            )
        ]
    }
