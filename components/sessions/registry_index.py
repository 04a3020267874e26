"""A per-process index of a directory of small JSON files (the registry's records): each
file is read and parsed once, and again only when its ``stat`` says it changed.

Why it is sound when any process (the CLI, another server, a host script) writes the
files: every call lists the directory again (a file added or removed is seen at once) and
compares each file's ``(device, inode, size, mtime_ns, ctime_ns)`` with the one it was
parsed at. A record written whole by rename (:func:`dockyard.files.write_atomic`) is a
new inode; a write in place changes ``ctime``, which only the kernel sets (``utime`` can
set ``mtime`` back, never ``ctime``). File times have a granularity (a clock tick, up to
2 s on some filesystems), so a file changed less than :data:`RACY_NS` before it was read
is not trusted from the index: it is read again on every call until it is older (Git's
"racily clean" rule). Costs one ``stat`` per file per call instead of open, read and parse.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

T = TypeVar("T")

RACY_NS = 2_000_000_000
"""A file changed less than this before it was read is read again next time (2 s: the
coarsest file time granularity of the filesystems a state directory lives on)."""
FILE_MAX = 16 * 2**20
"""The largest file read (bytes): a record or a manifest is a few KB (a record holds its
request, which the API bounds far below this); past it a file is left out unread."""
DIRECTORIES_MAX = 64
"""Directories indexed at once per process (tests open many); past it the index restarts."""

StatKey = tuple[int, int, int, int, int]


def stat_key(st: os.stat_result) -> StatKey:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


@dataclass(frozen=True)
class _Entry(Generic[T]):
    key: StatKey
    read_at_ns: int
    """When it was read: an entry read within RACY_NS of its file's change is not trusted."""
    value: T | None
    """None: the file could not be parsed (skipped, like an unreadable file)."""

    def trusted(self, current: StatKey) -> bool:
        changed = max(self.key[3], self.key[4])
        return current == self.key and self.read_at_ns - changed >= RACY_NS


_INDEX: dict[tuple[str, str], dict[str, _Entry[object]]] = {}
_LOCK = threading.Lock()


def _read(path: str, parse: Callable[[bytes], T]) -> _Entry[T] | None:
    """The file's stat key and parsed value, both of the same inode; None if it is gone,
    is no regular file (opened without blocking: a FIFO cannot hang the reader) or is over
    :data:`FILE_MAX`."""
    read_at = time.time_ns()
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > FILE_MAX:
            return None
        key = stat_key(info)
        chunks, size = [], 0
        while size <= FILE_MAX and (chunk := os.read(fd, 1 << 16)):
            chunks.append(chunk)
            size += len(chunk)
        if size > FILE_MAX:
            return None
    except OSError:
        return None
    finally:
        os.close(fd)
    try:
        return _Entry(key, read_at, parse(b"".join(chunks)))
    except (ValueError, TypeError):
        return _Entry(key, read_at, None)


def load(directory: Path, suffix: str, kind: str, parse: Callable[[bytes], T]) -> list[T]:
    """The parsed files ``*<suffix>`` of ``directory``, in file name order, files that do
    not parse left out. ``kind`` names ``parse`` (one index per directory and kind)."""
    try:
        names = sorted(
            entry.name
            for entry in os.scandir(directory)
            if entry.name.endswith(suffix) and not entry.name.startswith(".")
        )
    except (FileNotFoundError, NotADirectoryError):
        return []
    slot = (os.fspath(directory), kind)
    with _LOCK:
        known = dict(_INDEX.get(slot, {}))
    fresh: dict[str, _Entry[object]] = {}
    values: list[T] = []
    for name in names:
        path = os.path.join(directory, name)
        entry = known.get(name)
        if entry is not None:
            try:
                current = stat_key(os.stat(path))
            except OSError:
                continue  # removed since the listing
            if not entry.trusted(current):
                entry = None
        if entry is None:
            entry = _read(path, parse)  # type: ignore[assignment]
            if entry is None:
                continue
        fresh[name] = entry
        if entry.value is not None:
            values.append(entry.value)  # type: ignore[arg-type]
    with _LOCK:
        if slot not in _INDEX and len(_INDEX) >= DIRECTORIES_MAX:
            _INDEX.clear()
        _INDEX[slot] = fresh
    return values


def forget(directory: Path | None = None) -> None:
    """Drop the index of ``directory`` (every directory: None); the next load reads all."""
    with _LOCK:
        if directory is None:
            _INDEX.clear()
            _FILES.clear()
        else:
            for slot in [s for s in _INDEX if s[0] == os.fspath(directory)]:
                del _INDEX[slot]


_FILES: dict[tuple[str, str], _Entry[object]] = {}
FILES_MAX = 4096
"""Files remembered at once by :func:`cached` per process; past it the cache restarts."""


def cached(path: str, kind: str, load: Callable[[str], T], max_bytes: int = FILE_MAX) -> T:
    """``load(path)``, remembered while the file's stat key stays the same (the rules of
    :func:`load`). Raises what ``os.stat`` or ``load`` raise (a failure is not remembered),
    and :class:`OSError` for what is no regular file or is over ``max_bytes`` (not read:
    a FIFO would block the reader, a huge file fill its memory)."""
    read_at = time.time_ns()
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode) or st.st_size > max_bytes:
        raise OSError(errno.EINVAL, f"not a regular file of at most {max_bytes} bytes", path)
    key = stat_key(st)
    slot = (path, kind)
    with _LOCK:
        entry = _FILES.get(slot)
    if entry is not None and entry.trusted(key):
        return entry.value  # type: ignore[return-value]
    value = load(path)
    with _LOCK:
        if slot not in _FILES and len(_FILES) >= FILES_MAX:
            _FILES.clear()
        _FILES[slot] = _Entry(key, read_at, value)
    return value
