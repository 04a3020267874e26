"""The host-wide disk commands (issue 25 item 4): ``attach`` re-attaches every bounded
environment's disk images after a reboot (loop devices and mounts do not survive one),
before the engine starts the environments; ``prune`` removes the images of environments
whose volumes are gone. Run as ``python -m dockyard.storage attach|prune`` (the
docker_host role's boot unit runs ``attach``); the scripts are
:mod:`dockyard.storage_scripts`'.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Sequence

from .config import HELPER_IMAGE
from .contract import MANAGED_SELECTOR
from .errors import DockyardError, Failed
from .storage_scripts import (
    ATTACH_ALL_SCRIPT,
    DISK_ROLES,
    DISKS_DIR,
    LINKS_DIR,
    MOUNT_SCRIPT,
    PRUNE_SCRIPT,
    SECRETS_ROLE,
    helper_command,
    keeper_command,
    link_dir,
)

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
                keeper_command(helper, MOUNT_SCRIPT, link_dir(environment), volumes=volumes),
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
