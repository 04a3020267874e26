"""The stack: everything the program needs, parsed from the configuration namespace.

Field order matters: each top-level value is recorded in the validation scope once valid,
and ``environments`` comes last so its rules can read them.
"""

from __future__ import annotations

import ipaddress
import os
import re
from typing import Annotated, Any, Literal

from pydantic import (
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationInfo,
    field_validator,
)
from pydantic.alias_generators import to_camel

from ..contract import (
    NAMING_LEGACY,
    NAMINGS,
    environment_id,
    session_environment_id,
    volume_engine_name,
)
from . import values as v
from .base import Model
from .environment import Environment
from .mounts import DEFAULT_MANIFEST_DIR, manifest_root
from .pools import Pools, check_pools
from .scope import scope_of
from .sections import (
    BUILTIN_PROFILES,
    HELPER_IMAGE,
    BackupSettings,
    BrokerSettings,
    Healthcheck,
    ImageSource,
    KnownProfile,
    KubernetesSettings,
    Limits,
    Profile,
    Profiles,
    Quotas,
    ResolvedLimits,
    resolve_limits,
)

PUBLISH_ADDRESS_ALLOWED = "an IPv4 address (127.0.0.1, 0.0.0.0 or one of the host's own)"


@v.rule(PUBLISH_ADDRESS_ALLOWED)
def _publish_address(value: Any) -> str:
    # Only IPv4: the engine's port forwarding and the egress guard's host drop are IPv4.
    if not isinstance(value, str) or not re.fullmatch(r"[0-9.]{7,15}", value, re.ASCII):
        raise v.refuse(PUBLISH_ADDRESS_ALLOWED)
    return str(ipaddress.IPv4Address(value))


SHARED_VOLUME_ALLOWED = (
    "a named volume's name: letters, digits, '_', '.', '-', starting with a letter or digit, "
    "2-128 characters"
)
SharedVolume = Annotated[str, BeforeValidator(v.named(v.VOLUME_NAME, SHARED_VOLUME_ALLOWED))]


