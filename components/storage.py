"""Size bounds for every writable path of an environment (issue 25 item 4, R-SEC-1).

The engine's overlay2 on ext4 cannot cap a container layer (``--storage-opt size`` needs
XFS with project quotas), and the local volume driver mounts with mount(2), so ``o=loop``
is refused ("data: loop: invalid argument", measured on Docker 20.10). What bounds what:

- ``/workspace``, ``/config``, ``/checkpoints`` and ``$HOME`` (``/home/agent``): each a
  plain named volume of the local driver on whose directory a helper mounts (on the
  engine's host, through shared propagation) an ext4 filesystem that lives in a sparse
  image file on the engine's host (``<disks dir>/<environment>/<role>.img``), attached to
  a loop device. No mount options on the volume: engine 20.10 before 20.10.26 loses the
  local driver's mount count of such a volume across a live-restore engine restart, and
  then refuses its removal. The helper finds the device through a stable path
  (``/run/dockyard/disks/<environment>/<role>.dev``, a symlink to the loop device),
  because the loop device's number is only known once attached and changes after a
  reboot; /run empties at a reboot, so a stale link cannot name a device that now holds
  another environment's image. A write past the size gets ENOSPC inside; the host spends at most the
  size. ``$HOME`` starts empty (lost+found is removed), so the engine seeds it from the
  image on first use like any new named volume.
- ``/tmp``, ``/var/tmp``, ``/run/lock`` (the image's world-writable directories): tmpfs with ``size=``; their pages count against the
  container's memory limit too.
- Every file anywhere: the ``fsize`` rlimit (RLIMIT_FSIZE) is the largest bound, so no
  file can be longer than any filesystem it could live on: ``truncate -s 8T`` gets EFBIG.
  It also keeps sparse files, which ext4 allows beyond its size, from growing what a
  backup reads.

The images are made, attached and mounted in the disks keeper, one helper container per
engine that runs each environment's script by ``docker exec``
(:mod:`dockyard.storage_scripts`: its scripts and commands, and why it runs only from the
operator's ``helperImage``). One ``local.Command`` per environment and one exec each way
(issue 29: a helper container each way made teardown 3x a bare container's; two each
way 5-6x): ``create`` makes and attaches the images (an existing image is
re-attached, never re-made: its data stays) and mounts them on the volumes' directories;
``delete``, between the container and the volumes, unmounts, detaches and removes the
images, and only once no container uses any of the environment's volumes (else it fails,
saying so, and touches nothing: a destroy re-runs it; a replacement of the command, whose
old ``delete`` runs while the environment lives, can never remove its data). ``python -m
dockyard.storage attach`` (:mod:`dockyard.storage_host`) re-attaches every image after a
host reboot (loop devices do not survive one), before the engine starts the environments.

Stacks made before this had two commands (``<env>-disks`` and ``<env>-disk-mounts``):
their next ``up`` updates ``-disk-mounts`` to this one (its create finds the images
attached and mounted and leaves them) and deletes ``-disks``, whose stored delete waits
up to 30 s for the environment's volumes to go, finds them there and keeps the images.
"""

from __future__ import annotations

import hashlib
import re
import shlex
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pulumi
import pulumi_command as command

from .config import ResolvedLimits
from .storage_host import DEFAULT_HELPER_IMAGE as DEFAULT_HELPER_IMAGE
from .storage_host import attach_all as attach_all
from .storage_host import main
from .storage_host import prune as prune
from .storage_scripts import (
    CREATE_SCRIPT,
    DELETE_SCRIPT,
    DISK_ROLES,
    MOUNT_SCRIPT,
    SECRETS_ROLE,
    UNMOUNT_SCRIPT,
    disk_dir,
    link_dir,
)
from .storage_scripts import DISKS_DIR as DISKS_DIR
from .storage_scripts import HELPER_CAPABILITIES as HELPER_CAPABILITIES
from .storage_scripts import LINKS_DIR as LINKS_DIR
from .storage_scripts import Bind as Bind
from .storage_scripts import helper_command as helper_command
from .storage_scripts import helper_ref as helper_ref
from .storage_scripts import keeper_command as keeper_command
from .storage_scripts import missing_helper as missing_helper

