"""Whether the process a state file names still runs: reservations (:mod:`.quotas`) and
a warm pool's members being made (:mod:`.pool`) are left by processes that can die."""

from __future__ import annotations

import os
from pathlib import Path


def alive(pid: object) -> bool:
    """Whether ``pid`` is a running process here (one owned by another user counts)."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def boot_id() -> str:
    """This boot of the machine ("" where the kernel does not say): a pid from another
    boot names nothing."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text(encoding="ascii").strip()
    except OSError:
        return ""