class StackConfig(Model):
    """Everything the program needs, parsed from the ``dockyard:`` namespace.

    Field order matters: each top-level value is recorded in the validation scope once
    valid, and ``environments`` comes last so its rules can read them."""

    model_config = ConfigDict(validate_default=True)

    stack: str
    cwd: v.HostDir
    backend: Literal["docker", "kubernetes"] = "docker"
    """Where environments run: Docker engines, or a Kubernetes cluster."""
    kubernetes: KubernetesSettings = Field(default_factory=KubernetesSettings)
    manifest_dir: v.ManifestDir = DEFAULT_MANIFEST_DIR
    bind_roots: Annotated[list[v.HostDir], v.bounded_list(64)] = Field(default_factory=list)
    """Host directories bind mounts may come from, besides ``cwd``."""
    docker_host: v.DockerHost | None = None
    docker_hosts: Annotated[dict[v.HostName, v.DockerHost], v.bounded_list(64)] = Field(
        default_factory=dict
    )
    """Several Docker hosts by name; environments are placed on them (``host``)."""
    profiles: Profiles = Field(default_factory=dict)
    profile: KnownProfile = "standard"
    image: ImageSource = Field(default_factory=ImageSource)
    gpu_image: ImageSource = Field(default_factory=ImageSource)
    limits: Limits = Field(default_factory=Limits)
    healthcheck: Healthcheck = Field(default_factory=Healthcheck)
    quotas: Quotas = Field(default_factory=Quotas)
    pools: Pools = Field(default_factory=list)
    """Warm pools of ready environments (:mod:`.pools`; host settings)."""
    backup: BackupSettings | None = None
    """Encrypted workspace backups; None: none."""
    helper_image: v.ImageReference = HELPER_IMAGE
    """The image dockyard's root helpers on the engine run from (disk images, snapshot and
    fork copies): the operator's, resolved to its ID on the engine at each use, never an
    environment's or a snapshot's image (:mod:`dockyard.storage`). Host settings and stack
    files only: a request cannot set it."""
    publish_address: Annotated[str, BeforeValidator(_publish_address)] = "127.0.0.1"
    """Host address published ports bind to; loopback keeps them off every bridge (access.md)."""
    broker: BrokerSettings = Field(default_factory=BrokerSettings)
    """Upstreams of the credential brokers (``credentials: brokered`` environments)."""
    shared_volumes: Annotated[list[SharedVolume], v.bounded_list(64)] = Field(default_factory=list)
    """Named volumes the environments may share. A session's other named volumes are its
    own; a listed one is shared within the session's tenant (or among untenanted
    sessions), never across tenants. Host settings and stack files only: a request
    cannot set it (docs/sessions.md)."""
    environments: Annotated[list[Environment], v.bounded_list(1024)] = Field(default_factory=list)
    _naming: str = PrivateAttr(default=NAMING_LEGACY)

    @field_validator("docker_host")
    @classmethod
    def _docker_only(cls, host: str | None, info: ValidationInfo) -> str | None:
        if host is not None and info.data.get("backend") == "kubernetes":
            raise v.refuse(
                "nothing with backend kubernetes (the cluster comes from kubernetes.context)"
            )
        return host

    @field_validator("docker_hosts")
    @classmethod
    def _one_host_form(cls, hosts: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        if hosts and info.data.get("backend") == "kubernetes":
            raise v.refuse(
                "nothing with backend kubernetes (the cluster comes from kubernetes.context)"
            )
        if hosts and info.data.get("docker_host") is not None:
            raise v.refuse("either dockerHost (one host) or dockerHosts (several), not both")
        return hosts

    @field_validator("backup")
    @classmethod
    def _backup_on_the_host(
        cls, settings: BackupSettings | None, info: ValidationInfo
    ) -> BackupSettings | None:
        if settings is None:
            return settings
        # Named under repository, whose value is never echoed (the mapping holds it).
        if info.data.get("backend") == "kubernetes":
            why = "none with backend kubernetes: backups read Docker volumes"
        elif any(
            host and not host.startswith("unix://")
            for host in [
                info.data.get("docker_host"),
                *(info.data.get("docker_hosts") or {}).values(),
            ]
        ):
            why = (
                "none with a remote dockerHost or dockerHosts: backups run on the Docker host "
                "itself (install the workspace_backup role there)"
            )
        else:
            return settings
        raise v.refuse_items([("repository", settings.repository, why)])

    @field_validator("pools")
    @classmethod
    def _pools(cls, pools: list[Any], info: ValidationInfo) -> list[Any]:
        return check_pools(pools, info)

    @field_validator("*")
    @classmethod
    def _settle(cls, value: Any, info: ValidationInfo) -> Any:
        scope = scope_of(info)
        if scope is not None and info.field_name is not None:
            scope.settled[info.field_name] = value
        return value

    def all_profiles(self) -> dict[str, Profile]:
        return {**BUILTIN_PROFILES, **self.profiles}

    def profile_of(self, env: Environment) -> Profile:
        return self.all_profiles()[env.profile or self.profile]

    def runtime_of(self, env: Environment) -> str:
        """Environment < profile < runc."""
        return env.runtime or self.profile_of(env).runtime or "runc"

    def variant_of(self, env: Environment) -> str:
        """Environment < profile < core."""
        return env.variant or self.profile_of(env).variant or "core"

    def limits_of(self, env: Environment) -> ResolvedLimits:
        """Defaults < profile < stack limits < environment limits."""
        return resolve_limits(self.profile_of(env), self.limits, env.limits)

    @property
    def manifest_path(self) -> str:
        return os.path.join(self.cwd, self.manifest_dir)

    @property
    def manifest_root(self) -> str:
        """The directory no environment may write below (see :func:`mounts.manifest_root`)."""
        return manifest_root(self.cwd, self.manifest_dir)

    def with_naming(self, naming: str) -> StackConfig:
        """This stack with the engine names of ``naming`` (sessions: contract.NAMINGS);
        a stack file keeps v1, the names it always had."""
        if naming not in NAMINGS:
            raise ValueError(f"naming {naming!r} (allowed: {', '.join(NAMINGS)})")
        named = self.model_copy()
        named._naming = naming
        return named

    @property
    def naming(self) -> str:
        return self._naming

    def environment_id_of(self, env: Environment) -> str:
        """The engine name of ``env``'s container and network (prefix of its volumes)."""
        if self._naming == NAMING_LEGACY:
            return environment_id(self.stack, env.session_id)
        return session_environment_id(env.tenant, env.session_id, self._naming)

    def volume_name_of(self, env: Environment, name: str) -> str:
        """The engine name of ``env``'s declared named volume ``name``."""
        return volume_engine_name(
            env.tenant,
            self.environment_id_of(env),
            name,
            name in self.shared_volumes,
            self._naming,
        )

    def manifest_dir_of(self, env: Environment) -> str:
        """Where an environment's manifest goes: a tenant's own subfolder if it has one."""
        return os.path.join(self.manifest_path, env.tenant) if env.tenant else self.manifest_path


TOP_LEVEL_KEYS = sorted(to_camel(name) for name in StackConfig.model_fields if name != "stack")
