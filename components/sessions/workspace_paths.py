"""Where a data-plane path may point: the lexical rules for a path under the session's
workspace (issue 27 item 1). Nothing is resolved here or on the host; the file helper
(:mod:`.workspace_helper`) walks the result inside the container and refuses every link.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable

from ..contract import WORKSPACE_MOUNT
from ..errors import InvalidInput

PATH_MAX = 4096
NAME_MAX = 255


def workspace_path(path: str, *, allow_root: bool = True) -> tuple[str, ...]:
    """The components of ``path`` under the workspace: relative (``src/a.py``) or absolute
    under it (``/workspace/src/a.py``). Refuses ``..``, NUL, other absolute paths and
    over-long names with what is allowed (never resolves anything)."""
    allowed = f"allowed: a path relative to {WORKSPACE_MOUNT}, or absolute under it, without '..'"
    if not isinstance(path, str):
        raise InvalidInput("path", [f"path: not a string ({allowed})"])
    if "\0" in path:
        raise InvalidInput("path", [f"path: holds a NUL byte ({allowed})"])
    if len(path.encode("utf-8", "surrogateescape")) > PATH_MAX:
        raise InvalidInput("path", [f"path: over {PATH_MAX} bytes ({allowed})"])
    relative = path
    if path.startswith("/"):
        if path != WORKSPACE_MOUNT and not path.startswith(WORKSPACE_MOUNT + "/"):
            raise InvalidInput("path", [f"path: {path!r} is outside {WORKSPACE_MOUNT} ({allowed})"])
        relative = path[len(WORKSPACE_MOUNT) :]
    parts = tuple(p for p in relative.split("/") if p not in ("", "."))
    if ".." in parts:
        raise InvalidInput("path", [f"path: {path!r} holds '..' ({allowed})"])
    for part in parts:
        if len(part.encode("utf-8", "surrogateescape")) > NAME_MAX:
            raise InvalidInput("path", [f"path: a name over {NAME_MAX} bytes ({allowed})"])
    if not parts and not allow_root:
        raise InvalidInput("path", [f"path: {path!r} is the workspace itself ({allowed})"])
    return parts


def shown(parts: Iterable[str]) -> str:
    return posixpath.join(WORKSPACE_MOUNT, *parts)
