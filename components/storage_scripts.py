"""The bounded disks' helper (issue 25 item 4, R-SEC-1): where the disk images live on
the engine's host, the shell scripts that make, attach, mount, unmount and remove them,
and the commands that run a script on the engine: in the disks keeper
(:func:`keeper_command`, an environment's own disks) or in a short-lived helper container
(:func:`helper_command`, the host-wide ``attach``/``prune``). What declares them:
:mod:`dockyard.storage`; ``attach``/``prune`` after a reboot or a crash:
:mod:`dockyard.storage_host`.

The image files and loop devices are made where the engine runs, by a container on that
engine (``docker`` through ``DOCKER_HOST``, so an ``ssh://`` engine works the same), with
only the capabilities losetup, mkfs and mount need and device access limited to loop
devices. It runs as root with those rights, so only from the operator's image
(``helperImage`` in the host settings or stack, default
:data:`~dockyard.config.HELPER_IMAGE`), resolved to its image ID on the engine at each
call and refused, naming the key, when the engine does not hold it: never an
environment's image (a tenant's choice) or a snapshot (the agent's own layer), whose
``/bin/sh`` would run with every disk image in reach. It binds the image and link roots,
/dev, and (the keeper) the engine's volumes directory; nothing an environment can reach
binds it or talks to it (no network). Paths and names reach the scripts as arguments,
quoted, never as script text.
"""

from __future__ import annotations

import hashlib
import shlex
from collections.abc import Mapping, Sequence

