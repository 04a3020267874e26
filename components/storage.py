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

The image files and loop devices are made where the engine runs, by a short-lived helper
container on that engine (``docker run`` through ``DOCKER_HOST``, so an ``ssh://``
engine works the same), with only the capabilities losetup and mkfs need and device
access limited to loop devices. The helper runs as root with those rights, so it runs
only from the operator's image (``helperImage`` in the host settings or stack, default
:data:`HELPER_IMAGE`), resolved to its image ID on the engine at each run and refused,
naming the key, when the engine does not hold it: never an environment's image (a
tenant's choice) or a snapshot (the agent's own layer), whose ``/bin/sh`` would run with
every disk image in reach. It binds only the directories of the environment it works on
(paths on the engine's host); removing a directory binds the parent (the entry is the
parent's), and the host-wide ``attach``/``prune`` bind the roots. One ``local.Command`` per environment: ``create`` makes
and attaches the images (an existing image is re-attached, never re-made: its data
stays), ``delete`` detaches them and removes the directory. :data:`ATTACH_ALL_SCRIPT`
re-attaches every image after a host reboot (loop devices do not survive one), before
the engine starts the environments.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pulumi
import pulumi_command as command

from .config import HELPER_IMAGE, ResolvedLimits
from .config.values import IMAGE_ALLOWED, image_reference
from .contract import MANAGED_SELECTOR
from .errors import DockyardError, Failed

AGENT_UID = 1000
DISKS_DIR = "/var/lib/dockyard/disks"
LINKS_DIR = "/run/dockyard/disks"
"""Where the ``<role>.dev`` links live: /run is emptied by a reboot, so a link can never
name a loop device that, after a reboot, holds another environment's image (the mount
fails until :func:`attach_all` re-attaches and re-links)."""
"""Where the image files live on the engine's host (one directory per environment)."""
DISK_ROLES = ("workspace", "config", "checkpoints", "home")
"""Volumes backed by a bounded filesystem (``home`` is mounted at :data:`HOME`)."""
DISK_PATHS = (*DISK_ROLES, "tmp", "secrets")
"""Every bounded path, as named in ``limits.disk`` (a :class:`DiskBounds` field is
``<path>_mb``)."""
HOME = "/home/agent"
SECRETS_DIR = "/run/secrets"
SECRETS_ROLE = "secrets"
"""/run/secrets: a volume per set of secret names (``secrets-<digest>``), so a secret
dropped from the stack never lingers in a volume that outlives the container."""
TMPFS_PATHS = ("/tmp", "/var/tmp", "/run/lock")  # noqa: S108 - paths inside the environment
"""The image's world-writable directories (Debian's): each a tmpfs of ``tmp_mb``."""
MIN_DISK_MB = 16
"""Below this mkfs.ext4 leaves too little room for a journal and a few files."""
MAX_DISK_MB = 16 * 1024 * 1024
"""16 TiB: ext4's largest file with 4 KiB blocks; no bound beyond it means anything."""
MIN_TMP_MB = 1

# The helper's rights: losetup needs CAP_SYS_ADMIN and the loop devices (block major 7,
# loop-control 10:237); mkfs writes the image files as root. Nothing else.
HELPER_CAPABILITIES = ("SYS_ADMIN", "DAC_OVERRIDE", "CHOWN", "FOWNER")
HELPER_DEVICE_RULES = ("b 7:* rwm", "c 10:237 rwm")

# $1 = the environment's image directory, $2 its link directory, then role:MiB pairs.
# lazy_journal_init: the file is new and sparse, its journal blocks read as zeros already
# (writing them would cost the host 128 MiB per 20 GiB image). An image is made once (in a
# temporary name, so a failed mkfs leaves nothing that looks finished) and re-attached
# whenever it has no loop device; the symlink always names the device it has now.
CREATE_SCRIPT = r"""
set -eu
dir=$1; links=$2; shift 2
umask 077
mkdir -p "$dir" "$links"
for spec in "$@"; do
  role=${spec%%:*}; mib=${spec#*:}
  img="$dir/$role.img"
  if [ ! -f "$img" ]; then
    rm -f "$img.new"
    truncate -s "${mib}M" "$img.new"
    case $role in secrets-*) owner=0:0 ;; *) owner=1000:1000 ;; esac
    mkfs.ext4 -q -F -m 0 -E root_owner=$owner,nodiscard,lazy_itable_init=1,lazy_journal_init=1 "$img.new"
    debugfs -w -R 'rmdir lost+found' "$img.new" >/dev/null 2>&1
    mv "$img.new" "$img"
  fi
  dev=$(losetup -j "$img" | sed -n '1s/:.*//p')
  [ -n "$dev" ] || dev=$(losetup --find --show "$img")
  ln -sfn "$dev" "$links/$role.dev"
done
"""
DELETE_SCRIPT = r"""
set -eu
dir=$1; links=$2
rm -rf -- "$links"
[ -d "$dir" ] || exit 0
for img in "$dir"/*.img "$dir"/*.img.new; do
  [ -e "$img" ] || continue
  for dev in $(losetup -j "$img" | sed 's/:.*//'); do losetup -d "$dev"; done
done
rm -rf -- "$dir"
"""
ATTACH_ALL_SCRIPT = r"""
set -eu
root=$1; links=$2
umask 077
for img in "$root"/*/*.img; do
  [ -f "$img" ] || continue
  env=${img%/*}; env=${env##*/}; role=${img##*/}; role=${role%.img}
  dev=$(losetup -j "$img" | sed -n '1s/:.*//p')
  [ -n "$dev" ] || dev=$(losetup --find --show "$img")
  mkdir -p "$links/$env"
  ln -sfn "$dev" "$links/$env/$role.dev"
done
"""

# $1 = the environment's link directory, then the roles: each plain volume's directory is
# bound at /vol/<role> (rshared), so the ext4 mounted on its _data is the host's mount too.
# The empty _data underneath is made immutable first: should the filesystem not be
# mounted (after a reboot, before `attach`), nothing can be written there, not even by
# root, instead of filling the engine's disk. Already mounted: left as it is.
MOUNT_SCRIPT = r"""
set -eu
links=$1; shift
for role in "$@"; do
  data="/vol/$role/_data"
  if mountpoint -q "$data"; then continue; fi
  dev=$(readlink -f "$links/$role.dev")
  [ -b "$dev" ] || { echo "dockyard: $links/$role.dev names no loop device" >&2; exit 1; }
  [ -z "$(ls -A "$data")" ] || { echo "dockyard: $data is not empty" >&2; exit 1; }
  chattr +i "$data"
  mount -t ext4 -o nodev,nosuid "$dev" "$data"
  echo "mounted $role"
done
"""
UNMOUNT_SCRIPT = r"""
set -eu
for role in "$@"; do
  data="/vol/$role/_data"
  [ -d "$data" ] || continue
  while mountpoint -q "$data"; do umount -l "$data"; done
  chattr -i "$data"
done
"""

# $1 images root, $2 links root, $3 a name prefix, $4 minutes, then the environments to
# keep (those with a volume on the engine). A directory younger than $4 minutes may be a
# create in flight: kept too.
PRUNE_SCRIPT = r"""
set -eu
root=$1; links=$2; prefix=$3; minutes=$4; shift 4
for dir in "$root/$prefix"*; do
  [ -d "$dir" ] || continue
  env=${dir##*/}
  for keep in "$@"; do [ "$keep" != "$env" ] || continue 2; done
  [ -n "$(find "$dir" -maxdepth 0 -mmin "+$minutes")" ] || continue
  rm -rf -- "$links/$env"
  for img in "$dir"/*.img "$dir"/*.img.new; do
    [ -e "$img" ] || continue
    for dev in $(losetup -j "$img" | sed 's/:.*//'); do losetup -d "$dev"; done
  done
  rm -rf -- "$dir"
  echo "$env"
done
"""


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


def disk_dir(environment_id: str) -> str:
    return f"{DISKS_DIR}/{environment_id}"


def link_dir(environment_id: str) -> str:
    return f"{LINKS_DIR}/{environment_id}"


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


HELPER_KEY = "helperImage"
Bind = tuple[str, str]
"""A directory on the engine's host and ``rw`` or ``ro``: bound at the same path inside."""


def helper_ref(image: str) -> str:
    """``image`` if it is an image reference (the ``helperImage`` rule); else Failed
    naming the key."""
    try:
        return image_reference(image)
    except Exception:  # the rule's refusal (a pydantic error)
        raise Failed(f"{HELPER_KEY}: {image!r} is not allowed (allowed: {IMAGE_ALLOWED})") from None


def missing_helper(image: str, engine: str = "this engine") -> str:
    """What a helper run says when the engine does not hold the helper image."""
    return (
        f"{HELPER_KEY}: {image!r} is not an image on {engine} (allowed: an image the engine "
        f"holds with sh, coreutils, e2fsprogs and mount, e.g. the default {HELPER_IMAGE}: "
        "`make base-image`, or the docker_host role's base image); helpers never run from "
        "an environment's or a snapshot's image"
    )


def helper_command(
    image: str,
    script: str,
    *args: str,
    binds: Sequence[Bind] = (),
    volumes: Mapping[str, str] | None = None,
    missing_ok: bool = False,
) -> str:
    """Shell text running ``script`` in a helper container on the engine, from the
    operator's helper ``image`` (``helperImage``), resolved to its image ID on that engine
    first (missing: ``ERROR: helperImage: ...``, exit 1). ``binds``: the only host
    directories it sees (besides /dev, for the loop devices). Everything
    interpolated is quoted; the engine is the one ``DOCKER_HOST`` names. ``volumes``
    (role → volume name): each volume's directory on the engine is bound at
    ``/vol/<role>`` with shared propagation, for :data:`MOUNT_SCRIPT` and
    :data:`UNMOUNT_SCRIPT`; that helper may also mount (no AppArmor profile: Docker's
    denies mount(2)) and set the immutable flag. ``missing_ok``: a volume that is gone is
    left out (nothing of it to unmount) instead of failing the command."""
    image = helper_ref(image)
    volumes = dict(volumes or {})
    placeholder = {role: f"@{index}@" for index, role in enumerate(volumes)}
    extra = ["--cap-add", "LINUX_IMMUTABLE", "--security-opt", "apparmor=unconfined"]
    argv = [
        "docker", "run", "--rm", "--network", "none", "--user", "0:0",
        "--cap-drop", "ALL",
        *(a for cap in HELPER_CAPABILITIES for a in ("--cap-add", cap)),
        *(a for rule in HELPER_DEVICE_RULES for a in ("--device-cgroup-rule", rule)),
        "--security-opt", "no-new-privileges",
        "--memory", "256m", "--pids-limit", "64",
        "-v", "/dev:/dev",
        *(a for path, mode in binds for a in ("-v", f"{path}:{path}:{_mode(mode)}")),
        *(extra if volumes else []),
        *(a for role in volumes for a in ("-v", placeholder[role])),
        "--entrypoint", "/bin/sh", IMAGE_MARK, "-c", script, "disks", *args,
    ]  # fmt: skip
    resolve = (
        f"h=$(docker image inspect --format '{{{{.Id}}}}' {shlex.quote(image)} 2>/dev/null) "
        f"|| {{ echo {shlex.quote('ERROR: ' + missing_helper(image))} >&2; exit 1; }}; "
    )
    text = " ".join(shlex.quote(a) for a in argv).replace(IMAGE_MARK, '"$h"')
    if not volumes:
        return resolve + text
    # A volume's directory is known on the engine only: read it there first.
    lookups = "".join(
        f"v{index}=$(docker volume inspect --format '{{{{.Mountpoint}}}}' "
        f"{shlex.quote(volumes[role])}{' 2>/dev/null) || v' + index + '=; ' if missing_ok else ') && '}"
        for role, index in ((r, placeholder[r].strip("@")) for r in volumes)
    )
    for role, mark in placeholder.items():
        index = mark.strip("@")
        bind = f'"${{v{index}%/_data}}":{shlex.quote(f"/vol/{role}")}:rshared'
        if missing_ok:  # both words, or neither
            text = text.replace(f"-v {mark}", f"${{v{index}:+-v}} ${{v{index}:+{bind}}}")
        else:
            text = text.replace(mark, bind)
    return resolve + lookups + text


IMAGE_MARK = "@helper-image@"


def _mode(mode: str) -> str:
    if mode not in ("rw", "ro"):
        raise ValueError(f"bind mode {mode!r} (allowed: rw, ro)")
    return mode


def images_command(
    name: str,
    environment_id: str,
    bounds: DiskBounds,
    helper_image: pulumi.Input[str],
    roles: Sequence[str],
    docker_host: str | None,
    opts: pulumi.ResourceOptions,
) -> command.local.Command:
    """The ``local.Command`` that makes and attaches the images of ``roles`` on the
    engine (``create``) and detaches and removes them (``delete``). ``helper_image``: the
    operator's ``helperImage`` (sh, truncate, mkfs.ext4, debugfs and losetup in it), never
    the environment's own. ``create`` binds the environment's two directories only;
    ``delete`` their parents (removing a directory is a write to its parent)."""
    places = (disk_dir(environment_id), link_dir(environment_id))
    own = [(path, "rw") for path in places]
    roots = [(DISKS_DIR, "rw"), (LINKS_DIR, "rw")]
    specs = [f"{role}:{bounds.size_mb(role)}" for role in roles]
    image = pulumi.Output.from_input(helper_image)
    return command.local.Command(
        name,
        create=image.apply(lambda i: helper_command(i, CREATE_SCRIPT, *places, *specs, binds=own)),
        delete=image.apply(
            lambda i: guarded_delete(
                [f"{environment_id}-{role}" for role in roles],
                helper_command(i, DELETE_SCRIPT, *places, binds=roots),
            )
        ),
        environment={"DOCKER_HOST": docker_host} if docker_host else None,
        # No triggers: a replacement (create, then the old delete) must never happen to
        # images that hold data. A new size or image re-runs create, which keeps every
        # existing image as it is (growing one is docs/stacks.md's procedure).
        opts=opts,
    )


def mount_command(
    name: str,
    links: str,
    roles: Sequence[str],
    volume_names: Sequence[pulumi.Input[str]],
    helper_image: pulumi.Input[str],
    docker_host: str | None,
    opts: pulumi.ResourceOptions,
) -> command.local.Command:
    """The ``local.Command`` mounting the images of ``roles`` on their volumes'
    directories (:data:`MOUNT_SCRIPT`) and unmounting them (:data:`UNMOUNT_SCRIPT`)."""

    def text(values: list[str]) -> tuple[str, str]:
        image, names = values[0], dict(zip(roles, values[1:], strict=True))
        return (
            helper_command(
                image, MOUNT_SCRIPT, links, *roles, binds=[(links, "ro")], volumes=names
            ),
            helper_command(image, UNMOUNT_SCRIPT, *roles, volumes=names, missing_ok=True),
        )

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
        opts=opts,
    )


