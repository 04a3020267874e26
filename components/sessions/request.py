"""A session request, in the reference app's shape, turned into one validated stack.

The reference app sends ``{sessionId, cwd, backend, container: {image, ports, volumes,
env}}`` to ``POST /api/sessions/create``; dockyard accepts that as is, plus its own
environment keys at the top level (``secrets``, ``limits``, ``egress``, ``labels``,
``tenant``…). Nothing is validated here that the stack model does not already say: the
request becomes the ``dockyard:`` config of a one-environment stack (host settings +
this environment) and :func:`dockyard.config.parse` judges it, so a request gets the
same rules and the same messages as a stack file, with key paths named as the request
spells them (``request.container.ports[1]``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..config import ConfigError, Environment, StackConfig, parse
from ..config.messages import suggest

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
SESSIONS_STACK = "sessions"
"""The stack label of sessions without a tenant (a tenant's sessions carry its name)."""


@dataclass(frozen=True)
class SessionPlan:
    """Everything needed to create one session, validated."""

    config: StackConfig
    environment: Environment
    stack_name: str
    """The Pulumi stack of this session: ``<tenant or 'sessions'>.<sessionId>``."""

    @property
    def session_id(self) -> str:
        return self.environment.session_id

    @property
    def tenant(self) -> str | None:
        return self.environment.tenant

    @property
    def manifest_path(self) -> str:
        return f"{self.config.manifest_dir_of(self.environment)}/{self.session_id}.json"


def _path_for_request(problem: str) -> str:
    """``dockyard:environments[0].ports[1]: …`` -> ``request.container.ports[1]: …``."""
    prefix = "dockyard:environments[0]"
    if problem.startswith(prefix):
        rest = problem[len(prefix) :]
        key = re.match(r"\.([A-Za-z]+)", rest)
        nested = "container." if key and key.group(1) in CONTAINER_KEYS else ""
        return f"request.{nested}{rest[1:]}" if rest.startswith(".") else f"request{rest}"
    if problem.startswith("dockyard:cwd:"):
        return "request.cwd:" + problem[len("dockyard:cwd:") :]
    return "host settings " + problem


def plan(
    request: Mapping[str, Any],
    settings: Mapping[str, Any],
    *,
    secret_names: set[str] | frozenset[str] = frozenset(),
) -> SessionPlan:
    """Validate ``request`` on top of the host ``settings`` (stack keys without the
    ``dockyard:`` prefix). Raises :class:`ConfigError` naming every problem at once.
    ``secret_names`` are the secrets the caller can supply (checked like a stack's)."""
    problems: list[str] = []
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
    if "environments" in settings:
        problems.append(
            "host settings dockyard:environments: not allowed (allowed: host-wide keys only; "
            "sessions come from requests)"
        )
    tenant = environment.get("tenant")
    stack = tenant if isinstance(tenant, str) and tenant else SESSIONS_STACK
    raw = {f"dockyard:{k}": v for k, v in settings.items() if k != "environments"}
    raw["dockyard:environments"] = [environment]
    if "cwd" in request:
        raw["dockyard:cwd"] = request["cwd"]
    else:
        problems.append("request.cwd: missing (allowed: the absolute project directory)")
    for name in secret_names:
        raw[f"dockyard:{name}"] = "<supplied>"
    try:
        config = parse(
            raw,
            stack=stack,
            cwd=raw.get("dockyard:cwd", "/") if isinstance(raw.get("dockyard:cwd"), str) else "/",
            secret_keys={f"dockyard:{n}" for n in secret_names},
        )
    except ConfigError as error:
        problems.extend(_path_for_request(p) for p in error.problems)
        config = None
    if problems or config is None:
        raise ConfigError(str(request.get("sessionId", "request")), problems)
    env = config.environments[0]
    return SessionPlan(config=config, environment=env, stack_name=f"{stack}.{env.session_id}")


def _shown_key(key: Any) -> str:
    text = str(key)
    return text if re.fullmatch(r"[A-Za-z][A-Za-z0-9_]{0,31}", text, re.ASCII) else "<this key>"
