"""A session request, in the reference app's shape, turned into one validated stack.

The reference app sends ``{sessionId, cwd, backend, container: {image, ports, volumes,
env}}`` to ``POST /api/sessions/create``; dockyard accepts that as is, plus its own
environment keys at the top level (``secrets``, ``limits``, ``egress``, ``labels``,
``tenant``…). Nothing is validated here that the stack model does not already say: the
request's keys are sorted into one environment and
:func:`dockyard.config.from_request` judges it on top of the host settings as a
one-environment stack, so a request gets the same rules and the same messages as a stack
file, with key paths named as the request spells them (:func:`request_key`:
``request.container.ports[1]``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..config import (
    MISSING,
    ConfigError,
    Environment,
    SecretHint,
    StackConfig,
    from_request,
    stack_secret_hint,
)
from ..config.messages import KeyName, Loc, key_path, suggest
from ..config.sources import KEY_LIKE
from ..contract import (
    NAMING_CURRENT,
    NAMING_LEGACY,
    SESSION_ID_V2_ALLOWED,
    UNTENANTED_STACK,
    session_id_reserved,
)

CONTAINER_KEYS = ("image", "ports", "volumes", "env")
TOP_KEYS = ("sessionId", "cwd", "backend", "container")
# Environment keys a request may set at its top level (the container's are nested).
ENVIRONMENT_KEYS = tuple(
    sorted(
        (f.alias or n)
        for n, f in Environment.model_fields.items()
        if (f.alias or n) not in (*CONTAINER_KEYS, "sessionId", "backend")
    )
)
SESSIONS_STACK = UNTENANTED_STACK
"""The stack label of sessions without a tenant (a tenant's sessions carry its name; no
tenant may be called this: dockyard.contract.RESERVED_TENANTS)."""


@dataclass(frozen=True)
class SessionPlan:
    """Everything needed to create one session, validated."""

    config: StackConfig
    environment: Environment
    stack_name: str
    """The Pulumi stack of this session: ``<tenant or 'sessions'>.<sessionId>`` (a tenant
    name has no '.', and none is ``sessions``: one stack per (tenant, session))."""

    @property
    def environment_id(self) -> str:
        """The engine name of its container and network (prefix of its volumes)."""
        return self.config.environment_id_of(self.environment)

    @property
    def session_id(self) -> str:
        return self.environment.session_id

    @property
    def tenant(self) -> str | None:
        return self.environment.tenant

    @property
    def manifest_path(self) -> str:
        return f"{self.config.manifest_dir_of(self.environment)}/{self.session_id}.json"


def request_naming(settings: str = "host settings") -> KeyName:
    """How a request names a location of its one-environment stack: the environment's keys
    as the request spells them (``request.container.ports[1]``, ``request.egressAllow[0]``),
    its ``cwd`` as ``request.cwd``, anything else as the host settings key it came from, the
    way that file spells it (``limits.cpus in host settings /etc/dockyard/settings.yaml``)."""

    def name(loc: Loc) -> str:
        if loc[:2] == ("environments", 0):
            rest = loc[2:]
            if not rest:
                return "request"
            head = re.match(r"[A-Za-z]+", str(rest[0]))
            nested = "container." if head and head.group() in CONTAINER_KEYS else ""
            return key_path(rest, prefix=f"request.{nested}")
        if loc == ("cwd",):
            return "request.cwd"
        return f"{key_path(loc, prefix='') or 'the file'} in {settings}"

    return name


request_key = request_naming()
"""A request's naming when its host settings' file is not known."""


def plan(
    request: Mapping[str, Any],
    settings: Mapping[str, Any],
    *,
    secret_names: set[str] | frozenset[str] = frozenset(),
    secret_hint: SecretHint = stack_secret_hint,
    naming: str = NAMING_CURRENT,
    problems: list[str] | None = None,
    settings_name: str = "host settings",
) -> SessionPlan:
    """Validate ``request`` on top of the host ``settings`` (stack keys without the
    namespace). Raises :class:`ConfigError` naming every problem at once.
    ``secret_names`` are the secrets the caller can supply (checked like a stack's);
    ``secret_hint`` says how the caller supplies a missing one. ``naming`` picks the engine
    names (dockyard.contract.NAMINGS): v2 for a new session, what its registry record says
    for an existing one. ``problems``: what the caller found already (listed first);
    ``settings_name``: how the host settings are named (their file)."""
    problems = list(problems or [])
    if not isinstance(request, Mapping):
        raise ConfigError("request", ["request: not a JSON object (allowed: a mapping)"])
    environment: dict[str, Any] = {}
    for key, value in request.items():
        if key in ("sessionId", "backend") or key in ENVIRONMENT_KEYS:
            environment[key] = value
        elif key == "cwd":
            continue
        elif key == "container":
            if not isinstance(value, Mapping):
                problems.append(
                    "request.container: not a mapping (allowed: a mapping of "
                    f"{', '.join(CONTAINER_KEYS)})"
                )
                continue
            for inner, item in value.items():
                if inner in CONTAINER_KEYS:
                    if not (inner == "image" and item in (None, "")):
                        environment[inner] = item
                else:
                    problems.append(
                        f"request.container.{_shown_key(inner)}: unknown key (allowed: "
                        f"{', '.join(CONTAINER_KEYS)}{suggest(str(inner), CONTAINER_KEYS)})"
                    )
        else:
            allowed = (*TOP_KEYS, *ENVIRONMENT_KEYS)
            problems.append(
                f"request.{_shown_key(key)}: unknown key (allowed: {', '.join(allowed)}"
                f"{suggest(str(key), allowed)})"
            )
    session = environment.get("sessionId")
    if naming != NAMING_LEGACY and isinstance(session, str) and session_id_reserved(session):
        problems.append(
            f"request.sessionId: {session!r} is not allowed (allowed: {SESSION_ID_V2_ALLOWED})"
        )
    tenant = environment.get("tenant")
    stack = tenant if isinstance(tenant, str) and tenant else SESSIONS_STACK
    try:
        config = from_request(
            settings,
            environment,
            stack=stack,
            cwd=request.get("cwd", MISSING),
            secret_names=secret_names,
            name=request_naming(settings_name),
            secret_hint=secret_hint,
        )
    except ConfigError as error:
        problems.extend(error.problems)
        config = None
    if problems or config is None:
        raise ConfigError(str(request.get("sessionId", "request")), problems)
    config = config.with_naming(naming)
    env = config.environments[0]
    return SessionPlan(config=config, environment=env, stack_name=f"{stack}.{env.session_id}")


def _shown_key(key: Any) -> str:
    text = str(key)
    return text if KEY_LIKE.fullmatch(text) else "<this key>"
