"""A session's data plane: run a command in its container, send it signals, read and write
its workspace, and read its stats, logs and ports (issue 27 item 1).

``Sessions.workspace(session, tenant)`` finds the container the way host tools do (the
registry's record, the manifest checked against the engine by :mod:`.located`) and answers
a :class:`Workspace` bound to it; every face (HTTP, CLI) calls these verbs.

Trust: everything that comes out of the container is the agent's (hostile) data. Command
output is passed through as opaque bytes, never parsed; the file helper's status lines are
JSON read with size limits and checked field by field. Paths are checked twice: lexically
here (:func:`workspace_path`), and walked inside the container by
:mod:`.workspace_helper`, which refuses every symlink on the way (O_NOFOLLOW from the
parent's descriptor), so no path or link leads out of ``/workspace``. Nothing is ever
resolved on the host side.

The Docker engine is the backend (local or ``ssh://``); a Kubernetes session has no exec
or archive stream here yet (see docs/api.md).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import posixpath
import re
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from ..capacity import connect
from ..contract import AGENT_UID, WORKSPACE_MOUNT
from ..errors import Conflict, DockyardError, Failed, InvalidInput, NotFound
from . import located
from .registry import Record

PATH_MAX = 4096
NAME_MAX = 255
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
SIGNALS = ("HUP", "INT", "QUIT", "KILL", "USR1", "USR2", "TERM", "STOP", "CONT", "WINCH")
STATUS_LINE_MAX = 8 * 1024 * 1024
"""Largest status line the file helper may write (a listing of ``list_entries`` names)."""
IDLE_SECONDS = 1.0
"""How often an exec stream says it is alive while the command is quiet."""
HELPER_TIMEOUT_SECONDS = 60.0
"""How long the file helper may stay silent (the agent can stop it: same user)."""
KILL_GRACE_SECONDS = 2.0
"""After a timeout's kill, how long the stream may still drain before it is cut."""
# The exec launcher: the command's process-group id first on stderr, then the command
# itself (docker exec starts it as a session leader: pid == pgid == sid).
LAUNCHER = 'printf "%s\\n" "$$" >&2; exec "$@"'
PREVIEW_DOMAIN_VARIABLE = "DOCKYARD_PREVIEW_DOMAIN"
# The preview proxy's own rules for a host name (roles/preview_proxy).
DNS_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?", re.ASCII)
PREVIEW_DOMAIN = re.compile(
    r"(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z][a-z0-9-]{0,62}", re.ASCII
)
PGID_LINE = re.compile(rb"([0-9]{1,10})\r?\n")


class TooLarge(DockyardError, code=2, status=413, kind="too-large"):
    """A file or upload over its size limit."""


class Forbidden(DockyardError, code=1, status=403, kind="forbidden"):
    """The agent user may not read or write that path."""


@dataclass(frozen=True)
class Limits:
    file_bytes: int = 1024 * 1024 * 1024
    """Largest file read or written through the data plane."""
    output_bytes: int = 1024 * 1024 * 1024
    """Most output an exec may stream before it is killed."""
    timeout_seconds: float = 24 * 3600
    """Longest timeout an exec may ask for."""
    default_timeout_seconds: float = 600
    list_entries: int = 10000
    stdin_bytes: int = 1024 * 1024


# --- input rules (lexical; the helper walks the result in the container) ----------------


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


