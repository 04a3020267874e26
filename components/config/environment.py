"""One session's environment (R-ENV-2) and the rules that read the rest of the stack.

The stack's top-level values reach these rules through the validation
:class:`~.scope.Scope`, never through the raw mapping.
"""

from __future__ import annotations

import os
from typing import Annotated, Any, Literal

from pydantic import (
    BeforeValidator,
    Field,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    field_validator,
    model_validator,
)

from .. import contract
from . import egress
from . import values as v
from .base import CONVENTIONAL_NAME, THIS_KEY, Model
from .mounts import Volumes, bind_problem
from .names import EnvVars, Labels, SecretNames
from .scope import local_engine, on_kubernetes, scope_of
from .sections import (
    KUBERNETES_DOMAINS,
    KnownProfile,
    KubernetesSettings,
    Limits,
    Runtime,
    Variant,
    known_profiles,
    resolve_limits,
)

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


def _ports_at_once(value: Any, handler: ValidatorFunctionWrapHandler) -> list[int]:
    """Every problem of a port list at once: a bad port does not hide a repeated one."""
    try:
        return _unique_ports(handler(value))
    except ValidationError as exc:
        if not isinstance(value, list):
            raise
        items: dict[int, tuple[int | str, Any, str]] = {}
        for error in exc.errors():
            loc = error["loc"]
            if len(loc) != 1 or not isinstance(loc[0], int):
                raise
            allowed = (error.get("ctx") or {}).get("allowed") or "an integer container port"
            items[loc[0]] = (loc[0], error.get("input"), str(allowed))
        first: dict[int, int] = {}
        for index, port in enumerate(value):
            if index in items or isinstance(port, bool) or not isinstance(port, int):
                continue
            if port in first:
                items[index] = (
                    index,
                    port,
                    f"each container port once; ports[{first[port]}] has it already",
                )
            else:
                first[port] = index
        raise v.refuse_items([items[i] for i in sorted(items)]) from None


Ports = Annotated[list[v.Port], WrapValidator(_ports_at_once), v.bounded_list(128)]

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


class Environment(Model):
    """One session's environment (R-ENV-2)."""

    session_id: v.SessionId
    backend: Literal["claude", "codex"] = "claude"
    ports: Ports = Field(default_factory=list)
    volumes: Volumes = Field(default_factory=list)
    env: EnvVars = Field(default_factory=dict)
    secrets: SecretNames = Field(default_factory=list)
    limits: Limits = Field(default_factory=Limits)
    profile: KnownProfile | None = None
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
                scope.secret_hint(name if CONVENTIONAL_NAME.fullmatch(name) else "<NAME>"),
            )
            for index, name in enumerate(names)
            if name not in scope.secret_names
        ]
        if missing:
            raise v.refuse_items(missing, verb="is not set")
        return names

    @field_validator("gpu")
    @classmethod
    def _gpu_needs_gpu_profile(cls, gpu: Any, info: ValidationInfo) -> Any:
        scope = scope_of(info)
        if gpu is None or scope is None or not scope.known("profiles"):
            return gpu
        if "profile" not in info.data:
            return gpu  # the profile itself is refused
        name = info.data["profile"] or scope.get("profile")
        profile = known_profiles(scope).get(name or "")
        if profile is not None and not profile.gpu:
            raise v.refuse(f"only on a gpu profile; profile {name!r} has none — set profile: gpu")
        return gpu

    @field_validator("credentials")
    @classmethod
    def _brokered_keys(cls, mode: str, info: ValidationInfo) -> str:
        if mode != "brokered":
            return mode
        if on_kubernetes(scope_of(info)):
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
        if ssh and on_kubernetes(scope_of(info)):
            raise v.refuse("false on backend kubernetes (SSH is for Docker environments)")
        return ssh

    @field_validator("workspace_host_path")
    @classmethod
    def _workspace_bind(cls, path: str | None, info: ValidationInfo) -> str | None:
        scope = scope_of(info)
        if path is None or scope is None:
            return path
        if on_kubernetes(scope):
            raise v.refuse(
                "nothing on backend kubernetes: the workspace is a PersistentVolumeClaim"
            )
        why = bind_problem(path, scope)
        if why:
            raise v.refuse(why)
        if local_engine(scope) and not os.path.isdir(path):
            # The engine would only notice when the container starts, after the network
            # and volumes exist; on a local engine we can say it now.
            raise v.refuse(
                f"an existing host directory, writable by the agent, uid {contract.AGENT_UID}"
            )
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
        if on_kubernetes(scope) and scope is not None and scope.known("kubernetes"):
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
        profiles = known_profiles(scope)
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
