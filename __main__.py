"""dockyard: one isolated agent environment per session of this stack.

The configuration is read and validated once (components.config); a bad value stops the
program before any resource is registered, listing every problem of the stack.
"""

from __future__ import annotations

import hashlib

import pulumi
import pulumi_docker as docker

from components import config as stack_config
from components.environment import AgentEnvironment, AgentEnvironmentArgs
from components.image import AgentImage, AgentImageArgs

try:
    cfg = stack_config.from_pulumi()
except stack_config.ConfigError as error:
    raise pulumi.RunError(str(error)) from None

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
                tag_prefix=source.tag or pulumi.get_stack(),
            ),
            opts=provider_opts,
        )
    return images[key]


secrets_config = pulumi.Config("dockyard")
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
            manifest_dir=cfg.manifest_path,
            limits=cfg.limits_of(env),
            healthcheck=cfg.healthcheck,
            ports=env.ports,
            volumes=env.volumes,
            workspace_host_path=env.workspace_host_path,
            egress=env.egress,
            egress_rules=env.egress_rules,
            env=env.env,
            secrets={name: secrets_config.require_secret(name) for name in env.secrets},
            gpu=env.gpu,
            labels=env.labels,
            docker_host=cfg.docker_host,
        ),
        opts=provider_opts,
    )

pulumi.export("environments", {sid: e.manifest for sid, e in environments.items()})
pulumi.export("manifestDir", cfg.manifest_path)
