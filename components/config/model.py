"""The typed stack configuration and every rule about it.

This is the one place a rule lives: value types (``values``), field validators, and model
validators that read the rest of the stack from the validation :class:`~.scope.Scope`.
Keys have exactly one spelling, the documented camelCase; anything else is an unknown key.
"""

from __future__ import annotations

import ipaddress
import os
import re
import stat
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from .. import contract
from . import egress
from . import values as v
from .scope import Scope, scope_of

NAMESPACE = "dockyard"
DEFAULT_MANIFEST_DIR = ".companion/cloud/environments"
# Paths the environment itself mounts; a declared volume may go below them, not onto them.
RESERVED_MOUNTS = ("/workspace", "/config", "/checkpoints", "/run/secrets")
# Host paths no environment may mount, whatever bindRoots says: the engine's socket and
# state are root on the host.
FORBIDDEN_BIND_SOURCES = (
    "/var/run/docker.sock",
    "/run/docker.sock",
    "/var/lib/docker",
    "/run/containerd",
    "/var/run/containerd",
)
RESERVED_LABEL_PREFIX = "dockyard."
# Stands for "the mapping key itself" in a problem about a key (rendered "this key").
THIS_KEY = object()
CONVENTIONAL_NAME = re.compile(r"[A-Z][A-Z0-9_]{0,63}", re.ASCII)
RESERVED_ENV_PREFIX = "DOCKYARD_"
# credentials: brokered — the secrets a broker holds instead of the environment, each with
# the service it stands in for, and the variables it sets in the environment.
BROKERED_SECRETS = {
    "ANTHROPIC_API_KEY": "anthropic",
    "OPENAI_API_KEY": "openai",
    "GITHUB_TOKEN": "git",
}
BROKER_ENV = (
    "ANTHROPIC_BASE_URL",
    "OPENAI_BASE_URL",
    "GIT_CONFIG_COUNT",
    "GIT_CONFIG_KEY_0",
    "GIT_CONFIG_VALUE_0",
)


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_alias=True,
        validate_by_name=False,
        extra="forbid",
        frozen=True,
    )


# --- Limits and profiles --------------------------------------------------------------------


class Limits(_Model):
    """Resource limits; every field optional so a stack or environment overrides a part."""

    cpus: v.Cpus | None = None
    memory: v.MemoryMB | None = None
    pids: v.Pids | None = None
    nofile_soft: v.Nofile | None = None
    nofile_hard: v.Nofile | None = None

    @field_validator("nofile_hard")
    @classmethod
    def _soft_not_above_hard(cls, hard: int | None, info: ValidationInfo) -> int | None:
        soft = info.data.get("nofile_soft")
        if hard is not None and soft is not None and soft > hard:
            raise v.refuse(f"at least nofileSoft ({soft}): the engine refuses soft > hard")
        return hard

    def over(self, base: ResolvedLimits) -> ResolvedLimits:
        merged = base.model_dump(by_alias=True)
        merged.update(
            {k: value for k, value in self.model_dump(by_alias=True).items() if value is not None}
        )
        return ResolvedLimits.model_validate(merged)


class ResolvedLimits(_Model):
    """R-ENV-4 defaults: 4 CPUs, 8192 MB, 1000 processes, nofile 1024/2048."""

    cpus: float = 4.0
    memory: int = 8192
    pids: int = 1000
    nofile_soft: int = 1024
    nofile_hard: int = 2048


Runtime = Literal["runc", "runsc"]
"""The OCI runtime of an environment: ``runsc`` is gVisor (docs/isolation.md)."""

Variant = Literal["core", "python", "node", "go"]
"""The image variant of an environment: the core image, or a language runtime's layers
on top of it (docs/core-image.md)."""


class Profile(_Model):
    cpus: v.Cpus | None = None
    memory: v.MemoryMB | None = None
    gpu: bool = False
    runtime: Runtime | None = None
    variant: Variant | None = None

    @field_validator("gpu", mode="before")
    @classmethod
    def _strict_bool(cls, value: Any) -> Any:
        if not isinstance(value, bool):
            raise v.refuse("true or false")
        return value


