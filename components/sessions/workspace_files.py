"""Read and write a session's workspace through the file helper (:mod:`.workspace_helper`),
which runs in the container as the agent user and walks every path with O_NOFOLLOW: stat,
list, remove, disk use, and streamed downloads and uploads. Its status lines are the
agent's (hostile) data: read with size limits and checked field by field."""

from __future__ import annotations

import io
import json
import socket
import struct
import tarfile
from collections.abc import Iterable, Iterator, Mapping
from importlib import resources
from typing import Any

from ..contract import AGENT_UID, ENV_NAME, SECRETS_DIR, WORKSPACE_MOUNT
from ..errors import Conflict, DockyardError, Failed, InvalidInput, NotFound
from .exec_streams import Frames
from .workspace_container import Container, silent
from .workspace_paths import NAME_MAX, PATH_MAX, shown, workspace_path


class TooLarge(DockyardError, code=2, status=413, kind="too-large"):
    """A file or upload over its size limit."""


class Forbidden(DockyardError, code=1, status=403, kind="forbidden"):
    """The agent user may not read or write that path."""


KINDS: dict[str, type[DockyardError]] = {
    "not-found": NotFound,
    "invalid": InvalidInput,
    "conflict": Conflict,
    "too-large": TooLarge,
    "forbidden": Forbidden,
}


def helper_source() -> str:
    return resources.files(__package__).joinpath("workspace_helper.py").read_text("utf-8")


class FileVerbs(Container):
    """The workspace's files, through the helper."""

    def put_secrets(self, values: Mapping[str, str]) -> None:
        """Write ``values`` as the running container's secret files (``/run/secrets/<NAME>``,
        0400, the agent's, as the program uploads them at create): ONE exec as the agent
        (the directory's owner; the container's root has no capabilities) extracting a tar
        from its stdin, so no value is in a command line the engine records (the engine's
        archive API cannot be used: it writes below a running container's mounts, measured
        in benchmarks/claim.py). Names must be variable names (never a path)."""
        if not all(ENV_NAME.fullmatch(name) for name in values):
            raise InvalidInput("secrets", ["secrets: a name is not an environment variable name"])
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as archive:
            for name, value in sorted(values.items()):
                data = value.encode()
                info = tarfile.TarInfo(name)
                info.size, info.mode, info.uid, info.gid = len(data), 0o400, AGENT_UID, AGENT_UID
                archive.addfile(info, io.BytesIO(data))
        argv = ["tar", "-x", "-p", "--no-same-owner", "-C", SECRETS_DIR]
        _, err, code = self._run(argv, stdin=buffer.getvalue())
        if code != 0:
            detail = err.decode("utf-8", "replace").strip()[:200]
            raise Failed(
                f"session {self.record.session_id!r}: secrets not delivered (tar exited "
                f"{code}{': ' + detail if detail else ''})"
            )

    def _helper_argv(self, op: str, parts: tuple[str, ...], **extra: Any) -> list[str]:
        spec = {"op": op, "root": WORKSPACE_MOUNT, "path": list(parts), **extra}
        return [
            "/usr/bin/env",
            "-i",
            "python3",
            "-I",
            "-S",
            "-c",
            helper_source(),
            json.dumps(spec),
        ]

    def _helper(self, op: str, parts: tuple[str, ...], **extra: Any) -> dict[str, Any]:
        _, err, code = self._run(self._helper_argv(op, parts, **extra))
        return _status(err, code, parts)

    def stat(self, path: str) -> dict[str, Any]:
        parts = workspace_path(path)
        entry = self._helper("stat", parts).get("entry")
        return {**_entry(entry), "path": shown(parts)}

    def list(self, path: str, limit: int | None = None) -> dict[str, Any]:
        parts = workspace_path(path)
        most = min(limit or self.limits.list_entries, self.limits.list_entries)
        found = self._helper("list", parts, limit=most)
        entries = found.get("entries")
        if not isinstance(entries, list):
            raise Failed("the file helper answered a listing without entries")
        return {
            "path": shown(parts),
            "entries": [_entry(e) for e in entries[:most]],
            "truncated": bool(found.get("truncated")),
        }

    def remove(self, path: str, recursive: bool = False) -> dict[str, Any]:
        parts = workspace_path(path, allow_root=False)
        found = self._helper("remove", parts, recursive=recursive)
        return {"path": shown(parts), "removed": str(found.get("removed"))}

    def disk(self) -> dict[str, int]:
        found = self._helper("df", ())
        return {
            k: int(found[k])
            for k in ("total", "used", "available")
            if isinstance(found.get(k), int)
        }

    def read(self, path: str) -> tuple[int, Iterator[bytes]]:
        """The file's size and its content as it streams (a regular file only, never
        through a link)."""
        parts = workspace_path(path, allow_root=False)
        exec_id, sock = self._exec_socket(
            self._helper_argv("read", parts, max=self.limits.file_bytes), stdin=False
        )
        frames = Frames(sock)
        sock.settimeout(self.helper_timeout)
        err, held = bytearray(), []
        try:
            while b"\n" not in err:
                piece = frames.next()
                if piece is None:
                    return_code = self._exit_code(exec_id)
                    _status(bytes(err), return_code, parts)
                    raise Failed("the file helper ended without a status")
                if piece[0] == 2:
                    err += piece[1]
                    if len(err) > self.status_line_max:
                        raise Failed("the file helper's status is over its limit")
                else:
                    held.append(piece[1])
                    # Content before its status is never more than the file limit: a
                    # helper the agent took over cannot make the host hold more.
                    if sum(map(len, held)) > self.limits.file_bytes:
                        raise Failed("the file helper sent more than the file limit")
            line = bytes(err).split(b"\n", 1)[0]
            status = _status(line, 0 if b'"ok": true' in line else 1, parts)
            size = status.get("size")
            if not isinstance(size, int) or size < 0:
                raise Failed("the file helper answered no size")
        except TimeoutError:
            sock.close()
            raise silent() from None
        except BaseException:
            sock.close()
            raise

        def content() -> Iterator[bytes]:
            # Pieces gathered up to 1 MB: one hand-over per MB, not per 32 kB frame.
            sent, batch = 0, bytearray(b"".join(held))
            try:
                while (piece := frames.next()) is not None:
                    if piece[0] == 1:
                        batch += piece[1]
                        if len(batch) >= 1 << 20:
                            sent += len(batch)
                            yield bytes(batch)
                            batch.clear()
                    if sent + len(batch) > size:
                        raise Failed("the file grew while it was read")
                if batch:
                    sent += len(batch)
                    yield bytes(batch)
                if sent != size:
                    # The answer's Content-Length cannot be met: end it broken, not short.
                    raise Failed("the file changed while it was read")
            except TimeoutError:
                raise silent() from None
            finally:
                sock.close()

        return size, content()

    def write(
        self, path: str, chunks: Iterable[bytes], parents: bool = False, mode: int = 0o644
    ) -> dict[str, Any]:
        """Write the file from ``chunks`` (streamed; at most ``limits.file_bytes``), atomically:
        a new file renamed into place when complete, never through a link."""
        parts = workspace_path(path, allow_root=False)
        if not 0 <= mode <= 0o777:
            raise InvalidInput("mode", [f"mode: {mode:o} (allowed: 0 to 777, octal)"])
        exec_id, sock = self._exec_socket(
            self._helper_argv(
                "write", parts, max=self.limits.file_bytes, parents=parents, mode=mode
            ),
            stdin=True,
        )
        frames = Frames(sock)
        sock.settimeout(self.helper_timeout)
        err = bytearray()
        try:
            while b"\n" not in err:  # the helper's "ready", or its refusal
                piece = frames.next()
                if piece is None:
                    break
                if piece[0] == 2:
                    err += piece[1]
                    if len(err) > self.status_line_max:
                        raise Failed("the file helper's status is over its limit")
            first = bytes(err).split(b"\n", 1)[0]
            if b'"ready": true' not in first:
                _status(first, self._exit_code(exec_id) or 1, parts)
                raise Failed("the file helper ended without a status")
            total = 0
            for chunk in chunks:
                if not chunk:
                    continue
                total += len(chunk)
                if total > self.limits.file_bytes:
                    raise TooLarge(
                        "upload",
                        [
                            f"{shown(parts)}: over {self.limits.file_bytes} bytes (allowed: at most "
                            f"{self.limits.file_bytes}); nothing was written"
                        ],
                    )
                for start in range(0, len(chunk), 1 << 20):
                    piece_bytes = chunk[start : start + (1 << 20)]
                    sock.sendall(struct.pack(">I", len(piece_bytes)) + piece_bytes)
            sock.sendall(struct.pack(">I", 0))
            sock.shutdown(socket.SHUT_WR)
            rest = bytearray()
            while (piece := frames.next()) is not None:
                if piece[0] == 2 and len(rest) < self.status_line_max:
                    rest += piece[1]
            last = (bytes(err).split(b"\n", 1)[1] + bytes(rest)).strip().split(b"\n")[-1]
            found = _status(last, self._exit_code(exec_id), parts)
        except TimeoutError:
            raise silent() from None
        finally:
            sock.close()
        return {"path": shown(parts), "size": int(found.get("size", total))}


