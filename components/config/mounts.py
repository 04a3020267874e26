"""Host paths and volumes an environment may mount.

A bind source must be under the project directory or a ``bindRoots`` entry and never the
container engine's socket or state; dockyard's own mounts are reserved targets.
"""

from __future__ import annotations

import os
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BeforeValidator,
    ValidationInfo,
)

from .. import contract
from . import values as v
from .base import Model
from .scope import Scope, local_engine, on_kubernetes, scope_of

# Paths the environment itself mounts; a declared volume may go below them, not onto them.
RESERVED_MOUNTS = (
    contract.WORKSPACE_MOUNT,
    "/config",
    "/checkpoints",
    contract.SECRETS_DIR,
)
# Host paths no environment may mount, whatever bindRoots says: the engine's socket and
# state are root on the host.
FORBIDDEN_BIND_SOURCES = (
    "/var/run/docker.sock",
    "/run/docker.sock",
    "/var/lib/docker",
    "/run/containerd",
    "/var/run/containerd",
)

DEFAULT_MANIFEST_DIR = ".companion/cloud/environments"


def manifest_root(cwd: str, manifest_dir: str) -> str:
    """The topmost directory that holds only dockyard's manifests and host files: the first
    component of a relative ``manifestDir`` under ``cwd`` (``<cwd>/.companion``), or an
    absolute ``manifestDir`` itself. No environment may write below it."""
    if os.path.isabs(manifest_dir):
        return os.path.normpath(manifest_dir)
    first = os.path.normpath(manifest_dir).split(os.sep)[0]
    return os.path.join(cwd, first)


# --- Bind sources ---------------------------------------------------------------------------


def bind_problem(source: str, scope: Scope) -> str | None:
    """Why a (normalised) host path may not be bound, or None."""
    if any(v.is_under(source, f) or v.is_under(f, source) for f in FORBIDDEN_BIND_SOURCES):
        return (
            "host paths that neither are nor contain the Docker engine's socket or state: "
            + ", ".join(FORBIDDEN_BIND_SOURCES)
        )
    if local_engine(scope):
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
    root = manifest_root(scope.get("cwd"), scope.get("manifest_dir") or DEFAULT_MANIFEST_DIR)
    if (v.is_under(root, source) and os.path.dirname(root) != source) or v.is_under(source, root):
        # The program mounts the manifest root read-only over its place in the bind; that
        # holds only when the root sits directly in the bound directory: anything between
        # them the agent could rename, and then write manifests where host tools look.
        return (
            f"a host path outside dockyard's manifest directory {root!r} that holds it, if at "
            f"all, directly below its top: bind {os.path.dirname(root)!r} itself or a path "
            "beside it (from a deeper bind the agent could move it aside and write manifests)"
        )
    roots = [scope.get("cwd"), *(scope.get("bind_roots") or [])]
    if not any(v.is_under(source, root) for root in roots):
        return "a host path under the project directory or a bindRoots entry: " + ", ".join(
            repr(root) for root in roots
        )
    return None


# --- Volumes --------------------------------------------------------------------------------


class Volume(Model):
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


def _volume_in_scope(value: Any, info: ValidationInfo) -> Volume:
    """One declared volume; a bind source must also be one the stack allows."""
    volume = parse_volume(value)
    scope = scope_of(info)
    if volume.is_bind and on_kubernetes(scope):
        raise v.refuse(
            "a named volume (a PersistentVolumeClaim): backend kubernetes has no host paths"
        )
    if volume.is_bind and scope is not None and (why := bind_problem(volume.source, scope)):
        raise v.refuse(why)
    return volume


Volumes = Annotated[
    list[Annotated[Volume, BeforeValidator(_volume_in_scope)]],
    AfterValidator(_unique_targets),
    v.bounded_list(64),
]