VOLUMES_GONE_WAIT_S = 30


def guarded_delete(volumes: Sequence[str], delete: str) -> str:
    """``delete`` once none of ``volumes`` exists on the engine (at destroy they go first;
    waits up to :data:`VOLUMES_GONE_WAIT_S`). Still there: the images are kept and the
    command says so (``prune`` removes them once the volumes are gone)."""
    names = " ".join(shlex.quote(v) for v in volumes)
    return (
        f"i=0; while :; do left=; for v in {names}; do "
        'docker volume inspect "$v" >/dev/null 2>&1 && left="$left $v"; done; '
        '[ -z "$left" ] && break; i=$((i+1)); '
        f"if [ $i -ge {VOLUMES_GONE_WAIT_S} ]; then "
        'echo "dockyard: volumes$left still exist: their disk images are kept '
        '(python -m dockyard.storage prune removes them once the volumes are gone)" >&2; '
        f"exit 0; fi; sleep 1; done; {delete}"
    )


@dataclass(frozen=True)
class Bounded:
    """What an environment declares from its bounds (all empty when it has none)."""

    environment_id: str
    bounds: DiskBounds | None
    roles: tuple[str, ...] = ()
    depends_on: tuple[pulumi.Resource, ...] = ()
    helper_image: pulumi.Input[str] = ""
    docker_host: str | None = None

    def mount(
        self, name: str, volumes: Mapping[str, pulumi.Input[str]], opts: pulumi.ResourceOptions
    ) -> tuple[pulumi.Resource, ...]:
        """Mount each bounded filesystem on its (plain) volume's directory on the engine
        (``create``), unmount it before the volumes go (``delete``). ``volumes``: role →
        volume name; ``opts`` must depend on the volumes. What the container and anything
        writing the volumes depend on."""
        roles = [r for r in self.roles if r in volumes]
        if not roles:
            return ()
        links = link_dir(self.environment_id)
        return (
            mount_command(
                name, links, roles, [volumes[r] for r in roles], self.helper_image,
                self.docker_host, opts,
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
    name: str,
    environment_id: str,
    bounds: DiskBounds | None,
    helper_image: pulumi.Input[str],
    docker_host: str | None,
    *,
    workspace_bound_elsewhere: bool,
    opts: pulumi.ResourceOptions,
    secret_names: Sequence[str] = (),
) -> Bounded:
    """The environment's bounded filesystems (none when ``bounds`` is None). A workspace
    bound to a host directory (``workspaceHostPath``) stays that directory: its own
    filesystem is its bound."""
    if bounds is None:
        return Bounded(environment_id, None)
    roles = tuple(r for r in DISK_ROLES if not (r == "workspace" and workspace_bound_elsewhere))
    roles += (secrets_role(secret_names),)
    images = images_command(name, environment_id, bounds, helper_image, roles, docker_host, opts)
    return Bounded(environment_id, bounds, roles, (images,), helper_image, docker_host)


# --- After a reboot ------------------------------------------------------------------------

MANAGED_FILTER = f"label={MANAGED_SELECTOR}"
DEFAULT_HELPER_IMAGE = HELPER_IMAGE
"""For ``attach`` and ``prune`` (run at boot or by hand, without the host settings): the
``helperImage`` default; a host that sets another passes it as their IMAGE argument."""
MOUNT_FAILED = "failed to mount local volume"


def _docker(*args: str, timeout: float = 120) -> str:
    result = subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if result.returncode != 0:
        raise Failed(f"docker {args[0]}: {result.stderr.strip()[-500:]}")
    return result.stdout


def attach_all(image: str | None = None) -> list[str]:
    """Re-attach every environment's images on the engine ``DOCKER_HOST`` names (loop
    devices and mounts do not survive a reboot), mount them on their volumes again, then
    restart the environments that ran, or could not start, without them. Returns the
    names (re)started. ``image``: the helper's image (the operator's ``helperImage``,
    default :data:`DEFAULT_HELPER_IMAGE`; never an environment's image: a tenant's)."""
    containers = _docker("ps", "-a", "-q", "--filter", MANAGED_FILTER).split()
    if not containers:
        return []
    states = json.loads(_docker("inspect", *containers))
    helper = image or DEFAULT_HELPER_IMAGE
    roots = [(DISKS_DIR, "rw"), (LINKS_DIR, "rw")]
    subprocess.run(
        ["sh", "-c", helper_command(helper, ATTACH_ALL_SCRIPT, DISKS_DIR, LINKS_DIR, binds=roots)],
        check=True,
        timeout=300,
    )
    names = _docker("volume", "ls", "-q").split()
    suffix = re.compile(rf"-({'|'.join(DISK_ROLES)}|{SECRETS_ROLE}-[0-9a-f]{{8}})$")
    started = []
    for state in states:
        environment = state["Config"]["Labels"].get("dockyard.environment", "")
        candidates = {
            match.group(1): name
            for name in names
            if name.startswith(f"{environment}-")
            and (match := suffix.search(name)) is not None
            and name == f"{environment}-{match.group(1)}"
        }
        # Bounded volumes are the plain ones (a workspaceHostPath volume has options).
        volumes = {
            role: name
            for role, name in candidates.items()
            if not json.loads(_docker("volume", "inspect", name))[0].get("Options")
        }
        if not environment or not volumes:
            continue
        mounted = subprocess.run(
            [
                "sh",
                "-c",
                helper_command(
                    helper,
                    MOUNT_SCRIPT,
                    link_dir(environment),
                    *volumes,
                    binds=[(link_dir(environment), "ro")],
                    volumes=volumes,
                ),
            ],
            check=True,
            capture_output=True,
            text=True,
            timeout=300,
        ).stdout.split()
        running = state["State"]["Running"]
        if "mounted" in mounted and (running or state["State"].get("Error")):
            _docker("restart" if running else "start", state["Id"])
            started.append(state["Name"].lstrip("/"))
        elif not running and MOUNT_FAILED in state["State"].get("Error", ""):
            _docker("start", state["Id"])
            started.append(state["Name"].lstrip("/"))
    return started


def prune(
    image: str = DEFAULT_HELPER_IMAGE, prefix: str = "dockyard-", min_age_minutes: int = 10
) -> list[str]:
    """Detach and remove the images of environments none of whose volumes is left on the
    engine (what a crash or a label sweep between its volumes and its images leaves).
    Returns the environment ids pruned."""
    names = _docker("volume", "ls", "-q").split()
    suffix = re.compile(rf"-(?:{'|'.join(DISK_ROLES)}|{SECRETS_ROLE}-[0-9a-f]{{8}})$")
    keep = sorted({suffix.sub("", n) for n in names if suffix.search(n)})
    script = helper_command(
        image, PRUNE_SCRIPT, DISKS_DIR, LINKS_DIR, prefix, str(min_age_minutes), *keep,
        binds=[(DISKS_DIR, "rw"), (LINKS_DIR, "rw")],
    )  # fmt: skip
    result = subprocess.run(
        ["sh", "-c", script],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    return result.stdout.split()


USAGE = "python -m dockyard.storage attach [IMAGE] | prune [IMAGE]"


def main(argv: Sequence[str] | None = None) -> int:
    """``attach``: run at boot, once the engine answers; ``prune``: after a crash. Both
    on the engine ``DOCKER_HOST`` names (default: the local one)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in ("attach", "prune") or len(args) > 2:
        print(f"ERROR: usage: {USAGE}", file=sys.stderr)
        return 2
    image = args[1] if len(args) == 2 else None
    try:
        if args[0] == "attach":
            started = attach_all(image)
            print(f"dockyard: disk images attached; started {len(started)}: {' '.join(started)}")
        else:
            pruned = prune(image or DEFAULT_HELPER_IMAGE)
            print(f"dockyard: pruned {len(pruned)}: {' '.join(pruned)}")
    except (DockyardError, OSError, ValueError, subprocess.SubprocessError) as exc:
        # OSError: no docker CLI; ValueError: an engine answer that is not JSON.
        print(f"ERROR: {args[0]} failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