BUILTIN_PROFILES: dict[str, Profile] = {
    "standard": Profile(cpus=4, memory=8192),
    "large": Profile(cpus=4, memory=16384),
    "gpu": Profile(cpus=4, memory=16384, gpu=True),
}


def resolve_limits(profile: Profile | None, stack: Limits | None, env: Limits) -> ResolvedLimits:
    """Defaults < profile < stack limits < environment limits."""
    base = ResolvedLimits()
    if profile is not None:
        base = Limits(cpus=profile.cpus, memory=profile.memory).over(base)
    if stack is not None:
        base = stack.over(base)
    return env.over(base)


def _profile_names(value: dict[str, Profile]) -> dict[str, Profile]:
    bad = [(name, name, v.PROFILE_ALLOWED) for name in value if not v.PROFILE_NAME.fullmatch(name)]
    if bad:
        raise v.refuse_items(bad)
    return value


Profiles = Annotated[dict[str, Profile], AfterValidator(_profile_names), v.bounded_list(64)]


# --- Bind sources ---------------------------------------------------------------------------


def _bind_problem(source: str, scope: Scope) -> str | None:
    """Why a (normalised) host path may not be bound, or None."""
    if any(v.is_under(source, f) or v.is_under(f, source) for f in FORBIDDEN_BIND_SOURCES):
        return (
            "host paths that neither are nor contain the Docker engine's socket or state: "
            + ", ".join(FORBIDDEN_BIND_SOURCES)
        )
    if _local_engine(scope):
        # The engine follows symlinks: a link under cwd to the socket is the socket.
        real = os.path.realpath(source)
        if real != source and any(
            v.is_under(real, f) or v.is_under(f, real) for f in FORBIDDEN_BIND_SOURCES
        ):
            return (
                "host paths that neither are nor contain (through a symlink) the Docker "
                "engine's socket or state: " + ", ".join(FORBIDDEN_BIND_SOURCES)
            )
    if not scope.known("cwd"):
        return None  # cwd itself is refused; its problem says why
    roots = [scope.get("cwd"), *(scope.get("bind_roots") or [])]
    if not any(v.is_under(source, root) for root in roots):
        return "a host path under the project directory or a bindRoots entry: " + ", ".join(
            repr(root) for root in roots
        )
    return None


def _local_engine(scope: Scope) -> bool:
    host = scope.get("docker_host")
    return scope.known("docker_host") and (host is None or host.startswith("unix://"))


# --- Volumes --------------------------------------------------------------------------------


class Volume(_Model):
    """A parsed ``source:target[:ro|rw]`` spec; ``source`` is a named volume or a
    normalised absolute host path, ``target`` a normalised absolute container path."""

    source: str
    target: str
    read_only: bool
    spec: str

    @property
    def is_bind(self) -> bool:
        return self.source.startswith("/")


VOLUME_ALLOWED = "'host:container[:ro]' or 'name:container[:ro]' with absolute paths"


@v.rule(VOLUME_ALLOWED)
def parse_volume(value: Any) -> Volume:
    if isinstance(value, Volume):
        return value
    if not isinstance(value, str) or len(value) > v.MAX_PATH or v.has_control(value):
        raise v.refuse(VOLUME_ALLOWED)
    parts = value.split(":")
    if len(parts) not in (2, 3) or not all(parts[:2]):
        raise v.refuse(VOLUME_ALLOWED)
    source, target = parts[0], parts[1]
    mode = parts[2] if len(parts) == 3 else "rw"
    if mode not in ("ro", "rw"):
        raise v.refuse(VOLUME_ALLOWED + "; the mode is ro or rw")
    if source.startswith("/"):
        try:
            source = v.normalise_absolute(source)
        except ValueError:
            raise v.refuse("an absolute host path without '..' or '.' components") from None
    elif "/" in source or source.startswith("."):
        raise v.refuse(
            "an absolute host path (starting with /) or a volume name, not a relative path"
        )
    elif not v.VOLUME_NAME.fullmatch(source):
        raise v.refuse(
            "a volume name of 2-128 letters, digits, '_', '.', '-' (starting alphanumeric)"
        )
    try:
        target = v.normalise_absolute(target)
    except ValueError:
        raise v.refuse("an absolute container path without '..' or '.' components") from None
    if target in RESERVED_MOUNTS or target == "/":
        raise v.refuse(
            f"a container path other than / and {', '.join(RESERVED_MOUNTS)} (dockyard mounts those)"
        )
    return Volume(source=source, target=target, readOnly=mode == "ro", spec=value)