from .config import HELPER_IMAGE
from .config.values import IMAGE_ALLOWED, image_reference
from .contract import LABEL_DISKS
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
# whenever it has no loop device; the symlink always names the device it has now. An
# image made just now has none: no `losetup -j` (it reads every loop device). Devices are
# found by the image's device and inode (`-j`), never by the path the kernel shows: that
# is relative to the mount namespace that attached it, gone with the keeper.
CREATE_SCRIPT = r"""
set -eu
dir=$1; links=$2; shift 2
umask 077
mkdir -p "$dir" "$links"
for spec in "$@"; do
  role=${spec%%:*}; mib=${spec#*:}
  img="$dir/$role.img"; existed=1
  if [ ! -f "$img" ]; then
    existed=
    rm -f "$img.new"
    truncate -s "${mib}M" "$img.new"
    case $role in secrets-*) owner=0:0 ;; *) owner=1000:1000 ;; esac
    mkfs.ext4 -q -F -m 0 -E root_owner=$owner,nodiscard,lazy_itable_init=1,lazy_journal_init=1 "$img.new"
    debugfs -w -R 'rmdir lost+found' "$img.new" >/dev/null 2>&1
    mv "$img.new" "$img"
  fi
  dev=
  [ -z "$existed" ] || dev=$(losetup -j "$img" | sed -n '1s/:.*//p')
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

# $1 = the environment's link directory, then role and directory pairs: each directory is
# a plain volume's _data on the engine's host, seen by the disks keeper at the same path
# (the engine's volumes directory is bound there, rshared, so the ext4 mounted on it is
# the host's mount too). The empty directory is made immutable first: should the
# filesystem not be mounted (after a reboot, before `attach`), nothing can be written
# there, not even by root, instead of filling the engine's disk. Already mounted: left.
VOLUME_CHECK = r"""
case $data in
  "${DOCKYARD_VOLUMES:?}"/*/_data) ;;
  *) echo "dockyard: $data is not a volume directory under $DOCKYARD_VOLUMES" >&2; exit 1 ;;
esac
case $data in *"/../"* | *"/./"*) echo "dockyard: $data is not a plain path" >&2; exit 1 ;; esac
"""
MOUNT_SCRIPT = (
    r"""
set -eu
links=$1; shift
while [ $# -ge 2 ]; do
  role=${1%%:*}; data=$2; shift 2
"""
    + VOLUME_CHECK
    + r"""
  if mountpoint -q "$data"; then continue; fi
  dev=$(readlink -f "$links/$role.dev")
  [ -b "$dev" ] || { echo "dockyard: $links/$role.dev names no loop device" >&2; exit 1; }
  [ -z "$(ls -A "$data")" ] || { echo "dockyard: $data is not empty" >&2; exit 1; }
  chattr +i "$data"
  mount -t ext4 -o nodev,nosuid "$dev" "$data"
  echo "mounted $role"
done
"""
)
# Role and directory pairs; an empty directory is a volume that is gone: nothing to do.
UNMOUNT_SCRIPT = (
    r"""
set -eu
while [ $# -ge 2 ]; do
  data=$2; shift 2
  [ -n "$data" ] || continue
"""
    + VOLUME_CHECK
    + r"""
  [ -d "$data" ] || continue
  while mountpoint -q "$data"; do umount -l "$data"; done
  chattr -i "$data"
done
"""
)

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


IMAGE_MARK = "@helper-image@"


def _resolve(image: str) -> str:
    """Shell text setting ``$h`` to the helper image's ID on the engine, or stopping
    with ``ERROR: helperImage: ...`` (exit 1) when the engine does not hold it."""
    return (
        f"h=$(docker image inspect --format '{{{{.Id}}}}' {shlex.quote(image)} 2>/dev/null) "
        f"|| {{ echo {shlex.quote('ERROR: ' + missing_helper(image))} >&2; exit 1; }}; "
    )


def _rights(volumes_root: bool) -> list[str]:
    """``docker run`` options every helper has: root without a network, only the
    capabilities losetup and mkfs need, loop devices only; with ``volumes_root`` also
    mount(2) (no AppArmor profile: Docker's denies it) and the immutable flag."""
    extra = ["--cap-add", "LINUX_IMMUTABLE", "--security-opt", "apparmor=unconfined"]
    return [
        "--network", "none", "--user", "0:0", "--cap-drop", "ALL",
        *(a for cap in HELPER_CAPABILITIES for a in ("--cap-add", cap)),
        *(a for rule in HELPER_DEVICE_RULES for a in ("--device-cgroup-rule", rule)),
        "--security-opt", "no-new-privileges",
        *(extra if volumes_root else []),
        "-v", "/dev:/dev",
    ]  # fmt: skip


def helper_command(image: str, script: str, *args: str, binds: Sequence[Bind] = ()) -> str:
    """Shell text running ``script`` in a short-lived helper container on the engine, from
    the operator's helper ``image`` (``helperImage``), resolved to its image ID on that
    engine first (missing: ``ERROR: helperImage: ...``, exit 1). ``binds``: the only host
    directories it sees (besides /dev, for the loop devices). Everything interpolated is
    quoted; the engine is the one ``DOCKER_HOST`` names. For the host-wide, rare runs
    (``attach`` after a reboot, ``prune``); an environment's own disks go through the
    keeper (:func:`keeper_command`)."""
    image = helper_ref(image)
    argv = [
        "docker", "run", "--rm", *_rights(False), "--memory", "256m", "--pids-limit", "64",
        *(a for path, mode in binds for a in ("-v", f"{path}:{path}:{_mode(mode)}")),
        "--entrypoint", "/bin/sh", IMAGE_MARK, "-c", script, "disks", *args,
    ]  # fmt: skip
    return _resolve(image) + " ".join(shlex.quote(a) for a in argv).replace(IMAGE_MARK, '"$h"')


KEEPER_NAME = "dockyard.disks"
"""Name prefix of the keeper container (a dot: no environment's, pool member's or helper's
name has one, so no stack or tenant can make a container of this name); the rest names
its spec and checksums the helper image ID and the engine's volumes directory, so a new
helper image or another dockyard version's keeper is a keeper of its own."""
KEEPER_LABEL = LABEL_DISKS
KEEPER_IDLE_S = 10
"""The keeper leaves (and is removed: ``--rm``) after this many seconds with nothing of
its own running in it; sooner (a second or two) once it has served and no environment's
images are left on the engine (after the last destroy)."""
SERVED_MARK = "/tmp/dockyard-served"  # noqa: S108 - inside the keeper's own layer
"""Made in the keeper by every call: it has served (see :data:`KEEPER_SCRIPT`)."""
KEEPER_SCRIPT = (
    r"""
trap 'exit 0' TERM INT
limit=$1; idle=0; served=0
while [ "$idle" -lt "$limit" ]; do
  sleep 1 & wait $!
  # What `docker exec` started has no parent in this PID namespace (PPid 0), like PID 1.
  busy=0
  for status in /proc/[0-9]*/status; do
    [ "$status" != /proc/1/status ] || continue
    while read -r key value; do
      [ "$key" = PPid: ] || continue
      [ "$value" != 0 ] || busy=1
      break
    done 2>/dev/null <"$status"
  done
  if [ "$busy" = 1 ]; then idle=0; else idle=$((idle + 1)); fi
  [ ! -e """
    + SERVED_MARK
    + r""" ] || served=1
  # Idle, after serving, with no environment's images left on the engine (the last one
  # was destroyed): nothing to keep, so no container is left behind for long. A keeper
  # that has served nothing yet waits for the call that started it.
  set -- """
    + DISKS_DIR
    + r"""/*
  if [ "$served$busy" = 10 ] && [ ! -e "$1" ]; then exit 0; fi
done
"""
)
"""PID 1 of the keeper: $1 the idle seconds after which it ends, or at once when idle
with no environment's images left (sh builtins only)."""
KEEPER_ATTEMPTS = 60
"""Rounds a call waits for a usable keeper (half a second or an exec each) before it fails."""
DONE_MARK = "dockyard-keeper-done"
# Runs the script in the keeper, then says on stderr that it ended and with which status.
_IN_KEEPER = f': >{SERVED_MARK} 2>/dev/null; /bin/sh -c "$0" "$@"; s=$?; echo "{DONE_MARK} $s" >&2; exit "$s"'


def _keeper_run() -> list[str]:
    """``docker run`` of the keeper (marks: @k@ name, @r@ volumes directory)."""
    return [
        "docker", "run", "-d", "--rm", "--name", "@k@", "--label", f"{KEEPER_LABEL}=keeper",
        *_rights(True), "--memory", "1g", "--pids-limit", "2048",
        "-e", "DOCKYARD_VOLUMES=@r@",
        *(a for path in (DISKS_DIR, LINKS_DIR) for a in ("-v", f"{path}:{path}:rw")),
        "-v", "@r@:@r@:rshared",
        "--entrypoint", "/bin/sh", IMAGE_MARK, "-c", KEEPER_SCRIPT, "keeper",
        str(KEEPER_IDLE_S),
    ]  # fmt: skip


KEEPER_SPEC = hashlib.sha256("\0".join(_keeper_run()).encode()).hexdigest()[:8]
"""In the keeper's name: a keeper started by another version of dockyard is not used."""


def keeper_command(
    image: str, script: str, *args: str, volumes: Mapping[str, str], missing_ok: bool = False
) -> str:
    """Shell text running ``script`` by ``docker exec`` in the disks keeper: one long-lived
    helper container per engine (:data:`KEEPER_NAME`) from the operator's helper ``image``,
    with the helpers' rights, the image and link roots and the engine's volumes directory
    (rshared, at the same path) bound. A helper container per call cost the engine a
    container start and removal each way (issue 29: most of an environment's teardown);
    an exec is a fraction of it.

    Each call first reads the keeper by name and uses it by ID only when it runs the
    resolved helper image and carries the keeper label (a container of that name that
    is not a keeper stops the call, naming it; nothing else is touched). None: the call
    starts one (several at once: one wins, the others use it). One that is stopping: the
    call waits for it to go (and removes a stopped one that stays). The script's end is
    marked with its status on stderr (:data:`DONE_MARK`): with the mark, that status and
    the script's words are the answer; without it (the keeper went away under it) the
    call runs again in a new keeper — the scripts finish what an interrupted run left.
    After :data:`KEEPER_ATTEMPTS` rounds it fails with the engine's last words. The keeper
    leaves when idle (:data:`KEEPER_IDLE_S`).

    ``volumes`` (role → volume name): looked up in one ``docker volume inspect``; the
    script gets ``args`` and then, per role, the role and its volume's directory (``""``
    for a volume that is gone when ``missing_ok``; any other failure of the look-up, or
    a missing volume without it, stops the call with the engine's words)."""
    image = helper_ref(image)
    names = " ".join(shlex.quote(v) for v in volumes.values())
    text = _resolve(image)
    # Temporary files for the engine's words; removed however the call ends.
    text += (
        "e=; f=; trap 'rm -f \"$e\" \"$f\"' EXIT; trap 'exit 143' TERM; trap 'exit 130' INT HUP; "
        "e=$(mktemp) && f=$(mktemp) || exit 1; "
    )
    lookup = (
        f"m=$(docker volume inspect --format '{{{{.Name}}}} {{{{.Mountpoint}}}}' {names} 2>\"$f\")"
    )
    if missing_ok:  # only "no such volume" (the engine's words) means gone; else a failure
        text += (
            f"{lookup} || {{ awk 'tolower($0) !~ /no such volume/ {{ bad = 1 }} END {{ exit !bad }}' \"$f\" "
            '&& { cat "$f" >&2; exit 1; }; }; '
        )
    else:
        text += f'{lookup} || {{ cat "$f" >&2; exit 1; }}; '
    pairs = []
    for index, (role, name) in enumerate(volumes.items()):
        text += (
            f"v{index}=$(printf '%s\\n' \"$m\" | awk -v n={shlex.quote(name)} "
            "'$1 == n { sub(/^[^ ]* /, \"\"); print; exit }'); "
        )
        pairs += [shlex.quote(role), f'"$v{index}"']
    # The engine's volumes directory: a volume's parent's parent, or the engine's root.
    found = " ".join(f'"$v{i}"' for i in range(len(volumes)))
    text += (
        f'r=; for d in {found}; do [ -z "$d" ] || {{ r=${{d%/*/_data}}; break; }}; done; '
        "[ -n \"$r\" ] || r=$(docker info --format '{{.DockerRootDir}}')/volumes || exit 1; "
        f'k={KEEPER_NAME}.{KEEPER_SPEC}.$(printf \'%s %s\' "$h" "$r" | cksum | cut -d" " -f1); '
    )
    start = " ".join(shlex.quote(a) for a in _keeper_run())
    start = start.replace(IMAGE_MARK, '"$h"').replace("@k@", '"$k"').replace("@r@", '"$r"')
    call = " ".join(
        shlex.quote(a) for a in ("docker", "exec", "@i@", "/bin/sh", "-c", _IN_KEEPER, script)
    ).replace("@i@", '"$i"')
    call += " disks " + " ".join([*(shlex.quote(a) for a in args), *pairs])
    # The mark ends the script's last line even when that line had no newline of its own.
    said = f'awk \'{{ if (sub(/{DONE_MARK} [0-9]+$/, "") && $0 == "") next; print }}\' "$e" >&2'
    state = (
        "{{.Id}} {{.Image}} {{index .Config.Labels " + f'"{KEEPER_LABEL}"' + "}} {{.State.Status}}"
    )
    foreign = (
        f'echo {shlex.quote("dockyard: a container named ")}"$k"'
        + shlex.quote(
            " is not dockyard's disks keeper (its image or label differ): nothing was run "
            "in it; remove it"
        )
        + " >&2"
    )
    text += (
        ': >"$e"; n=0; stuck=0; '
        "while :; do "
        f'n=$((n + 1)); if [ "$n" -gt {KEEPER_ATTEMPTS} ]; then {said}; cat "$f" >&2; '
        f'echo {shlex.quote("dockyard: the disks keeper ")}"$k"'
        f"{shlex.quote(' could not be started or kept (the messages above are the last tries)')}"
        " >&2; exit 1; fi; "
        f"s=$(docker container inspect --format '{state}' \"$k\" 2>/dev/null); i=${{s%% *}}; "
        "case $s in "
        '"") '
        f'{start} >/dev/null 2>"$f" || sleep 0.5 ;; '
        '*" $h keeper running") '
        f'{call} 2>"$e"; '
        f"d=$(awk 'match($0, /{DONE_MARK} [0-9]+$/) {{ d = substr($0, RSTART + {len(DONE_MARK) + 1}) }} "
        'END { print d }\' "$e"); '
        f'if [ -n "$d" ]; then {said}; exit "$d"; fi ;; '
        '*" $h keeper "*) '
        "stuck=$((stuck + 1)); "
        'if [ "$stuck" -gt 6 ]; then docker rm -f "$i" >/dev/null 2>"$f"; stuck=0; fi; '
        "sleep 0.5 ;; "
        f"*) {foreign}; exit 1 ;; "
        "esac; "
        "done"
    )
    return text


def _mode(mode: str) -> str:
    if mode not in ("rw", "ro"):
        raise ValueError(f"bind mode {mode!r} (allowed: rw, ro)")
    return mode
