"""The stack's typed configuration: read once, validated completely, handed down.

Every key lives in the ``dockyard:`` namespace of ``stacks/Pulumi.<stack>.yaml``.
:func:`parse` turns the raw mapping into a :class:`StackConfig` or raises
:class:`ConfigError` listing *every* problem of the stack at once, each naming the key
path, the bad value and what is allowed (R-STK-2). Nothing here touches a resource, so a
bad configuration fails before anything is registered.

Secret values never enter this model: it holds secret *names*; their values are read as
Pulumi secret outputs where the environment delivers them as files.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

from components import egress

NAMESPACE = "dockyard"
DEFAULT_MANIFEST_DIR = ".companion/cloud/environments"

# Paths the environment itself mounts; a declared volume may go below them, not onto them.
RESERVED_MOUNTS = ("/workspace", "/config", "/checkpoints", "/run/secrets")
SECRET_NAME_PATTERN = re.compile(r"(_KEY|_TOKEN|_SECRET)$|PASSWORD|PASSWD", re.IGNORECASE)
SESSION_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
VOLUME_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
LABEL_KEY = re.compile(r"^[a-z0-9]([a-z0-9._/-]{0,126}[a-z0-9])?$")
SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)
DURATION = re.compile(r"^(\d+)(ms|s|m|h)$")
# The host reaches the provider and local commands' environment (never a shell line),
# but it is still held to what a Docker host URL can be.
DOCKER_HOST = re.compile(
    r"^(unix:///[A-Za-z0-9._/-]+"
    r"|npipe:////\./pipe/[A-Za-z0-9._-]+"
    r"|tcp://([A-Za-z0-9.-]+|\[[0-9A-Fa-f:]+\]):\d{1,5}"
    r"|ssh://([A-Za-z0-9._-]+@)?([A-Za-z0-9.-]+|\[[0-9A-Fa-f:]+\])(:\d{1,5})?)$"
)
MAX_VALUE_LENGTH = 4096
# Host paths no environment may mount, whatever bindRoots says: the engine's socket and
# state are root on the host.
FORBIDDEN_BIND_SOURCES = (
    "/var/run/docker.sock",
    "/run/docker.sock",
    "/var/lib/docker",
    "/run/containerd",
    "/var/run/containerd",
)


class ConfigError(ValueError):
    """A stack's configuration is invalid. ``problems`` holds one line per problem."""

    def __init__(self, stack: str, problems: list[str]) -> None:
        self.stack = stack
        self.problems = problems
        count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(
            f"stack '{stack}': the dockyard configuration is invalid ({count}); "
            f"nothing was created:\n{lines}"
        )


def _fail(allowed: str) -> PydanticCustomError:
    return PydanticCustomError("dockyard", "{allowed}", {"allowed": allowed})


def _item_fail(allowed: str, index: int, value: Any) -> PydanticCustomError:
    """Like :func:`_fail`, for one item of a list: the message names ``key[index]``."""
    return PydanticCustomError(
        "dockyard_item", "{allowed}", {"allowed": allowed, "index": index, "value": value}
    )


# --- Value types -----------------------------------------------------------------------