def _unique_targets(volumes: list[Volume]) -> list[Volume]:
    first: dict[str, int] = {}
    repeated = []
    for index, volume in enumerate(volumes):
        if volume.target in first:
            repeated.append(
                (
                    index,
                    volume.spec,
                    f"each container path mounted once; volumes[{first[volume.target]}] has it already",
                )
            )
        else:
            first[volume.target] = index
    if repeated:
        raise v.refuse_items(repeated)
    return volumes


def _unique_ports(ports: list[int]) -> list[int]:
    first: dict[int, int] = {}
    repeated = []
    for index, port in enumerate(ports):
        if port in first:
            repeated.append(
                (index, port, f"each container port once; ports[{first[port]}] has it already")
            )
        else:
            first[port] = index
    if repeated:
        raise v.refuse_items(repeated)
    return ports


def _on_kubernetes(scope: Scope | None) -> bool:
    return scope is not None and scope.get("backend") == "kubernetes"


def _volume_in_scope(value: Any, info: ValidationInfo) -> Volume:
    """One declared volume; a bind source must also be one the stack allows."""
    volume = parse_volume(value)
    scope = scope_of(info)
    if volume.is_bind and _on_kubernetes(scope):
        raise v.refuse(
            "a named volume (a PersistentVolumeClaim): backend kubernetes has no host paths"
        )
    if volume.is_bind and scope is not None and (why := _bind_problem(volume.source, scope)):
        raise v.refuse(why)
    return volume


Ports = Annotated[list[v.Port], AfterValidator(_unique_ports), v.bounded_list(128)]
Volumes = Annotated[
    list[Annotated[Volume, BeforeValidator(_volume_in_scope)]],
    AfterValidator(_unique_targets),
    v.bounded_list(64),
]


# --- Mappings of names ----------------------------------------------------------------------


def _keys_checked(check: Any) -> Any:
    """A before-validator for a mapping whose keys follow a grammar: every bad key is one
    problem. A key that breaks the grammar is named by position only (it may be a pasted
    secret); one that follows it but is refused otherwise is named."""

    def validate(value: Any) -> Any:
        if not isinstance(value, dict):
            return value  # the mapping type reports it
        if len(value) > v.MAX_ITEMS:
            raise v.refuse(f"a mapping of at most {v.MAX_ITEMS} keys")
        problems = []
        for position, key in enumerate(value):
            allowed, grammatical = check(key)
            if allowed:
                problems.append(
                    (key if grammatical else f"<key {position + 1}>", THIS_KEY, allowed)
                )
        if problems:
            raise v.refuse_items(problems)
        return value

    return validate


KeyCheck = tuple[str | None, bool]
"""(what is allowed if the key is refused, whether the key follows the grammar)."""


def _env_key(key: Any) -> KeyCheck:
    if not isinstance(key, str) or not v.ENV_NAME.fullmatch(key):
        return v.ENV_NAME_ALLOWED, False
    if key.startswith(RESERVED_ENV_PREFIX):
        return f"names outside {RESERVED_ENV_PREFIX}*, which dockyard sets itself", True
    if v.SECRET_NAME.search(key):
        return (
            f"secrets only as secret config; list {key} under secrets and run "
            f"`pulumi config set --secret {key} <value>`"
        ), True
    return None, True


def _label_key(key: Any) -> KeyCheck:
    if not isinstance(key, str) or not v.LABEL_KEY.fullmatch(key):
        return v.LABEL_KEY_ALLOWED, False
    if key.startswith(RESERVED_LABEL_PREFIX):
        return f"keys outside {RESERVED_LABEL_PREFIX}*, which dockyard sets itself", True
    return None, True


