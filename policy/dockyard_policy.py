"""dockyard's container hardening as Pulumi CrossGuard policies, for any Pulumi program.

Every ``docker:index/container:Container`` a program declares is held to what dockyard's
own environments get (components/environment.py): not privileged, every capability
dropped, ``no-new-privileges``, a non-root user, a memory limit with no swap on top, no
Docker engine socket or state mounted, and a cgroup pids limit.

The pids limit is the one rule a resource alone cannot show: pulumi-docker 5 has no input
for it, so dockyard sets it with ``docker update --pids-limit`` in a command resource that
depends on the container. That rule is a stack policy: each container needs a command
resource that depends on it and whose create command runs ``docker update`` with a
positive ``--pids-limit``, literal or from the command's own environment.

Property names are the provider schema's (camelCase), numbers arrive as floats. This module
imports nothing from dockyard: the pack runs next to any program.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from pulumi_policy import (
    EnforcementLevel,
    Policy,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
    StackValidationPolicy,
)

# pulumi_policy's ReportViolation types the urn as required; it defaults to None, and a
# resource validation passes the message alone (the urn is the resource's own).
Report = Callable[..., None]

CONTAINER = "docker:index/container:Container"
VOLUME = "docker:index/volume:Volume"
COMMANDS = ("command:local:Command", "command:remote:Command")

# Host paths that are root on the host: the engine's socket and state, containerd's.
# A mount of one of them, or of a directory holding one, is refused.
ENGINE_PATHS = (
    "/var/run/docker.sock",
    "/run/docker.sock",
    "/var/lib/docker",
    "/run/containerd",
    "/var/run/containerd",
    "/var/lib/containerd",
)
# Namespace modes that share the host's: as good as privileged for escaping.
HOST_NAMESPACES = ("pidMode", "ipcMode", "usernsMode", "cgroupnsMode")
ROOT_USERS = ("", "0", "root")

# `docker update ... --pids-limit N` or `--pids-limit=N`; N literal or "$VAR" / "${VAR}".
PIDS_UPDATE = re.compile(
    r"\bdocker\s+update\b[^;&|\n]*?--pids-limit(?:\s+|=)"
    r"""(?:"|')?(?:\$\{?(?P<var>[A-Za-z_][A-Za-z0-9_]*)\}?|(?P<value>-?[0-9]+))(?:"|')?"""
)


def _items(value: Any) -> Iterator[Any]:
    return iter(value or [])


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _is_container(args: ResourceValidationArgs) -> bool:
    return args.resource_type == CONTAINER


# --- Resource policies -------------------------------------------------------------------------


def _not_privileged(args: ResourceValidationArgs, report: Report) -> None:
    if not _is_container(args):
        return
    props = args.props
    if props.get("privileged"):
        report("privileged: true is not allowed (allowed: false or unset)")
    for key in HOST_NAMESPACES:
        if _text(props.get(key)).lower() == "host":
            report(f"{key}: 'host' is not allowed (allowed: the container's own namespace)")


def _all_capabilities_dropped(args: ResourceValidationArgs, report: Report) -> None:
    if not _is_container(args):
        return
    capabilities = args.props.get("capabilities") or {}
    drops = [_text(c).upper() for c in _items(capabilities.get("drops"))]
    if "ALL" not in drops:
        report(f"capabilities.drops: {drops} is not allowed (allowed: a list containing 'ALL')")
    adds = list(_items(capabilities.get("adds")))
    if adds:
        report(f"capabilities.adds: {adds} is not allowed (allowed: none)")


def _no_new_privileges(args: ResourceValidationArgs, report: Report) -> None:
    if not _is_container(args):
        return
    options = [_text(o).replace(" ", "") for o in _items(args.props.get("securityOpts"))]
    if not any(
        o in ("no-new-privileges", "no-new-privileges:true", "no-new-privileges=true")
        for o in options
    ):
        report(
            f"securityOpts: {options} is not allowed (allowed: a list containing "
            "'no-new-privileges:true')"
        )


def _non_root_user(args: ResourceValidationArgs, report: Report) -> None:
    if not _is_container(args):
        return
    user = _text(args.props.get("user"))
    name = user.split(":", 1)[0]
    if name in ROOT_USERS:
        # Unset means the image's USER, which a policy cannot see: it must be explicit.
        report(
            f"user: {user!r} is not allowed (allowed: a non-root user set on the container, "
            "e.g. '1000:1000')"
        )