def _status(raw: bytes, code: int | None, parts: tuple[str, ...]) -> dict[str, Any]:
    """The helper's last status line, checked (it ran as the agent: untrusted)."""
    lines = raw.strip().split(b"\n")
    try:
        found = json.loads(lines[-1]) if lines and lines[-1] else None
    except ValueError:
        found = None
    if not isinstance(found, dict):
        if code == 127 or b"python3" in raw[:200]:
            raise Failed(
                "the file helper needs python3 in the session's image (the core image has it)"
            )
        raise Failed(f"{shown(parts)}: the file helper answered no status (exit {code})")
    if found.get("ok") is True and code in (0, None):
        return found
    kind = KINDS.get(str(found.get("kind")), Failed)
    message = str(found.get("message", "failed"))[:500]
    raise kind("path", [f"path {shown(parts)}: {message}"])


def _number(value: Any, low: int, high: int) -> bool:
    """A number from the helper (the agent may write its answers) that the host can pass on:
    no bool, no NaN or infinity, none too large for a float or a JSON client."""
    return isinstance(value, int | float) and not isinstance(value, bool) and low <= value <= high


def _entry(entry: Any) -> dict[str, Any]:
    if not isinstance(entry, dict):
        raise Failed("the file helper answered an entry that is not an object")
    kind = entry.get("type")
    size, mode, mtime = entry.get("size"), entry.get("mode"), entry.get("mtime")
    out = {
        "name": str(entry.get("name", ""))[: NAME_MAX * 4],
        "type": kind if kind in ("file", "directory", "symlink", "other") else "other",
        "size": size if isinstance(size, int) and _number(size, 0, 2**63 - 1) else 0,
        "mode": f"{mode & 0o7777:04o}"
        if isinstance(mode, int) and _number(mode, 0, 2**32)
        else None,
        "mtime": float(mtime) if _number(mtime, -(2**62), 2**62) else None,
    }
    if out["type"] == "symlink" and isinstance(entry.get("target"), str):
        out["target"] = entry["target"][:PATH_MAX]
    return out