def _arg_key(key: Any) -> KeyCheck:
    if not isinstance(key, str) or not v.ENV_NAME.fullmatch(key):
        return "build arg names made of letters, digits and '_', not starting with a digit", False
    return None, True


EnvVars = Annotated[dict[str, v.Text], BeforeValidator(_keys_checked(_env_key))]
Labels = Annotated[dict[str, v.Text], BeforeValidator(_keys_checked(_label_key))]
BuildArgs = Annotated[dict[str, v.Text], BeforeValidator(_keys_checked(_arg_key))]


def _secret_names(value: Any) -> Any:
    if not isinstance(value, list):
        return value
    if len(value) > 64:
        raise v.refuse("a list of at most 64 secret names")
    problems: list[tuple[int | str, Any, str]] = []
    first: dict[str, int] = {}
    for index, name in enumerate(value):
        if not isinstance(name, str) or not v.ENV_NAME.fullmatch(name):
            problems.append((index, name, v.ENV_NAME_ALLOWED))
        elif name in first:
            problems.append((index, name, f"each secret name once; secrets[{first[name]}] has it"))
        else:
            first[name] = index
    if problems:
        raise v.refuse_items(problems)
    return value


SecretNames = Annotated[list[str], BeforeValidator(_secret_names)]

GPU_ALLOWED = "'all' or a list of device ids (e.g. [0, 1] or ['GPU-3a1f...'])"


@v.rule(GPU_ALLOWED)
def _gpu(value: Any) -> str | list[str] | None:
    if value is None or value == "all":
        return value
    if isinstance(value, list) and 0 < len(value) <= 64:
        ids = []
        for item in value:
            if isinstance(item, bool) or not isinstance(item, int | str):
                raise v.refuse(GPU_ALLOWED)
            text = str(item)
            if not v.GPU_DEVICE.fullmatch(text):
                raise v.refuse(GPU_ALLOWED)
            ids.append(text)
        if len(set(ids)) != len(ids):
            raise v.refuse(GPU_ALLOWED + " without duplicates")
        return ids
    raise v.refuse(GPU_ALLOWED)


def _egress_entries(value: Any) -> Any:
    if not isinstance(value, list):
        return value
    if len(value) > v.MAX_ITEMS:
        raise v.refuse(f"a list of at most {v.MAX_ITEMS} entries")
    problems: list[tuple[int | str, Any, str]] = []
    for index, entry in enumerate(value):
        try:
            egress.normalise(entry)
        except egress.EgressError as exc:
            problems.append((index, entry, str(exc)))
        except Exception:
            problems.append((index, entry, egress.ALLOWED))
    if problems:
        raise v.refuse_items(problems)
    return value


EgressAllow = Annotated[list[str], BeforeValidator(_egress_entries)]


# --- Environments ---------------------------------------------------------------------------


