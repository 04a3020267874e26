"""The one way dockyard replaces a file (standard library only; the host scripts use it too).

Readers see the old file or the new one, never half of one; the data and the rename are on
disk when :func:`write_atomic` returns; a failure leaves the old file and no temporary.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def read_json_object(
    path: str | os.PathLike[str], error: Callable[[str], Exception]
) -> dict[str, Any]:
    """The JSON object in ``path``. Raises ``error(message)``, the message naming the file
    and why: it cannot be read, is not JSON, or holds another JSON value."""
    try:
        loaded = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise error(f"{path}: cannot be read ({exc.strerror})") from None
    except json.JSONDecodeError as exc:
        raise error(f"{path}: not JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(loaded, dict):
        raise error(
            f"{path}: a JSON {type(loaded).__name__} is not allowed (allowed: a JSON object)"
        )
    return loaded


def write_atomic(
    path: str | os.PathLike[str], text: str, mode: int = 0o644, *, dir_mode: int | None = None
) -> None:
    """Replace ``path`` with ``text`` (UTF-8) at permission ``mode``; missing parent
    directories are created (at ``dir_mode`` when given)."""
    target = Path(path)
    directory = target.parent
    if dir_mode is None:
        directory.mkdir(parents=True, exist_ok=True)
    else:
        directory.mkdir(parents=True, exist_ok=True, mode=dir_mode)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    # The rename itself lives in the directory: without this a crash can lose it.
    fsync_directory(directory)


def write_synced(path: str | os.PathLike[str], text: str, flags: int, mode: int) -> None:
    """Write all of ``text`` (UTF-8) to ``path`` opened with ``flags`` (``os.O_WRONLY`` plus
    ``O_APPEND``, ``O_CREAT``, ``O_EXCL``...; created at permission ``mode``), on disk when
    this returns — or raise ``OSError`` with the file cut back to its size before (no part
    of ``text`` stays: a full disk or file size limit that lets only part of it through, a
    write that makes no progress, a failed ``fsync``). A caller appending while others may
    append holds them off (a lock) around this: the cut would take their lines too."""
    data = memoryview(text.encode())
    fd = os.open(path, flags, mode)
    try:
        before = os.fstat(fd).st_size
        try:
            while data:
                written = os.write(fd, data)
                if written <= 0:
                    raise OSError(errno.EIO, f"{path}: the write made no progress")
                data = data[written:]
            os.fsync(fd)
        except BaseException:
            with contextlib.suppress(OSError):  # the write's error is the one to report
                os.ftruncate(fd, before)
                os.fsync(fd)
            raise
    finally:
        os.close(fd)


def fsync_directory(path: str | os.PathLike[str]) -> None:
    """Put ``path``'s entries (a file just created or renamed in it) on disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(
    path: str | os.PathLike[str],
    data: Any,
    mode: int = 0o644,
    *,
    sort_keys: bool = False,
    dir_mode: int | None = None,
) -> None:
    """:func:`write_atomic` of ``data`` as indented JSON with a final newline."""
    write_atomic(
        path, json.dumps(data, indent=2, sort_keys=sort_keys) + "\n", mode, dir_mode=dir_mode
    )