# Imported ``as`` themselves: re-exported, so ``dockyard.storage`` stays the one name its
# callers use (the sessions' snapshots, the tests, ``python -m dockyard.storage``).

AGENT_UID = 1000
DISK_PATHS = (*DISK_ROLES, "tmp", "secrets")
"""Every bounded path, as named in ``limits.disk`` (a :class:`DiskBounds` field is
``<path>_mb``)."""
HOME = "/home/agent"
SECRETS_DIR = "/run/secrets"
TMPFS_PATHS = ("/tmp", "/var/tmp", "/run/lock")  # noqa: S108 - paths inside the environment
"""The image's world-writable directories (Debian's): each a tmpfs of ``tmp_mb``."""
MIN_DISK_MB = 16
"""Below this mkfs.ext4 leaves too little room for a journal and a few files."""
MAX_DISK_MB = 16 * 1024 * 1024
"""16 TiB: ext4's largest file with 4 KiB blocks; no bound beyond it means anything."""
MIN_TMP_MB = 1


@dataclass(frozen=True)
class DiskBounds:
    """Sizes in MiB of an environment's writable paths. ``tmp_mb`` is each tmpfs
    (/tmp, /var/tmp); the others are the ext4 filesystems of the named volumes."""

    workspace_mb: int = 20 * 1024
    config_mb: int = 512
    checkpoints_mb: int = 4 * 1024
    home_mb: int = 4 * 1024
    tmp_mb: int = 1024
    secrets_mb: int = MIN_DISK_MB

    def __post_init__(self) -> None:
        problems = [
            f"{key}: {value!r} is not allowed (allowed: a whole number of MiB from {low} to {high})"
            for key, low, high in (
                *((f"{role}_mb", MIN_DISK_MB, MAX_DISK_MB) for role in (*DISK_ROLES, "secrets")),
                ("tmp_mb", MIN_TMP_MB, MAX_DISK_MB),
            )
            for value in [getattr(self, key)]
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high
        ]
        if problems:
            raise ValueError("disk bounds: " + "; ".join(problems))

    def size_mb(self, role: str) -> int:
        return int(getattr(self, f"{role.split('-')[0]}_mb"))

    @property
    def largest_file_bytes(self) -> int:
        """The ``fsize`` rlimit: the largest filesystem a file could live on."""
        return max(self.size_mb(role) for role in (*DISK_ROLES, "tmp")) * 1024 * 1024


def bounds_of(limits: ResolvedLimits) -> DiskBounds:
    """An environment's bounds from its resolved ``limits.disk`` (profile < stack <
    environment, dockyard.config)."""
    return DiskBounds(**{f"{path}_mb": getattr(limits.disk, path) for path in DISK_PATHS})


def volume_options(environment_id: str, role: str) -> dict[str, str] | None:
    """``driver_opts`` of a bounded volume: none. A volume with mount options is counted
    by the local driver, and engine 20.10 before 20.10.26 loses that count for containers
    live-restored across an engine restart: once they stop, the volume is refused removal
    ("volume has active mounts") until the engine restarts again. A plain volume is not
    counted; the helper mounts the ext4 filesystem on its directory
    (:data:`MOUNT_SCRIPT`)."""
    del environment_id, role
    return None


def tmpfs_mounts(bounds: DiskBounds) -> dict[str, str]:
    """The container's ``tmpfs`` input: each path capped at ``tmp_mb``."""
    options = f"size={bounds.tmp_mb}m,mode=1777,nodev,nosuid"
    return dict.fromkeys(TMPFS_PATHS, options)