class Environment(_Model):
    """One session's environment (R-ENV-2)."""

    session_id: v.SessionId
    backend: Literal["claude", "codex"] = "claude"
    ports: Ports = Field(default_factory=list)
    volumes: Volumes = Field(default_factory=list)
    env: EnvVars = Field(default_factory=dict)
    secrets: SecretNames = Field(default_factory=list)
    limits: Limits = Field(default_factory=Limits)
    profile: v.ProfileName | None = None
    gpu: Annotated[str | list[str] | None, BeforeValidator(_gpu)] = None
    labels: Labels = Field(default_factory=dict)
    image: v.ImageReference | None = None
    """A published image for this environment only."""
    workspace_host_path: v.HostDir | None = None
    """Host directory the workspace volume binds to (e.g. on a quota'd filesystem)."""
    egress: Literal["open", "allowlist"] = "open"
    egress_allow: EgressAllow = Field(default_factory=list)
    """Allowlist entries as written (presets, domains, IPv4 CIDRs, :port)."""
    runtime: Runtime | None = None
    """None: the profile's runtime, else runc."""
    variant: Variant | None = None
    """None: the profile's variant, else core."""
    tenant: v.Tenant | None = None
    """Whose session this is: a label, a manifest subfolder, a quota scope, an audit field."""
    host: v.HostName | None = None
    """A name from ``dockerHosts``; None: placed by quota headroom (or the one host)."""
    restore: Literal["none", "latest"] = "none"
    """At create, ``latest`` restores the session's latest backup into its empty workspace."""
    ssh: bool = False
    """sshd in the environment, certificates from the stack's user CA only (access.md)."""
    credentials: Literal["files", "brokered"] = "files"
    """``brokered``: the API keys and the git token stay with a broker outside the
    environment, which holds only a per-environment token (docs/isolation.md)."""

    @model_validator(mode="wrap")
    @classmethod
    def _position(cls, data: Any, handler: Any, info: ValidationInfo) -> Any:
        # Environments are validated in list order, whether or not they turn out valid:
        # the position lets "unique session id" name the first environment that had it.
        scope = scope_of(info)
        if scope is not None:
            scope.environment_index += 1
        return handler(data)

    @field_validator("session_id")
    @classmethod
    def _unique_session(cls, session: str, info: ValidationInfo) -> str:
        scope = scope_of(info)
        if scope is not None:
            first = scope.sessions.setdefault(session, scope.environment_index)
            if first != scope.environment_index:
                raise v.refuse(
                    f"a session id not used by another environment; environments[{first}] has it"
                )
        return session

    @field_validator("secrets")
    @classmethod
    def _secrets_set(cls, names: list[str], info: ValidationInfo) -> list[str]:
        scope = scope_of(info)
        if scope is None or not scope.check_secrets:
            return names
        missing: list[tuple[int | str, Any, str]] = [
            (
                index,
                name,
                "a secret in this stack's config; run `pulumi config set --secret "
                f"{name if CONVENTIONAL_NAME.fullmatch(name) else '<NAME>'} <value>`",
            )
            for index, name in enumerate(names)
            if name not in scope.secret_names
        ]
        if missing:
            raise v.refuse_items(missing, verb="is not set")
        return names

    @field_validator("profile")
    @classmethod
    def _known_profile(cls, name: str | None, info: ValidationInfo) -> str | None:
        scope = scope_of(info)
        if name is not None and scope is not None and scope.known("profiles"):
            known = {**BUILTIN_PROFILES, **scope.get("profiles")}
            if name not in known:
                raise v.refuse("one of " + ", ".join(sorted(known)))
        return name

    @field_validator("gpu")
    @classmethod
    def _gpu_needs_gpu_profile(cls, gpu: Any, info: ValidationInfo) -> Any:
        scope = scope_of(info)
        if gpu is None or scope is None or not scope.known("profiles"):
            return gpu
        if "profile" not in info.data:
            return gpu  # the profile itself is refused
        name = info.data["profile"] or scope.get("profile")
        profile = {**BUILTIN_PROFILES, **scope.get("profiles")}.get(name or "")
        if profile is not None and not profile.gpu:
            raise v.refuse(f"only on a gpu profile; profile {name!r} has none — set profile: gpu")
        return gpu

    @field_validator("credentials")
    @classmethod
    def _brokered_keys(cls, mode: str, info: ValidationInfo) -> str:
        if mode != "brokered":
            return mode
        if _on_kubernetes(scope_of(info)):
            raise v.refuse("files on backend kubernetes (the broker is for Docker environments)")
        if "secrets" in info.data and not set(info.data["secrets"]) & set(BROKERED_SECRETS):
            raise v.refuse(
                "files, or brokered with at least one of "
                + ", ".join(BROKERED_SECRETS)
                + " under secrets (what the broker would hold)"
            )
        return mode

    @model_validator(mode="after")
    def _broker_sets_its_variables(self) -> Environment:
        taken = sorted(set(self.env) & set(BROKER_ENV)) if self.credentials == "brokered" else []
        if taken:
            raise v.refuse_items(
                [
                    (
                        f"env.{name}",
                        THIS_KEY,
                        "no variable the broker sets with credentials: brokered "
                        f"({', '.join(BROKER_ENV)})",
                    )
                    for name in taken
                ]
            )
        return self

    @field_validator("ssh")
    @classmethod
    def _ssh_on_docker(cls, ssh: bool, info: ValidationInfo) -> bool:
        if ssh and _on_kubernetes(scope_of(info)):
            raise v.refuse("false on backend kubernetes (SSH is for Docker environments)")
        return ssh

    @field_validator("workspace_host_path")
    @classmethod
    def _workspace_bind(cls, path: str | None, info: ValidationInfo) -> str | None:
        scope = scope_of(info)
        if path is None or scope is None:
            return path
        if _on_kubernetes(scope):
            raise v.refuse(
                "nothing on backend kubernetes: the workspace is a PersistentVolumeClaim"
            )
        why = _bind_problem(path, scope)
        if why:
            raise v.refuse(why)
        if _local_engine(scope) and not os.path.isdir(path):
            # The engine would only notice when the container starts, after the network
            # and volumes exist; on a local engine we can say it now.
            raise v.refuse("an existing host directory, writable by the agent, uid 1000")
        return path

    @field_validator("host")
    @classmethod
    def _known_host(cls, name: str | None, info: ValidationInfo) -> str | None:
        scope = scope_of(info)
        if name is None or scope is None or not scope.known("docker_hosts"):
            return name
        hosts = scope.get("docker_hosts")
        if not hosts:
            raise v.refuse("nothing without dockyard:dockerHosts (name the hosts there first)")
        if name not in hosts:
            raise v.refuse("one of " + ", ".join(sorted(hosts)))
        return name

    @field_validator("restore")
    @classmethod
    def _restore_needs_backup(cls, restore: str, info: ValidationInfo) -> str:
        scope = scope_of(info)
        unset = scope is not None and scope.known("backup") and scope.get("backup") is None
        if restore == "latest" and unset:
            raise v.refuse(
                "none, or latest with dockyard:backup set (where the session's backups are)"
            )
        return restore

    @field_validator("egress_allow")
    @classmethod
    def _allowlist_only(cls, entries: list[str], info: ValidationInfo) -> list[str]:
        if entries and info.data.get("egress", "allowlist") == "open":
            raise v.refuse("only with egress: allowlist — an open environment reaches everything")
        scope = scope_of(info)
        if _on_kubernetes(scope) and scope is not None and scope.known("kubernetes"):
            settings: KubernetesSettings = scope.get("kubernetes")
            if settings.network_policy != "cilium":
                names = [
                    (index, entry, KUBERNETES_DOMAINS)
                    for index, entry in enumerate(entries)
                    if any(not egress.is_address(rule) for rule in egress.normalise(entry))
                ]
                if names:
                    raise v.refuse_items(names)
        return entries

    @model_validator(mode="after")
    def _resolved_nofile(self, info: ValidationInfo) -> Environment:
        scope = scope_of(info)
        if scope is None or not all(scope.known(k) for k in ("profiles", "profile", "limits")):
            return self
        if self.limits.nofile_soft is not None and self.limits.nofile_hard is not None:
            return self  # checked on the environment's own limits
        profiles = {**BUILTIN_PROFILES, **scope.get("profiles")}
        resolved = resolve_limits(
            profiles.get(self.profile or scope.get("profile")), scope.get("limits"), self.limits
        )
        if resolved.nofile_soft > resolved.nofile_hard:
            raise v.refuse_items(
                [
                    (
                        "limits",
                        self.limits.model_dump(by_alias=True, exclude_none=True),
                        f"limits whose resolved nofileSoft ({resolved.nofile_soft}) is at most "
                        f"nofileHard ({resolved.nofile_hard}): the engine refuses soft > hard; "
                        "set both here",
                    )
                ]
            )
        return self

    @property
    def egress_rules(self) -> list[str]:
        """The allowlist normalised and presets expanded (what the host enforces)."""
        return egress.expand(list(self.egress_allow))