def _memory_without_swap(args: ResourceValidationArgs, report: Report) -> None:
    if not _is_container(args):
        return
    memory = args.props.get("memory")
    swap = args.props.get("memorySwap")
    if not memory or memory <= 0:
        report(f"memory: {memory!r} is not allowed (allowed: a limit in MB, above 0)")
    elif swap != memory:
        # memorySwap is memory plus swap: equal means no swap on top of the limit.
        report(
            f"memorySwap: {swap!r} is not allowed (allowed: equal to memory, {memory:g}: "
            "no swap on top of the memory limit)"
        )


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _engine_path(source: Any) -> str | None:
    """The engine path a host path is, holds or lies in; None if it is none of them."""
    text = _text(source)
    if not text.startswith("/"):
        return None
    path = posixpath.normpath(text)
    for engine in ENGINE_PATHS:
        if _under(path, engine) or _under(engine, path):
            return engine
    return None


def _host_sources(props: Mapping[str, Any]) -> Iterator[tuple[str, Any]]:
    for index, volume in enumerate(_items(props.get("volumes"))):
        yield f"volumes[{index}].hostPath", volume.get("hostPath")
    for index, mount in enumerate(_items(props.get("mounts"))):
        if _text(mount.get("type")) == "bind":
            yield f"mounts[{index}].source", mount.get("source")


def _no_engine_socket_or_state(args: ResourceValidationArgs, report: Report) -> None:
    if args.resource_type == CONTAINER:
        sources = list(_host_sources(args.props))
    elif args.resource_type == VOLUME:
        # A named volume bound to a host directory (driver local, o=bind) is a bind mount.
        options = args.props.get("driverOpts") or {}
        sources = (
            [("driverOpts.device", options.get("device"))]
            if "bind" in _text(options.get("o")).split(",")
            else []
        )
    else:
        return
    for where, source in sources:
        engine = _engine_path(source)
        if engine:
            report(
                f"{where}: {source!r} is not allowed (allowed: host paths that neither are nor "
                f"contain the container engine's socket or state; this one reaches {engine})"
            )


# --- Stack policy --------------------------------------------------------------------------------


def _pids_limit_of(command: Any) -> int | None:
    """The pids limit ``command`` applies with ``docker update``, or None."""
    match = PIDS_UPDATE.search(_text(command.props.get("create")))
    if match is None:
        return None
    value = match.group("value")
    if value is None:
        value = _text((command.props.get("environment") or {}).get(match.group("var")))
    try:
        return int(value)
    except ValueError:
        return None


def _depends_on(resource: Any, target: Any) -> bool:
    return any(d.urn == target.urn for d in resource.dependencies) or any(
        d.urn == target.urn for deps in resource.property_dependencies.values() for d in deps
    )


def _pids_limited(args: StackValidationArgs, report: Report) -> None:
    commands = [r for r in args.resources if r.resource_type in COMMANDS]
    for container in args.resources:
        if container.resource_type != CONTAINER:
            continue
        limits = [
            limit
            for command in commands
            if _depends_on(command, container) and (limit := _pids_limit_of(command)) is not None
        ]
        if not limits:
            report(
                "no pids limit: pulumi-docker has no input for it, so a command resource that "
                "depends on this container must run `docker update --pids-limit N` (N > 0) on it",
                container.urn,
            )
        elif min(limits) <= 0:
            report(
                f"pids limit {min(limits)} is not allowed (allowed: above 0; 0 and -1 mean "
                "no limit)",
                container.urn,
            )


POLICIES: list[Policy] = [
    ResourceValidationPolicy(
        name="docker-container-not-privileged",
        description="Docker containers are not privileged and share no host namespace.",
        validate=_not_privileged,
    ),
    ResourceValidationPolicy(
        name="docker-container-drops-all-capabilities",
        description="Docker containers drop every Linux capability and add none.",
        validate=_all_capabilities_dropped,
    ),
    ResourceValidationPolicy(
        name="docker-container-no-new-privileges",
        description="Docker containers run with no-new-privileges (no setuid escalation).",
        validate=_no_new_privileges,
    ),
    ResourceValidationPolicy(
        name="docker-container-non-root-user",
        description="Docker containers set a non-root user explicitly.",
        validate=_non_root_user,
    ),
    ResourceValidationPolicy(
        name="docker-container-memory-limit-without-swap",
        description="Docker containers have a memory limit and no swap on top (memorySwap = memory).",
        validate=_memory_without_swap,
    ),
    ResourceValidationPolicy(
        name="docker-no-engine-socket-or-state",
        description="No container or bind-backed volume reaches the engine's socket or state.",
        validate=_no_engine_socket_or_state,
    ),
    StackValidationPolicy(
        name="docker-container-pids-limit",
        description="Every Docker container gets a cgroup pids limit (docker update --pids-limit).",
        validate=_pids_limited,
    ),
]

PACK_NAME = "dockyard-container-hardening"
ENFORCEMENT = EnforcementLevel.MANDATORY
