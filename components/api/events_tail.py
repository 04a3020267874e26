"""New complete lines of one audit trail since the last read, rotation followed by inode
(the byte offsets are kept in the store by :class:`.events_store.EventStore`)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
from pathlib import Path

from ..host.audit_trail import KEEP
from .events_lines import Line

LINE_MAX = 64 * 1024
READ_MAX = 1024 * 1024


class Tail:
    """New complete lines of one trail since the last read (the current file, and the rest
    of the file it was rotated into, found by inode among ``.1`` … ``.KEEP``)."""

    def __init__(self, path: Path, source: str, inode: int | None, offset: int) -> None:
        self.path, self.source = path, source
        self.id = hashlib.sha256(f"{socket.gethostname()}:{path}".encode()).hexdigest()
        self.inode, self.offset = inode, offset

    def read(self) -> tuple[list[Line], int | None, int]:
        """``(lines, inode, offset)``: what is new, and the position after it (kept by the
        caller with :meth:`advance` once the lines are stored)."""
        try:
            stat = os.stat(self.path)
        except OSError:
            return [], self.inode, self.offset
        lines: list[Line] = []
        inode, offset = self.inode, self.offset
        if inode is not None and stat.st_ino != inode:
            for index in range(1, KEEP + 1):
                rotated = self.path.with_name(f"{self.path.name}.{index}")
                with contextlib.suppress(OSError):
                    if os.stat(rotated).st_ino == inode:
                        lines += self._read(rotated, offset)[0]
                        break
            inode, offset = stat.st_ino, 0
        elif stat.st_size < offset:
            offset = 0  # truncated: start over (stored lines are not stored twice)
        inode = stat.st_ino
        more, offset = self._read(self.path, offset)
        return lines + more, inode, offset

    def advance(self, inode: int | None, offset: int) -> None:
        self.inode, self.offset = inode, offset

    def _read(self, path: Path, offset: int) -> tuple[list[Line], int]:
        try:
            with open(path, "rb") as handle:
                handle.seek(offset)
                chunk = handle.read(READ_MAX)
        except OSError:
            return [], offset
        end = chunk.rfind(b"\n")
        if end < 0:
            # No complete line yet; a line longer than READ_MAX is no audit line: skip it.
            return [], offset + (len(chunk) if len(chunk) >= READ_MAX else 0)
        lines = [
            Line(raw, self.source)
            for raw in chunk[: end + 1].splitlines()
            if raw.strip() and len(raw) <= LINE_MAX
        ]
        return lines, offset + end + 1