class ImageSource(_Model):
    """Either a published reference (``ref``) or a build of ``images/<variant>``."""

    ref: v.ImageReference | None = None
    tag: v.ImageTag | None = None
    args: BuildArgs = Field(default_factory=dict)
    extra_ca: v.HostFile | None = None
    """A PEM file of extra CA certificates to build with (a TLS-intercepting proxy's)."""


class Healthcheck(_Model):
    """R-ENV-7 timing. ``start_interval`` needs engine API >= 1.44 (Docker 25); on older
    engines leave it unset: the first probe then runs one ``interval`` after start."""

    interval: v.Duration = "60s"
    timeout: v.Duration = "10s"
    retries: v.Retries = 3
    start_period: v.Duration = "30s"
    start_interval: v.Duration | None = None


KUBERNETES_DOMAINS = (
    "IPv4 addresses or CIDRs only: a NetworkPolicy cannot name domains; set "
    "kubernetes.networkPolicy: cilium for domain rules (CiliumNetworkPolicy toFQDNs)"
)


class KubernetesStorage(_Model):
    """PersistentVolumeClaim sizes of the R-ENV-8 tree."""

    workspace: v.StorageMB = 10240
    config: v.StorageMB = 1024
    checkpoints: v.StorageMB = 2048


class KubernetesSettings(_Model):
    """``backend: kubernetes``: where and how environments become Kubernetes objects."""

    namespace: v.DnsLabel = "dockyard"
    context: (
        Annotated[str, BeforeValidator(v.named(v.KUBE_CONTEXT, v.KUBE_CONTEXT_ALLOWED))] | None
    ) = None
    """kubeconfig context; None: the current one."""
    service_type: Literal["ClusterIP", "NodePort", "LoadBalancer"] = "ClusterIP"
    network_policy: Literal["standard", "cilium"] = "standard"
    storage_class: v.DnsLabel | None = None
    storage: KubernetesStorage = Field(default_factory=KubernetesStorage)
    runtime_classes: dict[Runtime, v.DnsLabel] = Field(default_factory=lambda: {"runsc": "gvisor"})
    """Environment runtime -> RuntimeClass name; runc means the cluster's default."""
    agent_sandbox: bool = False
    """Also emit kubernetes-sigs/agent-sandbox Sandbox resources instead of a StatefulSet."""