SETUP_SCRIPT = (
    "set -euf\n"
    "dir=$1; links=$2; shift 2\n"
    'specs=; n=0; for a in "$@"; do [ $((n % 2)) -eq 1 ] || specs="$specs $a"; n=$((n + 1)); done\n'
    f'/bin/sh -c {shlex.quote(CREATE_SCRIPT)} create "$dir" "$links" $specs\n'
    f'/bin/sh -c {shlex.quote(MOUNT_SCRIPT)} mount "$links" "$@"\n'
)
"""$1 the environment's image directory, $2 its link directory, then per role
``role:MiB`` and its volume's directory: make and attach the images
(:data:`CREATE_SCRIPT`), then mount each on its directory (:data:`MOUNT_SCRIPT`). Roles
are fixed words (:func:`secrets_role`)."""
TEARDOWN_SCRIPT = (
    "set -eu\n"
    "dir=$1; links=$2; shift 2\n"
    f'/bin/sh -c {shlex.quote(UNMOUNT_SCRIPT)} unmount "$@"\n'
    f'/bin/sh -c {shlex.quote(DELETE_SCRIPT)} delete "$dir" "$links"\n'
)
"""$1 the image directory, $2 the link directory, then per role the role and its
volume's directory: unmount each (a volume that is gone: nothing), then detach the images
and remove both directories (:data:`DELETE_SCRIPT`). Each step finds what an earlier,
interrupted run left and finishes it: a failed run is run again."""


def unused_guard(environment_id: str, volume_names: Sequence[str]) -> str:
    """Shell text that stops (exit 1, naming them) while any container, running or not,
    uses one of ``volume_names``: unmounting under it would send its writes to the
    engine's disk, and removing the images would lose its data. At destroy the
    environment's container has gone first."""
    filters = " ".join(f"--filter volume={shlex.quote(v)}" for v in volume_names)
    refusal = shlex.quote(
        f"dockyard: the disks of {environment_id} are kept: containers still use its "
        "volumes (remove them, then run the destroy again):"
    )
    return (
        f"users=$(docker ps -aq {filters}) || exit 1; "
        f'if [ -n "$users" ]; then echo {refusal} $users >&2; exit 1; fi; '
    )


def disks_command(
    name: str,
    environment_id: str,
    bounds: DiskBounds,
    roles: Sequence[str],
    volume_names: Sequence[pulumi.Input[str]],
    helper_image: pulumi.Input[str],
    docker_host: str | None,
    opts: pulumi.ResourceOptions,
) -> command.local.Command:
    """The environment's one ``local.Command`` for its bounded disks: ``create`` makes,
    attaches and mounts the images of ``roles`` on their volumes' directories
    (:data:`SETUP_SCRIPT`), ``delete`` unmounts, detaches and removes them
    (:data:`TEARDOWN_SCRIPT`) once no container uses the volumes (:func:`unused_guard`).
    One exec in the disks keeper each way (:func:`~dockyard.storage_scripts.keeper_command`).
    ``helper_image``: the operator's ``helperImage`` (sh, truncate, mkfs.ext4, debugfs,
    losetup, mount in it), never the environment's own."""
    places = (disk_dir(environment_id), link_dir(environment_id))
    specs = [f"{role}:{bounds.size_mb(role)}" for role in roles]

    def text(values: list[str]) -> tuple[str, str]:
        image, names = values[0], values[1:]
        # The script gets each volume's directory after its role (size too, to make it).
        setup = keeper_command(
            image, SETUP_SCRIPT, *places, volumes=dict(zip(specs, names, strict=True))
        )
        teardown = keeper_command(
            image, TEARDOWN_SCRIPT, *places, volumes=dict(zip(roles, names, strict=True)),
            missing_ok=True,
        )  # fmt: skip
        return setup, unused_guard(environment_id, names) + teardown

    scripts = pulumi.Output.all(helper_image, *volume_names).apply(text)
    return command.local.Command(
        name,
        create=scripts.apply(lambda t: t[0]),
        delete=scripts.apply(lambda t: t[1]),
        # The volume names also as values of their own: what it uses, for any reader.
        environment={
            **({"DOCKER_HOST": docker_host} if docker_host else {}),
            **{f"DOCKYARD_VOLUME_{i}": v for i, v in enumerate(volume_names)},
        },
        # No triggers: a replacement (create, then the old delete) must never happen to
        # images that hold data; and should one happen, the old delete finds the
        # container using the volumes and keeps everything (unused_guard). A new size or
        # image re-runs create, which keeps every existing image as it is (growing one is
        # docs/stacks.md's procedure) and every mounted one mounted.
        opts=opts,
    )