@dataclass(frozen=True)
class ExecRequest:
    command: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: str = WORKSPACE_MOUNT
    timeout: float | None = None
    stdin: bytes | None = None

    def checked(self, limits: Limits) -> ExecRequest:
        """The request with its cwd absolute, or every problem at once."""
        problems = []
        if not self.command or not all(isinstance(a, str) for a in self.command):
            problems.append("command: empty or not a list of strings (allowed: [program, args…])")
        elif any("\0" in a for a in self.command):
            problems.append("command: an argument holds a NUL byte")
        for name, value in self.env.items():
            if not isinstance(name, str) or not ENV_NAME.fullmatch(name):
                problems.append(
                    f"env: {name!r} is not a variable name (allowed: [A-Za-z_][A-Za-z0-9_]*)"
                )
            elif not isinstance(value, str) or "\0" in value:
                problems.append(f"env.{name}: not a string without NUL bytes")
        cwd = WORKSPACE_MOUNT
        try:
            cwd = shown(workspace_path(self.cwd))
        except InvalidInput as error:
            problems.extend(p.replace("path:", "cwd:", 1) for p in error.problems)
        timeout = limits.default_timeout_seconds if self.timeout is None else self.timeout
        if not 0 < timeout <= limits.timeout_seconds:
            problems.append(
                f"timeout: {timeout:g} s (allowed: more than 0, at most {limits.timeout_seconds:g})"
            )
        if self.stdin is not None and len(self.stdin) > limits.stdin_bytes:
            problems.append(
                f"stdin: {len(self.stdin)} bytes (allowed: at most {limits.stdin_bytes})"
            )
        if problems:
            raise InvalidInput("exec", problems)
        return ExecRequest(self.command, dict(self.env), cwd, timeout, self.stdin)


def signal_name(value: str) -> str:
    name = value.upper().removeprefix("SIG")
    if name not in SIGNALS:
        raise InvalidInput(
            "signal", [f"signal: {value!r} is not allowed (allowed: {', '.join(SIGNALS)})"]
        )
    return name


# --- exec events ------------------------------------------------------------------------


class Controls:
    """An interactive exec's input side: stdin, its end, the terminal's size. Safe to use
    from another thread than the one reading the output."""

    def __init__(self, api: Any, exec_id: str, sock: socket.socket, tty: bool) -> None:
        self.api, self.exec_id, self.tty = api, exec_id, tty
        # A descriptor of its own, blocking: the reader's short timeouts never cut stdin.
        self.writer = sock.dup()
        self.writer.settimeout(None)
        # Input waits for the launcher's first line: a terminal echoes what it gets, and
        # an echo before that line would hide it.
        self.ready = threading.Event()

    def write(self, data: bytes) -> None:
        self.ready.wait(30)
        self.writer.sendall(data)

    def close_stdin(self) -> None:
        with contextlib.suppress(OSError):
            self.writer.shutdown(socket.SHUT_WR)

    def resize(self, rows: int, cols: int) -> None:
        if not (self.tty and 0 < rows <= 1000 and 0 < cols <= 1000):
            raise InvalidInput(
                "resize", [f"resize: {rows}x{cols} (allowed: a terminal, 1 to 1000 each way)"]
            )
        self.api.exec_resize(self.exec_id, height=rows, width=cols)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.writer.close()


@dataclass(frozen=True)
class Started:
    exec_id: str
    controls: Controls | None = None


@dataclass(frozen=True)
class Output:
    stream: str  # "stdout" | "stderr"
    data: bytes


@dataclass(frozen=True)
class Idle:
    """Nothing new for a while (the command is still running)."""


@dataclass(frozen=True)
class Exit:
    code: int | None
    timed_out: bool
    truncated: bool
    duration_ms: int


Event = Started | Output | Idle | Exit
STREAMS = {1: "stdout", 2: "stderr"}


class Raw:
    """A terminal exec's stream: not multiplexed, all of it the terminal's output."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def next(self) -> tuple[int, bytes] | None:
        data = self.sock.recv(256 * 1024)
        return (1, data) if data else None


class Frames:
    """Docker's multiplexed stream (``<stream><0,0,0><size:4>`` + payload) read from a
    socket as it comes; payloads are passed on as opaque bytes, possibly split."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = bytearray()
        self.stream = 0
        self.left = 0

    def next(self) -> tuple[int, bytes] | None:
        """The next piece of output, or None at the end; raises ``TimeoutError`` when the
        socket's timeout passes first (call again to go on)."""
        while True:
            if self.left and self.buffer:
                piece = bytes(self.buffer[: self.left])
                del self.buffer[: len(piece)]
                self.left -= len(piece)
                return self.stream, piece
            if not self.left and len(self.buffer) >= 8:
                self.stream, self.left = self.buffer[0], struct.unpack(">I", self.buffer[4:8])[0]
                del self.buffer[:8]
                continue
            data = self.sock.recv(256 * 1024)
            if not data:
                return None
            self.buffer += data


@dataclass
class _Running:
    container: str
    pgid: int