class QuotaCaps(_Model):
    """Caps on what environments on one Docker host reserve; None: no cap."""

    environments: v.Count | None = None
    cpus: v.Cpus | None = None
    memory: v.MemoryMB | None = None
    """Total memory limit of the environments, in MB (sizes with units allowed)."""


class Quotas(QuotaCaps):
    """Per Docker host caps, counted from the engine (every stack and process counts),
    and per-tenant caps inside them."""

    tenants: dict[v.Tenant, QuotaCaps] = Field(default_factory=dict)
    hosts: dict[v.HostName, QuotaCaps] = Field(default_factory=dict)
    """Caps of one named host instead of the ones above (``dockerHosts``)."""

    def for_host(self, name: str | None) -> QuotaCaps:
        return self.hosts.get(name or "", self)


# --- Backups ----------------------------------------------------------------------------------


@v.rule(contract.BACKUP_REPOSITORY_ALLOWED)
def _backup_repository(value: Any) -> str:
    if not contract.backup_repository_ok(value):
        raise v.refuse(contract.BACKUP_REPOSITORY_ALLOWED)
    return str(value)


class BackupSettings(_Model):
    """Encrypted workspace backups with restic (docs/backup.md): one repository per session
    under ``repository``, each with its own password; passwords and storage keys stay in
    ``credentialsDir`` on the Docker host, never in the environment."""

    repository: Annotated[str, BeforeValidator(_backup_repository)]
    region: (
        Annotated[
            str, BeforeValidator(v.named(contract.BACKUP_REGION, contract.BACKUP_REGION_ALLOWED))
        ]
        | None
    ) = None
    credentials_dir: v.HostDir = contract.BACKUP_CREDENTIALS_DIR
    cache_dir: v.HostDir = contract.BACKUP_CACHE_DIR
    image: v.ImageReference = contract.BACKUP_IMAGE
    """The helper image restic runs in (the host's restic binary is mounted into it)."""
    restic: v.HostDir = contract.BACKUP_RESTIC
    """The restic binary on the Docker host."""
    on_destroy: bool = True
    """Take a final backup before a session is destroyed."""

    @field_validator("on_destroy", mode="before")
    @classmethod
    def _strict_bool(cls, value: Any) -> Any:
        if not isinstance(value, bool):
            raise v.refuse("true or false")
        return value