def _port(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise _fail("an integer container port 1-65535")
    return value


def _memory_mb(value: Any) -> int:
    """Memory in MB: an integer (MB) or a size with a unit (``512m``, ``8g``, ``8GiB``)."""
    allowed = "a positive size in MB (8192) or with a unit (512m, 8g)"
    if isinstance(value, bool):
        raise _fail(allowed)
    if isinstance(value, int | float):
        megabytes = float(value)
    elif isinstance(value, str) and (match := SIZE.match(value)):
        number, unit = float(match.group(1)), (match.group(2) or "m").lower()[:1]
        scale = {"b": 1 / 2**20, "k": 1 / 1024, "m": 1, "g": 1024, "t": 1024**2}[unit]
        megabytes = number * scale
    else:
        raise _fail(allowed)
    if megabytes < 6:  # Docker's own minimum is 6 MB
        raise _fail(allowed + ", at least 6 MB")
    return int(megabytes)


def _cpus(value: Any) -> float:
    allowed = "a positive number of CPUs, e.g. 4 or 0.5"
    if isinstance(value, bool):
        raise _fail(allowed)
    try:
        cpus = float(value)
    except (TypeError, ValueError):
        raise _fail(allowed) from None
    if not 0 < cpus <= 1024:
        raise _fail(allowed)
    return cpus


def _duration(value: Any) -> str:
    if not isinstance(value, str) or not DURATION.match(value) or int(value[:-1] or 0) == 0:
        raise _fail("a positive duration such as 500ms, 10s, 1m")
    return value


def _positive_int(limit: int) -> Any:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit:
            raise _fail(f"an integer 1-{limit}")
        return value

    return check


def _bounded_text(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise _fail("a string, number or boolean-free scalar")
    text = str(value)
    if len(text) > MAX_VALUE_LENGTH:
        raise _fail(f"at most {MAX_VALUE_LENGTH} characters")
    if "\x00" in text or "\n" in text:
        raise _fail("a single line without NUL or newline characters")
    return text


Port = Annotated[int, BeforeValidator(_port)]
MemoryMB = Annotated[int, BeforeValidator(_memory_mb)]
Cpus = Annotated[float, BeforeValidator(_cpus)]
Duration = Annotated[str, BeforeValidator(_duration)]
Pids = Annotated[int, BeforeValidator(_positive_int(1_000_000))]
Nofile = Annotated[int, BeforeValidator(_positive_int(1_048_576))]
Retries = Annotated[int, BeforeValidator(_positive_int(100))]
Text = Annotated[str, BeforeValidator(_bounded_text)]


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )


# --- Pieces --------------------------------------------------------------------------


class Limits(_Model):
    """Resource limits; every field optional so a stack or environment overrides a part."""

    cpus: Cpus | None = None
    memory: MemoryMB | None = None
    pids: Pids | None = None
    nofile_soft: Nofile | None = None
    nofile_hard: Nofile | None = None

    def over(self, base: ResolvedLimits) -> ResolvedLimits:
        merged = base.model_dump()
        merged.update({k: v for k, v in self.model_dump().items() if v is not None})
        return ResolvedLimits.model_validate(merged)


class ResolvedLimits(_Model):
    """R-ENV-4 defaults: 4 CPUs, 8192 MB, 1000 processes, nofile 1024/2048."""

    cpus: float = 4.0
    memory: int = 8192
    pids: int = 1000
    nofile_soft: int = 1024
    nofile_hard: int = 2048


class Profile(_Model):
    cpus: Cpus | None = None
    memory: MemoryMB | None = None
    gpu: bool = False


BUILTIN_PROFILES: dict[str, Profile] = {
    "standard": Profile(cpus=4, memory=8192),
    "large": Profile(cpus=4, memory=16384),
    "gpu": Profile(cpus=4, memory=16384, gpu=True),
}


class Volume(_Model):
    """A parsed ``source:target[:ro|rw]`` spec; ``source`` is a named volume or an
    absolute host path."""

    source: str
    target: str
    read_only: bool
    spec: str

    @property
    def is_bind(self) -> bool:
        return self.source.startswith("/")


def parse_volume(value: Any) -> Volume:
    allowed = "'host:container[:ro]' or 'name:container[:ro]' with absolute paths"
    if not isinstance(value, str):
        raise _fail(allowed)
    parts = value.split(":")
    if len(parts) not in (2, 3) or not all(parts[:2]):
        raise _fail(allowed)
    source, target = parts[0], parts[1]
    mode = parts[2] if len(parts) == 3 else "rw"
    if mode not in ("ro", "rw"):
        raise _fail(allowed + "; the mode is ro or rw")
    if source.startswith("/"):
        if _has_traversal(source):
            raise _fail("an absolute host path without '..' or '.' components")
    elif "/" in source or source.startswith("."):
        raise _fail("an absolute host path (starting with /) or a volume name, not a relative path")
    elif not VOLUME_NAME.match(source):
        raise _fail("a volume name of letters, digits, '_', '.', '-' (starting alphanumeric)")
    if not target.startswith("/") or _has_traversal(target):
        raise _fail("an absolute container path without '..' or '.' components")
    normalised = target.rstrip("/") or "/"
    if normalised in RESERVED_MOUNTS or normalised == "/":
        raise _fail(
            f"a container path other than / and {', '.join(RESERVED_MOUNTS)} (dockyard mounts those)"
        )
    return Volume(source=source, target=normalised, read_only=mode == "ro", spec=value)


def _has_traversal(path: str) -> bool:
    return any(part in ("..", ".") for part in path.split("/"))


def _parse_gpu(value: Any) -> str | list[str] | None:
    allowed = "'all' or a list of device ids (e.g. [0, 1] or ['GPU-3a1f...'])"
    if value is None or value == "all":
        return value
    if isinstance(value, list) and value:
        ids = []
        for item in value:
            if isinstance(item, bool) or not isinstance(item, int | str):
                raise _fail(allowed)
            text = str(item)
            if not re.fullmatch(r"[A-Za-z0-9-]{1,64}", text):
                raise _fail(allowed)
            ids.append(text)
        if len(set(ids)) != len(ids):
            raise _fail(allowed + " without duplicates")
        return ids
    raise _fail(allowed)


class Environment(_Model):
    """One session's environment (R-ENV-2)."""

    session_id: str
    backend: Literal["claude", "codex"] = "claude"
    ports: list[Port] = Field(default_factory=list)
    volumes: list[Annotated[Volume, BeforeValidator(parse_volume)]] = Field(default_factory=list)
    env: dict[str, Text] = Field(default_factory=dict)
    secrets: list[str] = Field(default_factory=list)
    limits: Limits = Field(default_factory=Limits)
    gpu: Annotated[str | list[str] | None, BeforeValidator(_parse_gpu)] = None
    labels: dict[str, Text] = Field(default_factory=dict)
    profile: str | None = None
    image: str | None = None
    workspace_host_path: str | None = None
    """Host directory the workspace volume binds to (e.g. on a quota'd filesystem)."""
    egress: Literal["open", "allowlist"] = "open"
    egress_allow: list[str] = Field(default_factory=list)
    """Allowlist entries as written (presets, domains, IPv4 CIDRs, :port)."""

    @field_validator("egress_allow", mode="before")
    @classmethod
    def _egress_allow(cls, value: Any) -> Any:
        if not isinstance(value, list):
            return value
        for index, entry in enumerate(value):
            try:
                egress.normalise(entry)
            except egress.EgressError as exc:
                raise _item_fail(str(exc), index, entry) from None
        return value

    @property
    def egress_rules(self) -> list[str]:
        """The allowlist normalised and presets expanded (what the host enforces)."""
        return egress.expand(list(self.egress_allow))

    @field_validator("workspace_host_path", mode="before")
    @classmethod
    def _workspace_host_path(cls, value: Any) -> Any:
        if value is not None and (
            not isinstance(value, str)
            or not value.startswith("/")
            or _has_traversal(value)
            or len(value) > MAX_VALUE_LENGTH
        ):
            raise _fail("an absolute host directory without '..' or '.' components")
        return value

    @field_validator("session_id", mode="before")
    @classmethod
    def _session_id(cls, value: Any) -> str:
        if not isinstance(value, str) or not SESSION_ID.match(value):
            raise _fail(
                "a container name: letters, digits, '_', '.', '-', starting with a letter "
                "or digit, at most 63 characters"
            )
        return value

    @field_validator("secrets", mode="before")
    @classmethod
    def _secret_names(cls, value: Any) -> Any:
        if not isinstance(value, list):
            return value
        for index, name in enumerate(value):
            if not isinstance(name, str) or not ENV_NAME.match(name):
                raise _item_fail(
                    "an environment variable name: letters, digits, '_', not starting with a digit",
                    index,
                    name,
                )
        if len(set(value)) != len(value):
            raise _fail("each secret name once")
        return value


class ImageSource(_Model):
    """Either a published reference (``ref``) or a build of ``images/<variant>``."""

    ref: str | None = None
    tag: str | None = None
    args: dict[str, Text] = Field(default_factory=dict)

    @field_validator("ref", "tag", mode="before")
    @classmethod
    def _reference(cls, value: Any) -> Any:
        if value is not None and (
            not isinstance(value, str) or not re.fullmatch(r"[a-z0-9][a-z0-9._/:@-]{0,254}", value)
        ):
            raise _fail("an image reference such as ghcr.io/acme/dockyard-core:1.2 (lower case)")
        return value

    @field_validator("args", mode="before")
    @classmethod
    def _arg_names(cls, value: Any) -> Any:
        if isinstance(value, dict):
            for name in value:
                if not ENV_NAME.match(str(name)):
                    raise _fail("build arg names made of letters, digits and '_'")
        return value


class Healthcheck(_Model):
    """R-ENV-7 timing. ``start_interval`` needs engine API >= 1.44 (Docker 25); on older
    engines leave it unset: the first probe then runs one ``interval`` after start."""

    interval: Duration = "60s"
    timeout: Duration = "10s"
    retries: Retries = 3
    start_period: Duration = "30s"
    start_interval: Duration | None = None


class StackConfig(_Model):
    """Everything the program needs, parsed from the ``dockyard:`` namespace."""

    stack: str
    cwd: str
    manifest_dir: str = DEFAULT_MANIFEST_DIR
    bind_roots: list[str] = Field(default_factory=list)
    """Host directories bind mounts may come from, besides ``cwd``."""
    docker_host: str | None = None
    profile: str = "standard"
    profiles: dict[str, Profile] = Field(default_factory=dict)
    image: ImageSource = Field(default_factory=ImageSource)
    gpu_image: ImageSource = Field(default_factory=ImageSource)
    limits: Limits = Field(default_factory=Limits)
    healthcheck: Healthcheck = Field(default_factory=Healthcheck)
    environments: list[Environment] = Field(default_factory=list)

    @field_validator("cwd", mode="before")
    @classmethod
    def _absolute_cwd(cls, value: Any) -> Any:
        if not isinstance(value, str) or not value.startswith("/") or _has_traversal(value):
            raise _fail("an absolute host directory without '..' components")
        return value

    @field_validator("bind_roots", mode="before")
    @classmethod
    def _bind_roots(cls, value: Any) -> Any:
        allowed = "a list of absolute host directories without '..' or '.' components"
        if not isinstance(value, list):
            raise _fail(allowed)
        for index, root in enumerate(value):
            if not isinstance(root, str) or not root.startswith("/") or _has_traversal(root):
                raise _item_fail(allowed, index, root)
        return value

    @field_validator("manifest_dir", mode="before")
    @classmethod
    def _manifest_dir(cls, value: Any) -> Any:
        if not isinstance(value, str) or not value or _has_traversal(value):
            raise _fail("a directory path (relative to cwd, or absolute) without '..' components")
        return value

    @field_validator("docker_host", mode="before")
    @classmethod
    def _docker_host(cls, value: Any) -> Any:
        if value is not None and (not isinstance(value, str) or not DOCKER_HOST.match(value)):
            raise _fail("a Docker host URL: unix:///path, tcp://host:port or ssh://user@host")
        return value

    def all_profiles(self) -> dict[str, Profile]:
        return {**BUILTIN_PROFILES, **self.profiles}

    def profile_of(self, env: Environment) -> Profile:
        return self.all_profiles()[env.profile or self.profile]

    def limits_of(self, env: Environment) -> ResolvedLimits:
        """Defaults < profile < stack limits < environment limits."""
        profile = self.profile_of(env)
        base = ResolvedLimits()
        from_profile = Limits(cpus=profile.cpus, memory=profile.memory).over(base)
        return env.limits.over(self.limits.over(from_profile))

    @property
    def manifest_path(self) -> str:
        return os.path.join(self.cwd, self.manifest_dir)


# --- Parsing and messages ----------------------------------------------------------------

TOP_LEVEL_KEYS = sorted(to_camel(name) for name in StackConfig.model_fields if name != "stack")


def parse(
    raw: Mapping[str, Any],
    *,
    stack: str,
    cwd: str,
    secret_keys: Iterable[str] = (),
    check_secrets: bool = True,
) -> StackConfig:
    """Validate the ``dockyard:`` config of ``stack``.

    ``raw`` maps full keys (``dockyard:environments``) to decoded values, as Pulumi holds
    them; ``secret_keys`` names the keys stored with ``--secret``. ``check_secrets=False``
    skips "secret not set" (for previews that never read a secret). Raises
    :class:`ConfigError` with every problem found.
    """
    secret_keys = set(secret_keys)
    problems: list[str] = []
    data: dict[str, Any] = {"stack": stack, "cwd": cwd}
    secret_values: dict[str, bool] = {}  # secret name -> stored as secret?
    for key, value in raw.items():
        namespace, _, name = key.partition(":")
        if namespace != NAMESPACE:
            continue
        if ENV_NAME.match(name) and name.upper() == name:
            secret_values[name] = key in secret_keys
        elif name in TOP_LEVEL_KEYS:
            data[name] = value
        else:
            problems.append(
                f"{key}: unknown key (allowed: {', '.join(NAMESPACE + ':' + k for k in TOP_LEVEL_KEYS)}, "
                f"or an UPPER_CASE secret name set with `pulumi config set --secret`)"
            )
    for name, is_secret in sorted(secret_values.items()):
        if not is_secret:
            problems.append(
                f"{NAMESPACE}:{name}: <redacted> is stored as plain config (allowed: secrets only; "
                f"run `pulumi config set --secret {name} <value>`)"
            )

    config: StackConfig | None = None
    try:
        config = StackConfig.model_validate(data)
    except ValidationError as exc:
        problems.extend(_messages(exc))
    problems.extend(_cross_checks(data, secret_values, check_secrets))
    if problems:
        raise ConfigError(stack, sorted(problems, key=_natural))
    assert config is not None
    return config


def _key_path(loc: tuple[int | str, ...]) -> str:
    path = NAMESPACE + ":"
    for index, part in enumerate(loc):
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += ("" if index == 0 else ".") + str(part)
    return path


def _lookup(data: Any, loc: tuple[int | str, ...]) -> Any:
    for part in loc:
        try:
            data = data[part]
        except (KeyError, IndexError, TypeError):
            return None
    return data


def _render(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=True) if not isinstance(value, str) else repr(value)
    if not text.isascii():
        text = ascii(value)
    return text if len(text) <= 80 else text[:77] + "..."


_NESTED_MODELS: dict[str, type[BaseModel]] = {
    "environments": Environment,
    "limits": Limits,
    "image": ImageSource,
    "gpuImage": ImageSource,
    "healthcheck": Healthcheck,
    "profiles": Profile,
}
_TYPE_NAMES = {
    "list_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "string_type": "a string",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "int_type": "a number",
    "float_type": "a number",
}


def _model_at(loc: tuple[int | str, ...]) -> type[BaseModel]:
    model: type[BaseModel] = StackConfig
    for part in loc:
        if isinstance(part, str) and part in _NESTED_MODELS:
            model = _NESTED_MODELS[part]
    return model


def _messages(exc: ValidationError) -> list[str]:
    messages = []
    for error in exc.errors():
        loc = tuple(error["loc"])
        kind, ctx, value = error["type"], error.get("ctx") or {}, error.get("input")
        if kind == "dockyard_item":
            loc, value = (*loc, ctx["index"]), ctx["value"]
        key = _key_path(loc)
        if kind == "missing":
            messages.append(f"{key}: missing (allowed: a value is required)")
            continue
        if kind == "extra_forbidden":
            known = ", ".join(sorted(to_camel(f) for f in _model_at(loc[:-1]).model_fields))
            messages.append(f"{key}: unknown key (allowed: {known})")
            continue
        if kind in ("dockyard", "dockyard_item"):
            allowed = ctx["allowed"]
        elif kind == "literal_error":
            allowed = "one of " + str(ctx.get("expected", ""))
        else:
            allowed = _TYPE_NAMES.get(kind, error["msg"])
        if len(loc) >= 2 and loc[-2] == "env" and SECRET_NAME_PATTERN.search(str(loc[-1])):
            value = "<redacted>"
        rendered = value if value == "<redacted>" else _render(value)
        messages.append(f"{key}: {rendered} is not allowed (allowed: {allowed})")
    return messages


def _natural(problem: str) -> list[Any]:
    key = problem.split(": ", 1)[0]
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", key)]


def _cross_checks(
    data: Mapping[str, Any], secret_values: Mapping[str, bool], check_secrets: bool
) -> list[str]:
    """Checks across fields, on the raw data so they run even when other fields fail."""
    problems: list[str] = []
    envs = data.get("environments")
    if not isinstance(envs, list):
        return problems
    profiles = {**BUILTIN_PROFILES}
    raw_profiles = data.get("profiles")
    if isinstance(raw_profiles, dict):
        for name, profile in raw_profiles.items():
            try:
                profiles[str(name)] = Profile.model_validate(profile)
            except ValidationError:
                continue
    stack_profile = data.get("profile", "standard")
    if stack_profile not in profiles:
        problems.append(
            f"{NAMESPACE}:profile: {_render(stack_profile)} is not allowed "
            f"(allowed: one of {', '.join(sorted(profiles))})"
        )
    seen_sessions: dict[str, int] = {}
    for index, env in enumerate(envs):
        if not isinstance(env, dict):
            continue
        path = f"{NAMESPACE}:environments[{index}]"
        session = env.get("sessionId")
        if isinstance(session, str):
            if session in seen_sessions:
                problems.append(
                    f"{path}.sessionId: {_render(session)} is not allowed (allowed: a session id "
                    f"not used by another environment; environments[{seen_sessions[session]}] has it)"
                )
            else:
                seen_sessions[session] = index
        problems.extend(
            _duplicates(path, "ports", env.get("ports"), lambda p: p, "each container port once")
        )
        problems.extend(
            _duplicates(
                path,
                "volumes",
                env.get("volumes"),
                _volume_target,
                "each container path mounted once",
            )
        )
        problems.extend(_bind_source_checks(path, env, data))
        if env.get("egressAllow") and env.get("egress", "open") == "open":
            problems.append(
                f"{path}.egressAllow: {_render(env['egressAllow'])} is not allowed (allowed: "
                "only with egress: allowlist — an open environment reaches everything)"
            )
        profile_name = env.get("profile", stack_profile)
        if "profile" in env and profile_name not in profiles:
            problems.append(
                f"{path}.profile: {_render(profile_name)} is not allowed "
                f"(allowed: one of {', '.join(sorted(profiles))})"
            )
        profile = profiles.get(str(profile_name))
        if env.get("gpu") is not None and profile is not None and not profile.gpu:
            problems.append(
                f"{path}.gpu: {_render(env['gpu'])} is not allowed (allowed: only on a gpu profile; "
                f"profile {_render(profile_name)} has none — set profile: gpu)"
            )
        plain_env = env.get("env")
        if isinstance(plain_env, dict):
            for name in plain_env:
                if isinstance(name, str) and not ENV_NAME.match(name):
                    problems.append(
                        f"{path}.env.{name}: {_render(name)} is not allowed (allowed: an environment "
                        "variable name: letters, digits, '_', not starting with a digit)"
                    )
                elif isinstance(name, str) and name.startswith("DOCKYARD_"):
                    problems.append(
                        f"{path}.env.{name}: {_render(name)} is not allowed (allowed: names "
                        "outside DOCKYARD_*, which dockyard sets itself)"
                    )
                elif isinstance(name, str) and SECRET_NAME_PATTERN.search(name):
                    problems.append(
                        f"{path}.env.{name}: <redacted> is not allowed (allowed: secrets only as "
                        f"secret config; list {name} under secrets and run "
                        f"`pulumi config set --secret {name} <value>`)"
                    )
        labels = env.get("labels")
        if isinstance(labels, dict):
            for name in labels:
                if not isinstance(name, str) or not LABEL_KEY.match(name):
                    problems.append(
                        f"{path}.labels.{name}: {_render(name)} is not allowed (allowed: a label key "
                        "of lower-case letters, digits, '.', '_', '/', '-')"
                    )
                elif name.startswith("dockyard."):
                    problems.append(
                        f"{path}.labels.{name}: {_render(name)} is not allowed (allowed: keys "
                        "outside dockyard.*, which dockyard sets itself)"
                    )
        secrets = env.get("secrets")
        if isinstance(secrets, list) and check_secrets:
            for position, name in enumerate(secrets):
                if isinstance(name, str) and ENV_NAME.match(name) and name not in secret_values:
                    problems.append(
                        f"{path}.secrets[{position}]: {_render(name)} is not set (allowed: a secret "
                        f"in this stack's config; run `pulumi config set --secret {name} <value>`)"
                    )
    return problems


def _bind_source_checks(path: str, env: Mapping[str, Any], data: Mapping[str, Any]) -> list[str]:
    """Bind sources (declared volumes and the workspace host path) must lie under the
    project directory or a listed bind root, and never be the engine's socket or state."""
    cwd = data.get("cwd")
    roots = [cwd] if isinstance(cwd, str) else []
    raw_roots = data.get("bindRoots")
    if isinstance(raw_roots, list):
        roots += [r for r in raw_roots if isinstance(r, str) and r.startswith("/")]
    roots = [os.path.normpath(r) for r in roots]
    allowed_roots = ", ".join(repr(r) for r in roots) or "none"
    sources: list[tuple[str, str]] = []
    volumes = env.get("volumes")
    if isinstance(volumes, list):
        for index, spec in enumerate(volumes):
            try:
                volume = parse_volume(spec)
            except PydanticCustomError:
                continue  # the field validator reports it
            if volume.is_bind:
                sources.append((f"{path}.volumes[{index}]", spec))
    workspace = env.get("workspaceHostPath")
    if isinstance(workspace, str) and workspace.startswith("/") and not _has_traversal(workspace):
        sources.append((f"{path}.workspaceHostPath", workspace))
    problems = []
    for key, value in sources:
        source = os.path.normpath(value.split(":", 1)[0])
        if any(_is_under(source, forbidden) for forbidden in FORBIDDEN_BIND_SOURCES) or any(
            _is_under(forbidden, source) for forbidden in FORBIDDEN_BIND_SOURCES
        ):
            problems.append(
                f"{key}: {_render(value)} is not allowed (allowed: host paths that neither are "
                f"nor contain the Docker engine's socket or state: "
                f"{', '.join(FORBIDDEN_BIND_SOURCES)})"
            )
        elif not any(_is_under(source, root) for root in roots):
            problems.append(
                f"{key}: {_render(value)} is not allowed (allowed: a host path under the "
                f"project directory or a bindRoots entry: {allowed_roots})"
            )
        elif (
            key.endswith("workspaceHostPath") and _local_engine(data) and not os.path.isdir(source)
        ):
            # The engine would only notice when the container starts, after the network
            # and volumes exist; on a local engine we can say it now.
            problems.append(
                f"{key}: {_render(value)} is not allowed (allowed: an existing host directory, "
                "writable by the agent, uid 1000)"
            )
    return problems


def _local_engine(data: Mapping[str, Any]) -> bool:
    host = data.get("dockerHost")
    return host is None or (isinstance(host, str) and host.startswith("unix://"))


def _is_under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _volume_target(spec: Any) -> Any:
    if isinstance(spec, str) and spec.count(":") in (1, 2):
        return spec.split(":")[1].rstrip("/") or "/"
    return None


def _duplicates(path: str, field: str, items: Any, identity: Any, allowed: str) -> list[str]:
    """One problem per repeated item, naming where it first appeared."""
    if not isinstance(items, list):
        return []
    problems, first_seen = [], {}
    for index, item in enumerate(items):
        ident = identity(item)
        if ident is None or isinstance(ident, dict | list):
            continue
        if ident in first_seen:
            problems.append(
                f"{path}.{field}[{index}]: {_render(item)} is not allowed "
                f"(allowed: {allowed}; {field}[{first_seen[ident]}] has it already)"
            )
        else:
            first_seen[ident] = index
    return problems


# --- Reading Pulumi's config ---------------------------------------------------------------


def from_pulumi() -> StackConfig:
    """Parse the running stack's ``dockyard:`` config. The only reader of Pulumi config."""
    import pulumi
    from pulumi.runtime import config as runtime_config

    raw: dict[str, Any] = {}
    all_config = dict(runtime_config.CONFIG.get()) or dict(runtime_config.get_config_env() or {})
    for key, value in all_config.items():
        raw[key] = _decode(value)
    secret_keys = {key for key in raw if runtime_config.is_config_secret(key)}
    secret_keys |= set(runtime_config.get_config_secret_keys_env())
    return parse(raw, stack=pulumi.get_stack(), cwd=os.getcwd(), secret_keys=secret_keys)


def _decode(value: Any) -> Any:
    """Pulumi hands structured values over as JSON text."""
    if isinstance(value, str) and value[:1] in ("[", "{"):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def from_stack_file(path: str) -> tuple[dict[str, Any], set[str]]:
    """Raw config and secret keys of a ``Pulumi.<stack>.yaml`` (for tests and tooling)."""
    import yaml

    with open(path, encoding="utf-8") as handle:
        document = yaml.safe_load(handle) or {}
    raw: dict[str, Any] = {}
    secret_keys: set[str] = set()
    for key, value in (document.get("config") or {}).items():
        full = key if ":" in key else f"{NAMESPACE}:{key}"
        if isinstance(value, dict) and set(value) == {"secure"}:
            secret_keys.add(full)
        raw[full] = value
    return raw, secret_keys