_RUNNING: dict[str, _Running] = {}
_RUNNING_LOCK = threading.Lock()


def _raw(sock: Any) -> socket.socket:
    """The socket under docker-py's hijacked exec stream."""
    raw = getattr(sock, "_sock", sock)
    if not isinstance(raw, socket.socket):
        raise Failed("the engine's exec stream is not a socket here (unsupported transport)")
    return raw


# --- clients ------------------------------------------------------------------------------

_CLIENTS: dict[str, Any] = {}
_CLIENTS_LOCK = threading.Lock()


def client_for(host: str) -> Any:
    """One Docker client per engine for the process's lifetime (each new one would ask the
    engine its version first: a round trip per request)."""
    import docker.errors

    with _CLIENTS_LOCK:
        client = _CLIENTS.get(host)
        if client is None:
            try:
                client = connect(None if host == "local" else host)
            except docker.errors.DockerException as exc:
                raise Failed(f"the engine ({host}) cannot be reached: {exc}") from None
            _CLIENTS[host] = client
        return client


def _helper_source() -> str:
    return resources.files(__package__).joinpath("workspace_helper.py").read_text("utf-8")


# --- the workspace -----------------------------------------------------------------------


class Workspace:
    """One session's container, located and checked; every verb runs as the agent user."""

    def __init__(
        self, record: Record, manifest: Mapping[str, Any], client: Any, limits: Limits
    ) -> None:
        self.record = record
        self.manifest = manifest
        self.client = client
        self.limits = limits
        self.container = str(manifest["container"]["id"])

    @classmethod
    def open(
        cls,
        record: Record,
        manifest: Mapping[str, Any],
        limits: Limits | None = None,
        client: Any = None,
        backend: str | None = None,
    ) -> Workspace:
        """The workspace of ``record``'s container, once the engine confirms the manifest
        (``backend``: the host's, from its settings)."""
        import docker.errors

        if backend == "kubernetes":
            raise Failed(
                f"session {record.session_id!r} runs on Kubernetes: exec, files, stats and "
                "logs need a Docker engine here (the Kubernetes backend has no exec or "
                "archive stream in dockyard yet; use kubectl exec / kubectl cp meanwhile)"
            )
        engine = client or client_for(record.host)
        try:
            located.verify(record, manifest, engine)
        except docker.errors.DockerException as exc:
            raise Failed(
                f"session {record.session_id!r}: its engine ({record.host}) cannot be "
                f"reached: {exc}"
            ) from None
        return cls(record, manifest, engine, limits or Limits())

    @property
    def api(self) -> Any:
        return self.client.api

    def _exec_socket(
        self,
        argv: list[str],
        *,
        stdin: bool,
        env: Mapping[str, str] | None = None,
        cwd: str = WORKSPACE_MOUNT,
        tty: bool = False,
    ) -> tuple[str, socket.socket]:
        import docker.errors

        try:
            created = self.api.exec_create(
                self.container,
                argv,
                stdin=stdin,
                stdout=True,
                stderr=True,
                tty=tty,
                user=f"{AGENT_UID}:{AGENT_UID}",
                workdir=cwd,
                environment=dict(env or {}),
            )
            sock = _raw(self.api.exec_start(created["Id"], socket=True, tty=tty))
        except docker.errors.NotFound:
            raise Conflict(
                f"session {self.record.session_id!r}: its container is gone; refresh the session"
            ) from None
        except docker.errors.APIError as exc:
            if exc.status_code == 409:
                raise Conflict(
                    f"session {self.record.session_id!r}: its container is not running "
                    f"(`dockyard refresh {self.record.session_id}` starts it again)"
                ) from None
            raise Failed(
                f"session {self.record.session_id!r}: exec failed: {exc.explanation}"
            ) from None
        return created["Id"], sock

    # --- exec --------------------------------------------------------------------------

    def exec(
        self,
        request: ExecRequest,
        interactive: bool = False,
        tty: bool = False,
        size: tuple[int, int] | None = None,
    ) -> Iterator[Event]:
        """Run ``request.command`` as the agent user; yields :class:`Started`, then
        :class:`Output` pieces as they come (:class:`Idle` every second of quiet), then one
        :class:`Exit`. A timeout kills the command's process group; so does closing the
        iterator before the end (the caller went away). ``interactive``: stdin stays open
        and ``Started.controls`` writes it (``tty``: in a terminal of ``size`` rows, cols;
        its output all comes as stdout)."""
        checked = request.checked(self.limits)
        timeout = float(checked.timeout or self.limits.default_timeout_seconds)
        started = time.monotonic()
        exec_id, sock = self._exec_socket(
            ["/bin/sh", "-c", LAUNCHER, "sh", *checked.command],
            stdin=interactive or checked.stdin is not None,
            env=checked.env,
            cwd=checked.cwd,
            tty=tty,
        )
        frames: Frames | Raw = Raw(sock) if tty else Frames(sock)
        marker = "stdout" if tty else "stderr"
        controls = Controls(self.api, exec_id, sock, tty) if interactive else None
        pgid: int | None = None
        head = b""  # the marker stream until the launcher's pgid line
        held: list[Output] = []  # stdout that came before it
        total = 0
        timed_out = truncated = ended = False
        deadline = started + timeout
        if checked.stdin is not None and controls is None:
            feeder = Controls(self.api, exec_id, sock, tty)
            feeder.ready.set()  # no terminal here: nothing echoes
            threading.Thread(target=_feed, args=(feeder, checked.stdin), daemon=True).start()
        try:
            if controls is not None and tty and size is not None:
                controls.resize(*size)
            yield Started(exec_id, controls)
            while True:
                now = time.monotonic()
                if now >= deadline:
                    if timed_out or truncated:
                        break  # killed, and the stream did not end within the grace
                    timed_out = True
                    self._kill(pgid, "KILL")
                    deadline = now + KILL_GRACE_SECONDS
                    continue
                sock.settimeout(min(IDLE_SECONDS, deadline - now))
                try:
                    piece = frames.next()
                except TimeoutError:
                    yield Idle()
                    continue
                if piece is None:
                    ended = True
                    break
                number, data = piece
                stream = STREAMS.get(number)
                if stream is None:
                    continue
                if pgid is None and stream == marker:
                    head += data
                    if b"\n" not in head and len(head) < 16:
                        continue
                    match = PGID_LINE.match(head)
                    if match is None:
                        raise Failed("the exec launcher did not start (is /bin/sh in the image?)")
                    pgid = int(match.group(1))
                    with _RUNNING_LOCK:
                        _RUNNING[exec_id] = _Running(self.container, pgid)
                    if controls is not None:
                        controls.ready.set()
                    data = head[match.end() :]
                    yield from held
                    held.clear()
                    if not data:
                        continue
                total += len(data)
                if total > self.limits.output_bytes and not truncated:
                    truncated = True
                    self._kill(pgid, "KILL")
                    deadline = time.monotonic() + KILL_GRACE_SECONDS
                    continue
                if truncated:
                    continue
                if pgid is None:
                    held.append(Output(stream, data))
                else:
                    yield Output(stream, data)
            yield Exit(
                self._exit_code(exec_id) if ended else None,
                timed_out,
                truncated,
                round((time.monotonic() - started) * 1000),
            )
        finally:
            if not ended:
                self._kill(pgid, "KILL")
            with _RUNNING_LOCK:
                _RUNNING.pop(exec_id, None)
            if controls is not None:
                controls.close()
            with contextlib.suppress(OSError):
                sock.close()

    def _exit_code(self, exec_id: str) -> int | None:
        for _ in range(50):
            info = self.api.exec_inspect(exec_id)
            if not info.get("Running"):
                code = info.get("ExitCode")
                return int(code) if code is not None else None
            time.sleep(0.02)
        return None

    def _kill(self, pgid: int | None, name: str) -> None:
        if pgid is None:
            return
        with contextlib.suppress(Exception):
            self._run(["/bin/sh", "-c", 'kill -s "$1" -- "-$2"', "sh", name, str(pgid)])

    def signal(self, exec_id: str, value: str) -> None:
        """Send a signal to a running exec's process group (the id its stream started
        with); another session's or a finished exec answers not found."""
        name = signal_name(value)
        with _RUNNING_LOCK:
            running = _RUNNING.get(exec_id)
        if running is None or running.container != self.container:
            raise NotFound(
                f"session {self.record.session_id!r}: no running exec {exec_id!r} (it ended, or "
                "it was started by another server)"
            )
        self._run(["/bin/sh", "-c", 'kill -s "$1" -- "-$2"', "sh", name, str(running.pgid)])

    def _run(self, argv: list[str], stdin: bytes | None = None) -> tuple[bytes, bytes, int | None]:
        exec_id, sock = self._exec_socket(argv, stdin=stdin is not None)
        out, err = bytearray(), bytearray()
        try:
            if stdin is not None:
                _feed(sock, stdin)
            sock.settimeout(HELPER_TIMEOUT_SECONDS)
            frames = Frames(sock)
            while (piece := frames.next()) is not None:
                target = out if piece[0] == 1 else err
                if len(target) < STATUS_LINE_MAX:
                    target += piece[1]
        except TimeoutError:
            raise _silent() from None
        finally:
            sock.close()
        return bytes(out), bytes(err), self._exit_code(exec_id)

    # --- files -------------------------------------------------------------------------

    def _helper_argv(self, op: str, parts: tuple[str, ...], **extra: Any) -> list[str]:
        spec = {"op": op, "root": WORKSPACE_MOUNT, "path": list(parts), **extra}
        return [
            "/usr/bin/env",
            "-i",
            "python3",
            "-I",
            "-S",
            "-c",
            _helper_source(),
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
        sock.settimeout(HELPER_TIMEOUT_SECONDS)
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
                    if len(err) > STATUS_LINE_MAX:
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
            raise _silent() from None
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
                raise _silent() from None
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
        sock.settimeout(HELPER_TIMEOUT_SECONDS)
        err = bytearray()
        try:
            while b"\n" not in err:  # the helper's "ready", or its refusal
                piece = frames.next()
                if piece is None:
                    break
                if piece[0] == 2:
                    err += piece[1]
                    if len(err) > STATUS_LINE_MAX:
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
                if piece[0] == 2 and len(rest) < STATUS_LINE_MAX:
                    rest += piece[1]
            last = (bytes(err).split(b"\n", 1)[1] + bytes(rest)).strip().split(b"\n")[-1]
            found = _status(last, self._exit_code(exec_id), parts)
        except TimeoutError:
            raise _silent() from None
        finally:
            sock.close()
        return {"path": shown(parts), "size": int(found.get("size", total))}

    # --- stats, logs, ports ------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        import docker.errors

        try:
            inspected = self.api.inspect_container(self.container)
            state = inspected.get("State") or {}
            running = state.get("Status") == "running"
            sample = self.api.stats(self.container, stream=False) if running else {}
        except docker.errors.NotFound:
            raise Conflict(f"session {self.record.session_id!r}: its container is gone") from None
        created = _parse_time(self.record.created_at)
        age = (datetime.datetime.now(datetime.UTC) - created).total_seconds() if created else None
        memory = sample.get("memory_stats") or {}
        usage = memory.get("usage")
        inner = memory.get("stats") or {}
        if isinstance(usage, int):
            usage -= int(inner.get("inactive_file", inner.get("total_inactive_file", 0)) or 0)
        mem_limit = memory.get("limit")
        cpu = _cpu_percent(sample)
        disk = self.disk() if running else {}
        return {
            "status": state.get("Status"),
            "health": (state.get("Health") or {}).get("Status"),
            "startedAt": state.get("StartedAt"),
            "createdAt": self.record.created_at,
            "ageSeconds": round(age, 1) if age is not None else None,
            "memory": {
                "used": usage,
                "limit": mem_limit,
                "percent": _percent(usage, mem_limit),
            },
            "cpu": {
                "percent": cpu,
                "onlineCpus": (sample.get("cpu_stats") or {}).get("online_cpus"),
            },
            "pids": (sample.get("pids_stats") or {}).get("current"),
            "disk": {**disk, "percent": _percent(disk.get("used"), disk.get("total"))},
        }

    def logs(
        self, tail: int | None = None, follow: bool = False
    ) -> tuple[Iterator[bytes], Callable[[], None]]:
        """The container's own output (its entrypoint's) as opaque bytes, and a call that
        stops it from any thread (``follow`` keeps the stream open until then)."""
        stream = self.api.logs(
            self.container,
            stdout=True,
            stderr=True,
            stream=True,
            follow=follow,
            tail="all" if tail is None else tail,
        )

        def stop() -> None:
            with contextlib.suppress(Exception):
                stream.close()

        def lines() -> Iterator[bytes]:
            try:
                yield from stream
            except OSError:
                return  # stopped
            finally:
                stop()

        return lines(), stop

    def ports(self, preview_domain: str | None = None) -> dict[str, Any]:
        """The published ports; with the preview proxy's domain (``preview_domain``, else
        ``$DOCKYARD_PREVIEW_DOMAIN``: roles/preview_proxy's ``preview_proxy_domain``),
        each one's preview URL as that proxy names it (it needs the session's token)."""
        inspected = self.api.inspect_container(self.container)
        engine = located.published(inspected)
        domain = preview_domain or os.environ.get(PREVIEW_DOMAIN_VARIABLE) or None
        if domain is not None and not PREVIEW_DOMAIN.fullmatch(domain):
            raise InvalidInput(
                "preview",
                [f"{PREVIEW_DOMAIN_VARIABLE}: {domain!r} is not a domain (allowed: a.example)"],
            )
        session = self.record.session_id
        rows = []
        for port, host_port in sorted(engine.items()):
            row: dict[str, Any] = {"containerPort": port, "hostPort": host_port}
            if domain and DNS_LABEL.fullmatch(session):
                row["previewUrl"] = f"https://{port}-{session}.{domain}/"
            rows.append(row)
        return {"host": self.record.host, "ports": rows}


def _silent() -> Failed:
    return Failed(
        "the file helper in the container stopped answering (the agent can stop or kill "
        "processes of its user); nothing more was done: retry"
    )


def _feed(sock: socket.socket | Controls, data: bytes) -> None:
    """Write ``data`` as stdin, then end it (a thread of its own for an exec's stdin: a
    command that writes before it reads must not wait on us)."""
    try:
        if isinstance(sock, Controls):
            sock.write(data)
            sock.close_stdin()
        else:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    finally:
        if isinstance(sock, Controls):
            sock.close()


KINDS: dict[str, type[DockyardError]] = {
    "not-found": NotFound,
    "invalid": InvalidInput,
    "conflict": Conflict,
    "too-large": TooLarge,
    "forbidden": Forbidden,
}


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


def _entry(entry: Any) -> dict[str, Any]:
    if not isinstance(entry, dict):
        raise Failed("the file helper answered an entry that is not an object")
    kind = entry.get("type")
    out = {
        "name": str(entry.get("name", ""))[: NAME_MAX * 4],
        "type": kind if kind in ("file", "directory", "symlink", "other") else "other",
        "size": int(entry["size"]) if isinstance(entry.get("size"), int) else 0,
        "mode": f"{int(entry['mode']) & 0o7777:04o}"
        if isinstance(entry.get("mode"), int)
        else None,
        "mtime": float(entry["mtime"]) if isinstance(entry.get("mtime"), int | float) else None,
    }
    if out["type"] == "symlink" and isinstance(entry.get("target"), str):
        out["target"] = entry["target"][:PATH_MAX]
    return out


def _percent(part: Any, whole: Any) -> float | None:
    if isinstance(part, int | float) and isinstance(whole, int | float) and whole > 0:
        return round(100.0 * part / whole, 2)
    return None


def _cpu_percent(sample: Mapping[str, Any]) -> float | None:
    cpu, pre = sample.get("cpu_stats") or {}, sample.get("precpu_stats") or {}
    try:
        used = cpu["cpu_usage"]["total_usage"] - pre["cpu_usage"]["total_usage"]
        system = cpu["system_cpu_usage"] - pre["system_cpu_usage"]
        cpus = cpu.get("online_cpus") or len(cpu["cpu_usage"].get("percpu_usage") or [1])
    except (KeyError, TypeError):
        return None
    if system <= 0:
        return None
    return round(100.0 * used / system * cpus, 2)


def _parse_time(value: str) -> datetime.datetime | None:
    try:
        parsed = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except (ValueError, AttributeError):
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=datetime.UTC)