# --- The credential broker ----------------------------------------------------------------------


CA_FILE_MAX = 4 << 20  # a full system bundle is about 200 KiB


class BrokerSettings(_Model):
    """Where the brokers of ``credentials: brokered`` environments forward to, and whom
    they trust there (docs/isolation.md). Defaults: the public APIs, the system CAs."""

    anthropic: v.Upstream = "https://api.anthropic.com"
    openai: v.Upstream = "https://api.openai.com"
    git: v.Upstream = "https://github.com"
    ca_file: v.HostFile | None = None
    """A PEM file of the CAs the brokers trust upstream instead of the system's, read on
    the machine that runs the program (e.g. a TLS-intercepting proxy's bundle)."""

    @field_validator("ca_file")
    @classmethod
    def _pem_file(cls, path: str | None) -> str | None:
        if path is None:
            return path
        allowed = f"an existing, readable PEM file of CA certificates (a regular file, at most {CA_FILE_MAX // 1024} KiB)"
        try:
            # A regular file of bounded size: never a FIFO or device a read would block on.
            info = os.stat(path)
            if not stat.S_ISREG(info.st_mode) or info.st_size > CA_FILE_MAX:
                raise v.refuse(allowed)
            with open(path, "rb") as handle:
                head = handle.read(CA_FILE_MAX)
        except OSError:
            raise v.refuse(allowed) from None
        if b"-----BEGIN CERTIFICATE-----" not in head:
            raise v.refuse("a PEM file of CA certificates (no BEGIN CERTIFICATE block found)")
        return path


# --- The stack --------------------------------------------------------------------------------

PUBLISH_ADDRESS_ALLOWED = "an IPv4 address (127.0.0.1, 0.0.0.0 or one of the host's own)"


@v.rule(PUBLISH_ADDRESS_ALLOWED)
def _publish_address(value: Any) -> str:
    # Only IPv4: the engine's port forwarding and the egress guard's host drop are IPv4.
    if not isinstance(value, str) or not re.fullmatch(r"[0-9.]{7,15}", value, re.ASCII):
        raise v.refuse(PUBLISH_ADDRESS_ALLOWED)
    return str(ipaddress.IPv4Address(value))


class StackConfig(_Model):
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
    profile: v.ProfileName = "standard"
    image: ImageSource = Field(default_factory=ImageSource)
    gpu_image: ImageSource = Field(default_factory=ImageSource)
    limits: Limits = Field(default_factory=Limits)
    healthcheck: Healthcheck = Field(default_factory=Healthcheck)
    quotas: Quotas = Field(default_factory=Quotas)
    backup: BackupSettings | None = None
    """Encrypted workspace backups; None: none."""
    publish_address: Annotated[str, BeforeValidator(_publish_address)] = "127.0.0.1"
    """Host address published ports bind to; loopback keeps them off every bridge (access.md)."""
    broker: BrokerSettings = Field(default_factory=BrokerSettings)
    """Upstreams of the credential brokers (``credentials: brokered`` environments)."""
    environments: Annotated[list[Environment], v.bounded_list(1024)] = Field(default_factory=list)

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

    @field_validator("profile")
    @classmethod
    def _known_profile(cls, name: str, info: ValidationInfo) -> str:
        scope = scope_of(info)
        if scope is not None and scope.known("profiles"):
            known = {**BUILTIN_PROFILES, **scope.get("profiles")}
            if name not in known:
                raise v.refuse("one of " + ", ".join(sorted(known)))
        return name

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

    def manifest_dir_of(self, env: Environment) -> str:
        """Where an environment's manifest goes: a tenant's own subfolder if it has one."""
        return os.path.join(self.manifest_path, env.tenant) if env.tenant else self.manifest_path


TOP_LEVEL_KEYS = sorted(to_camel(name) for name in StackConfig.model_fields if name != "stack")
