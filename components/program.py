"""The dockyard Pulumi program, as one function.

``__main__.py`` (``pulumi up`` on a stack file) and the per-session Automation API
(:mod:`dockyard.sessions`) both call :func:`run` with a validated
:class:`~dockyard.config.StackConfig`: one program, two ways in.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import replace

import pulumi
import pulumi_docker as docker

from . import broker as credential_broker
from . import placement, ssh
from .config import Environment, StackConfig
from .environment import AgentEnvironment, AgentEnvironmentArgs
from .image import AgentImage, AgentImageArgs

SecretReader = Callable[[str], pulumi.Output[str]]


def _config_secret(name: str) -> pulumi.Output[str]:
    return pulumi.Config("dockyard").require_secret(name)


def environment_args(
    cfg: StackConfig,
    env: Environment,
    image_id: pulumi.Input[str],
    image_ref: pulumi.Input[str],
    secrets: Mapping[str, pulumi.Input[str]],
    host: str | None = None,
    broker_image: pulumi.Input[str] | None = None,
) -> AgentEnvironmentArgs:
    """What :class:`AgentEnvironment` gets for ``env`` of ``cfg``. One mapping, shared by
    this program and the component provider (:mod:`dockyard.provider`), so an
    environment declared from TypeScript or YAML is built exactly like one in a stack.
    ``host`` is its ``dockerHosts`` name in a several-host stack; ``broker_image`` the
    broker image shared on its engine (None: a brokered environment builds its own)."""
    return AgentEnvironmentArgs.of(
        cfg,
        env,
        secrets,
        image_id=image_id,
        image_ref=image_ref,
        helper_image=cfg.helper_image,
        workspace_host_path=env.workspace_host_path,
        environment_id=cfg.environment_id_of(env),
        volume_names={
            vol.source: cfg.volume_name_of(env, vol.source)
            for vol in env.volumes
            if not vol.is_bind
        },
        manifest_root=cfg.manifest_root,
        docker_host=cfg.docker_hosts[host] if host else cfg.docker_host,
        runtime=cfg.runtime_of(env),
        host_name=host,
        publish_address=cfg.publish_address,
        broker=broker_plan(cfg, env, secrets, broker_image),
        ssh_ca_public_key=ssh.ensure_ca(cfg.stack) if env.ssh else None,
        restore_from=(
            json.dumps(cfg.backup.model_dump(), sort_keys=True)
            if cfg.backup is not None and env.restore == "latest"
            else None
        ),
    )


def broker_plan(
    cfg: StackConfig,
    env: Environment,
    secrets: Mapping[str, pulumi.Input[str]],
    image_id: pulumi.Input[str] | None,
) -> credential_broker.BrokerPlan | None:
    """``credentials: brokered``: which of the environment's secrets its broker holds,
    and where it forwards them (``dockyard:broker``)."""
    if env.credentials != "brokered":
        return None
    ca_pem = None
    if cfg.broker.ca_file:
        with open(cfg.broker.ca_file, encoding="utf-8") as handle:
            ca_pem = handle.read()
    return credential_broker.BrokerPlan(
        keys={n: v for n, v in secrets.items() if n in credential_broker.SERVICE_OF},
        upstreams=cfg.broker.model_dump(exclude={"ca_file"}),
        ca_pem=ca_pem,
        image_id=image_id,
        build_args=cfg.image.args,
        tag_prefix=cfg.image.tag or cfg.stack,
        extra_ca=cfg.image.extra_ca,
    )


def run(cfg: StackConfig, secret: SecretReader = _config_secret) -> dict[str, AgentEnvironment]:
    """Declare every environment of ``cfg`` and export their manifests.

    ``secret`` reads a secret value by name as a Pulumi secret output (the stack's
    secret config by default). Returns the environments by session id.
    """
    if cfg.backend == "kubernetes":
        # pulumi-kubernetes is an optional extra: imported only for this backend.
        from .kubernetes import declare_kubernetes

        on_cluster = declare_kubernetes(cfg, secret)
        pulumi.export("environments", {sid: e.manifest for sid, e in on_cluster.items()})
        pulumi.export("manifestDir", cfg.manifest_path)
        return on_cluster  # type: ignore[return-value]  # the same .manifest contract
    # host name (None: the one engine) -> the options that send resources to its engine
    engines: dict[str | None, pulumi.ResourceOptions] = {None: pulumi.ResourceOptions()}
    if cfg.docker_host:
        # Every resource below goes to this engine, e.g. ssh://agent@team-host.
        provider = docker.Provider("docker-host", host=cfg.docker_host)
        engines[None] = pulumi.ResourceOptions(providers=[provider])
    placed: dict[str, str | None] = {env.session_id: None for env in cfg.environments}
    if cfg.docker_hosts:
        for host, url in sorted(cfg.docker_hosts.items()):
            engines[host] = pulumi.ResourceOptions(
                providers=[docker.Provider(f"docker-host-{host}", host=url)]
            )
        try:
            placed.update(placement.place(cfg))
        except placement.PlacementError as error:
            raise pulumi.RunError(str(error)) from None

    images: dict[tuple[str, str | None, str], AgentImage] = {}

    def image_for(
        variant: str, ref: str | None, host: str | None, layer: str = "core"
    ) -> AgentImage:
        """One AgentImage per variant (or published reference), language variant (layer)
        and engine, shared by the environments on that engine. A layer (python, node, go)
        is built FROM the image the environment would run without it."""
        key = (ref or variant, host, layer)
        if key not in images:
            source = cfg.gpu_image if variant == "gpu" else cfg.image
            name = (
                # Named after what it is, so reordering environments renames nothing.
                f"image-{variant}"
                if not ref
                else f"image-{hashlib.sha256(ref.encode()).hexdigest()[:10]}"
            )
            args = AgentImageArgs(
                variant=variant,
                ref=ref or source.ref,
                build_args=source.args,
                repository="dockyard-gpu" if variant == "gpu" else "dockyard-core",
                tag_prefix=source.tag or cfg.stack,
                extra_ca=source.extra_ca,
            )
            if layer != "core":
                name = f"{name}-{layer}"
                args = replace(
                    args,
                    variant=layer,
                    ref=None,
                    base=image_for(variant, ref, host),
                    base_variant=variant,
                    repository=f"dockyard-{layer}"
                    if variant == "core"
                    else f"dockyard-{variant}-{layer}",
                )
            images[key] = AgentImage(
                name if host is None else f"{name}-{host}", args, opts=engines[host]
            )
        return images[key]

    brokers: dict[str | None, AgentImage] = {}

    def broker_image_for(env: Environment, host: str | None) -> pulumi.Input[str] | None:
        """One broker image per engine, for the brokered environments on it."""
        if env.credentials != "brokered":
            return None
        if host not in brokers:
            args = credential_broker.broker_image_args(
                cfg.image.tag or cfg.stack, cfg.image.args, cfg.image.extra_ca
            )
            brokers[host] = AgentImage(
                "image-broker" if host is None else f"image-broker-{host}",
                args,
                opts=engines[host],
            )
        return brokers[host].image_id

    environments: dict[str, AgentEnvironment] = {}
    for env in cfg.environments:
        profile = cfg.profile_of(env)
        host = placed[env.session_id]
        image = image_for("gpu" if profile.gpu else "core", env.image, host, cfg.variant_of(env))
        environments[env.session_id] = AgentEnvironment(
            f"env-{env.session_id}",
            environment_args(
                cfg,
                env,
                image.image_id,
                image.image_ref,
                {name: secret(name) for name in env.secrets},
                host,
                broker_image_for(env, host),
            ),
            opts=engines[host],
        )

    pulumi.export("environments", {sid: e.manifest for sid, e in environments.items()})
    pulumi.export("manifestDir", cfg.manifest_path)
    return environments
