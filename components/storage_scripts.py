"""The bounded disks' helper (issue 25 item 4, R-SEC-1): where the disk images live on
the engine's host, the shell scripts that make, attach, mount, unmount and remove them,
and the ``docker run`` command that runs a script in a helper container
(:func:`helper_command`). What declares them: :mod:`dockyard.storage`; the host-wide
``attach``/``prune`` after a reboot or a crash: :mod:`dockyard.storage_host`.

The image files and loop devices are made where the engine runs, by a short-lived helper
container on that engine (``docker run`` through ``DOCKER_HOST``, so an ``ssh://``
engine works the same), with only the capabilities losetup and mkfs need and device
access limited to loop devices. The helper runs as root with those rights, so it runs
only from the operator's image (``helperImage`` in the host settings or stack, default
:data:`~dockyard.config.HELPER_IMAGE`), resolved to its image ID on the engine at each run
and refused, naming the key, when the engine does not hold it: never an environment's
image (a tenant's choice) or a snapshot (the agent's own layer), whose ``/bin/sh`` would
run with every disk image in reach. It binds only the directories of the environment it
works on (paths on the engine's host); removing a directory binds the parent (the entry
is the parent's), and the host-wide ``attach``/``prune`` bind the roots.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence

from .config import HELPER_IMAGE
from .config.values import IMAGE_ALLOWED, image_reference
from .errors import Failed

DISKS_DIR = "/var/lib/dockyard/disks"
"""Where the image files live on the engine's host (one directory per environment)."""
LINKS_DIR = "/run/dockyard/disks"
"""Where the ``<role>.dev`` links live: /run is emptied by a reboot, so a link can never
name a loop device that, after a reboot, holds another environment's image (the mount
fails until :func:`dockyard.storage_host.attach_all` re-attaches and re-links)."""
DISK_ROLES = ("workspace", "config", "checkpoints", "home")
"""Volumes backed by a bounded filesystem (``home`` is mounted at
:data:`dockyard.storage.HOME`)."""
SECRETS_ROLE = "secrets"
"""/run/secrets: a volume per set of secret names (``secrets-<digest>``), so a secret
dropped from the stack never lingers in a volume that outlives the container."""


def disk_dir(environment_id: str) -> str:
    return f"{DISKS_DIR}/{environment_id}"


def link_dir(environment_id: str) -> str:
    return f"{LINKS_DIR}/{environment_id}"


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
    # A volume's directory is known on the engine only: read them there first, in one
    # call (a docker CLI process per volume cost a create or a destroy five).
    names = " ".join(shlex.quote(volumes[role]) for role in volumes)
    lookups = f"m=$(docker volume inspect --format '{{{{.Name}}}} {{{{.Mountpoint}}}}' {names}" + (
        " 2>/dev/null); " if missing_ok else ") && "
    )
    for role, mark in placeholder.items():
        lookups += (
            f"v{mark.strip('@')}=$(printf '%s\\n' \"$m\" | awk -v n={shlex.quote(volumes[role])} "
            "'$1 == n { sub(/^[^ ]* /, \"\"); print; exit }')" + ("; " if missing_ok else " && ")
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