@dataclass(frozen=True)
class Bounded:
    """What an environment declares from its bounds (all empty when it has none)."""

    environment_id: str
    bounds: DiskBounds | None
    roles: tuple[str, ...] = ()
    helper_image: pulumi.Input[str] = ""
    docker_host: str | None = None

    def mount(
        self, name: str, volumes: Mapping[str, pulumi.Input[str]], opts: pulumi.ResourceOptions
    ) -> tuple[pulumi.Resource, ...]:
        """Make, attach and mount each bounded filesystem on its (plain) volume's
        directory on the engine (``create``); unmount, detach and remove them before the
        volumes go (``delete``): :func:`disks_command`. ``volumes``: role → volume name;
        ``opts`` must depend on the volumes. What the container and anything writing
        the volumes depend on."""
        if self.bounds is None:
            return ()
        missing = [r for r in self.roles if r not in volumes]
        if missing:  # a bound no volume carries would be made and never mounted
            raise ValueError(f"bounded roles {missing} have no volume (given: {sorted(volumes)})")
        return (
            disks_command(
                name, self.environment_id, self.bounds, self.roles,
                [volumes[r] for r in self.roles], self.helper_image, self.docker_host, opts,
            ),
        )  # fmt: skip

    @property
    def extra_roles(self) -> tuple[str, ...]:
        """Volumes beyond workspace/config/checkpoints: ``home`` and ``secrets-<digest>``
        when bounded."""
        return tuple(r for r in self.roles if r == "home" or is_secrets_role(r))

    def volume_options(self, role: str) -> dict[str, str] | None:
        return volume_options(self.environment_id, role) if role in self.roles else None

    @property
    def tmpfs(self) -> dict[str, str] | None:
        return tmpfs_mounts(self.bounds) if self.bounds is not None else None

    def ulimits(self, kind: type) -> list:
        """The fsize rlimit (``kind``: pulumi_docker.ContainerUlimitArgs)."""
        if self.bounds is None:
            return []
        largest = self.bounds.largest_file_bytes
        return [kind(name="fsize", soft=largest, hard=largest)]


def secrets_role(names: Sequence[str]) -> str:
    """``secrets-<digest of the sorted names>``: names only, never a value."""
    digest = hashlib.sha256("\n".join(sorted(set(names))).encode()).hexdigest()
    return f"{SECRETS_ROLE}-{digest[:8]}"


def is_secrets_role(role: str) -> bool:
    return re.fullmatch(rf"{SECRETS_ROLE}-[0-9a-f]{{8}}", role) is not None


def mount_path(role: str) -> str:
    if is_secrets_role(role):
        return SECRETS_DIR
    return HOME if role == "home" else f"/{role}"


def declare(
    environment_id: str,
    bounds: DiskBounds | None,
    helper_image: pulumi.Input[str],
    docker_host: str | None,
    *,
    workspace_bound_elsewhere: bool,
    secret_names: Sequence[str] = (),
) -> Bounded:
    """The environment's bounded filesystems (none when ``bounds`` is None). A workspace
    bound to a host directory (``workspaceHostPath``) stays that directory: its own
    filesystem is its bound."""
    if bounds is None:
        return Bounded(environment_id, None)
    roles = tuple(r for r in DISK_ROLES if not (r == "workspace" and workspace_bound_elsewhere))
    roles += (secrets_role(secret_names),)
    return Bounded(environment_id, bounds, roles, helper_image, docker_host)


if __name__ == "__main__":
    sys.exit(main())
