"""The dockyard Pulumi program, as one function.

``__main__.py`` (``pulumi up`` on a stack file) and the per-session Automation API
(:mod:`components.sessions`) both call :func:`run` with a validated
:class:`~components.config.StackConfig`: one program, two ways in.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import pulumi
import pulumi_docker as docker

from .config import StackConfig
from .environment import AgentEnvironment, AgentEnvironmentArgs
from .image import AgentImage, AgentImageArgs

TENANT_LABEL = "dockyard.tenant"
SecretReader = Callable[[str], pulumi.Output[str]]


def _config_secret(name: str) -> pulumi.Output[str]:
    return pulumi.Config("dockyard").require_secret(name)


def run(cfg: StackConfig, secret: SecretReader = _config_secret) -> dict[str, AgentEnvironment]:
    """Declare every environment of ``cfg`` and export their manifests.

    ``secret`` reads a secret value by name as a Pulumi secret output (the stack's
    secret config by default). Returns the environments by session id.
    """
    provider_opts = pulumi.ResourceOptions()
    if cfg.docker_host:
        # Every resource below goes to this engine, e.g. ssh://agent@team-host.
        provider = docker.Provider("docker-host", host=cfg.docker_host)
        provider_opts = pulumi.ResourceOptions(providers=[provider])

    images: dict[str, AgentImage] = {}

    def image_for(variant: str, ref: str | None) -> AgentImage:
        """One AgentImage per variant (or per published reference), shared by environments."""
        key = ref or variant
        if key not in images:
            source = cfg.gpu_image if variant == "gpu" else cfg.image
            images[key] = AgentImage(
                # Named after what it is, so reordering environments renames nothing.
                f"image-{variant}"
                if not ref
                else f"image-{hashlib.sha256(ref.encode()).hexdigest()[:10]}",
                AgentImageArgs(
                    variant=variant,
                    ref=ref or source.ref,
                    build_args=source.args,
                    repository="dockyard-gpu" if variant == "gpu" else "dockyard-core",
                    tag_prefix=source.tag or cfg.stack,
                ),
                opts=provider_opts,
            )
        return images[key]

    environments: dict[str, AgentEnvironment] = {}
    for env in cfg.environments:
        profile = cfg.profile_of(env)
        image = image_for("gpu" if profile.gpu else "core", env.image)
        environments[env.session_id] = AgentEnvironment(
            f"env-{env.session_id}",
            AgentEnvironmentArgs(
                stack=cfg.stack,
                session_id=env.session_id,
                backend=env.backend,
                image_id=image.image_id,
                image_ref=image.image_ref,
                cwd=cfg.cwd,
                manifest_dir=cfg.manifest_dir_of(env),
                limits=cfg.limits_of(env),
                healthcheck=cfg.healthcheck,
                ports=env.ports,
                volumes=env.volumes,
                workspace_host_path=env.workspace_host_path,
                egress=env.egress,
                egress_rules=env.egress_rules,
                env=env.env,
                secrets={name: secret(name) for name in env.secrets},
                gpu=env.gpu,
                labels={**env.labels, **({TENANT_LABEL: env.tenant} if env.tenant else {})},
                docker_host=cfg.docker_host,
                runtime=cfg.runtime_of(env),
            ),
            opts=provider_opts,
        )

    pulumi.export("environments", {sid: e.manifest for sid, e in environments.items()})
    pulumi.export("manifestDir", cfg.manifest_path)
    return environments
