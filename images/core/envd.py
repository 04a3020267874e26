"""dockyard's in-environment daemon for the e2b SDKs (their "envd" protocol, port 49983).

Runs inside an environment AS the agent user (refuses to start as root), so the kernel
confines every process it starts and every file it touches to what the agent can do
itself. Python standard library only: the core image has no pip packages.

Protocol, as the e2b SDKs (Python 2.63, JS 2.51) speak it over plain HTTP/1.1:
- Connect RPC with the JSON codec (proto3 JSON names; bytes base64; int64 as strings)
  for the services ``process.Process`` (Start, Connect, List, SendInput, SendSignal,
  CloseStdin, Update, StreamInput) and ``filesystem.Filesystem`` (Stat, ListDir,
  MakeDir, Move, Remove, WatchDir, CreateWatcher, GetWatcherEvents, RemoveWatcher).
  Unary calls: ``application/json`` bodies, errors as ``{"code", "message"}`` with the
  Connect HTTP status. Server streams: ``application/connect+json`` enveloped messages
  (1 flag byte, 4-byte big-endian length), ended by an end-stream envelope (flag 0x02).
- ``GET /files?path=`` (download, streamed), ``POST /files`` (upload: multipart/form-data
  with one part per file, its filename the path, or ``application/octet-stream`` with
  ``?path=``; gzip ``Content-Encoding`` accepted), ``GET /health`` (204).
Relative paths and ``~`` resolve against the agent's home, as envd does.

The features of E2B's envd up to 0.6.4 (what the control plane answers as ``envdVersion``):
EntryInfo with size, mode, permissions, owner, group, modified time, the symlink's target
and ``metadata`` — user-defined file metadata (0.6.2), given on upload as
``X-Metadata-<key>`` headers and kept as the file's ``user.e2b.<key>`` extended
attributes; watch events with their EntryInfo (0.6.3); watches refuse network and FUSE
mounts unless ``allowNetworkMounts`` (0.6.4).

Authentication: the daemon never serves unauthenticated. It refuses to start (exit 1)
unless ``DOCKYARD_ENVD_ACCESS_TOKEN`` in its environment (the entrypoint exports it from
the secrets directory like any secret) holds at least 16 visible ASCII characters; every
call but /health must carry it in ``X-Access-Token`` (what the SDKs send from the
sandbox's ``envdAccessToken``), compared in constant time. The token is read once at
start, from the environment only: nothing the agent writes later changes it. The daemon
drops it from the environment its processes get. The
SDKs' ``Authorization: Basic <user>:`` names the user: the agent's own name, ``user``
(e2b's default user) or none are accepted; any other user (``root``) is refused, since
the daemon cannot become anyone else.

Not served (404): /init, /envs and /metrics — E2B's orchestrator calls them, never the
SDKs (their metrics come from the control plane; environment variables given at create
are the environment's secrets).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import datetime
import errno
import fcntl
import grp
import hmac
import json
import os
import pwd
import queue
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import termios
import threading
import time
import urllib.parse
import zlib
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

PORT = 49983
TOKEN_ENV = "DOCKYARD_ENVD_ACCESS_TOKEN"  # noqa: S105 - a variable name, not a secret
SECRETS_DIR_ENV = "DOCKYARD_SECRETS_DIR"
SECRET_FILE_MAX = 128 << 10
"""The largest secret file read into a process's environment (bytes): the kernel's limit
on one environment string (MAX_ARG_STRLEN); a larger one could not be passed anyway."""
SECRETS_TOTAL_MAX = 1 << 20
SECRET_FILES_MAX = 256
"""Files and bytes read at one process start at most (the rest is left out)."""
# The shortest access token accepted (dockyard's are 32 characters).
MIN_TOKEN = 16
# Envelope size a client may send (requests are small JSON) and chunk sizes on the wire.
MAX_RPC_BODY = 4 * 1024 * 1024
CHUNK = 64 * 1024
# Output events held per stream subscriber (at most CHUNK bytes each) before the process
# is made to wait for its reader.
QUEUED_EVENTS = 64
# Seconds a connection may stall on one read or write (a stream writes at least a
# keepalive every KEEPALIVE_DEFAULT seconds).
IO_TIMEOUT = 300
KEEPALIVE_DEFAULT = 30.0
# A WatchDir snapshot larger than this is refused (the watch polls the tree).
MAX_WATCH_ENTRIES = 20000
# Entries one ListDir answers at most.
MAX_LIST_ENTRIES = 100000
WATCH_POLL = 0.2
E2B_DEFAULT_USER = "user"
# User-defined file metadata (envd 0.6.2): extended attributes under this prefix, given on
# upload as X-Metadata-<key> headers (keys lowercased), answered in EntryInfo.metadata.
METADATA_XATTR = "user.e2b."
METADATA_HEADER = "x-metadata-"
# The kernel's bound on a whole xattr name (255 bytes), prefix included.
MAX_METADATA_KEY = 255 - len(METADATA_XATTR)
# All of one file's metadata (prefixed names + values): ext4 keeps it in one 4 KiB block.
MAX_METADATA_TOTAL = 4096
# Read back per entry at most this many keys (an agent may set more with setfattr).
MAX_METADATA_KEYS = 64
# File systems a watch refuses unless the caller allows network mounts (envd 0.6.4).
NETWORK_FILESYSTEMS = ("nfs", "nfs4", "cifs", "smb3", "smbfs", "fuse", "fuseblk")

HTTP_STATUS = {
    "canceled": 499,
    "unknown": 500,
    "invalid_argument": 400,
    "deadline_exceeded": 504,
    "not_found": 404,
    "already_exists": 409,
    "permission_denied": 403,
    "resource_exhausted": 429,
    "failed_precondition": 400,
    "aborted": 409,
    "out_of_range": 400,
    "unimplemented": 501,
    "internal": 500,
    "unavailable": 503,
    "data_loss": 500,
    "unauthenticated": 401,
}


class RpcError(Exception):
    """A Connect error: ``code`` is a Connect code name, ``message`` what to do about it."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def os_error(err: OSError, path: str) -> RpcError:
    if isinstance(err, FileNotFoundError):
        return RpcError("not_found", f"path '{path}' does not exist")
    if isinstance(err, FileExistsError):
        return RpcError("already_exists", f"path '{path}' already exists")
    if isinstance(err, PermissionError):
        return RpcError("permission_denied", f"path '{path}': permission denied for the agent user")
    if isinstance(err, NotADirectoryError):
        return RpcError("invalid_argument", f"path '{path}' is not a directory")
    if isinstance(err, IsADirectoryError):
        return RpcError("invalid_argument", f"path '{path}' is a directory")
    if err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return RpcError("resource_exhausted", f"path '{path}': not enough space ({err.strerror})")
    return RpcError("internal", f"path '{path}': {err.strerror or err}")


# --- identity and paths ------------------------------------------------------------------


class Identity:
    def __init__(self) -> None:
        entry = pwd.getpwuid(os.getuid())
        self.name = entry.pw_name
        self.home = os.environ.get("HOME") or entry.pw_dir

    def check_user(self, header: str | None) -> None:
        """Accept no user, the agent's own name or e2b's default user; refuse others."""
        if not header:
            return
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            return
        try:
            user = base64.b64decode(value.strip(), validate=True).decode().split(":", 1)[0]
        except (binascii.Error, UnicodeDecodeError):
            raise RpcError("invalid_argument", "Authorization: not base64 'user:'") from None
        if user and user not in (self.name, E2B_DEFAULT_USER):
            raise RpcError(
                "permission_denied",
                f"user '{user}' is not available: this environment runs everything as "
                f"'{self.name}' (allowed: '{self.name}', '{E2B_DEFAULT_USER}' or none)",
            )

    def resolve(self, path: str, *, what: str = "path") -> str:
        if not isinstance(path, str) or path == "":
            raise RpcError("invalid_argument", f"{what} is empty (allowed: a file path)")
        if "\x00" in path:
            raise RpcError("invalid_argument", f"{what} contains a NUL byte")
        if path == "~" or path.startswith("~/"):
            path = self.home + path[1:]
        if not path.startswith("/"):
            path = os.path.join(self.home, path)
        return os.path.normpath(path)


def rfc3339(seconds: float) -> str:
    moment = datetime.datetime.fromtimestamp(seconds, tz=datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def name_of(lookup: Callable[[int], Any], ident: int) -> str:
    try:
        return str(lookup(ident)[0])
    except KeyError:
        return str(ident)


def entry_info(path: str) -> dict[str, Any]:
    """filesystem.EntryInfo (proto3 JSON) of ``path``; a symlink is described by its
    target's type, with ``isSymlink`` and ``symlinkTarget`` set."""
    st = os.lstat(path)
    info: dict[str, Any] = {"name": os.path.basename(path) or "/", "path": path}
    shown = st
    if stat.S_ISLNK(st.st_mode):
        info["isSymlink"] = True
        target = os.readlink(path)
        info["symlinkTarget"] = os.path.normpath(os.path.join(os.path.dirname(path), target))
        try:
            shown = os.stat(path)
        except OSError:
            shown = st
    if stat.S_ISDIR(shown.st_mode):
        info["type"] = "FILE_TYPE_DIRECTORY"
    elif stat.S_ISLNK(shown.st_mode):
        info["type"] = "FILE_TYPE_SYMLINK"
    else:
        info["type"] = "FILE_TYPE_FILE"
    info["size"] = str(shown.st_size)
    info["mode"] = stat.S_IMODE(shown.st_mode)
    info["permissions"] = stat.filemode(shown.st_mode)
    info["owner"] = name_of(pwd.getpwuid, shown.st_uid)
    info["group"] = name_of(grp.getgrgid, shown.st_gid)
    info["modifiedTime"] = rfc3339(shown.st_mtime)
    metadata = read_metadata(path)
    if metadata:
        info["metadata"] = metadata
    return info


def read_metadata(path: str) -> dict[str, str]:
    """The ``user.e2b.*`` extended attributes of ``path`` ITSELF (never a symlink's
    target: a link's own attributes, and Linux gives links no user attributes), prefix
    stripped. Best effort and bounded: a file system without xattrs, an attribute the agent
    may not read, a name or value that is not printable ASCII or over the upload limits,
    and keys past :data:`MAX_METADATA_KEYS` are left out."""
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    found: dict[str, str] = {}
    for name in sorted(names):
        if not name.startswith(METADATA_XATTR) or len(found) >= MAX_METADATA_KEYS:
            continue
        key = name[len(METADATA_XATTR) :]
        try:
            raw = os.getxattr(path, name, follow_symlinks=False)
            value = raw.decode("ascii")
        except (OSError, UnicodeDecodeError):
            continue
        if key and len(raw) <= MAX_METADATA_TOTAL and printable(key) and printable(value):
            found[key] = value
    return found


def printable(text: str) -> bool:
    return all(" " <= c <= "~" for c in text)


def metadata_from(headers: Any) -> dict[str, str]:
    """The upload's ``X-Metadata-<key>`` headers as metadata: keys lowercased, the first
    value of a repeated key, an empty key dropped; refused (invalid_argument, the key named,
    never a value) unless every key and value is printable ASCII, every key fits the
    kernel's xattr name bound and all of it fits :data:`MAX_METADATA_TOTAL`."""
    metadata: dict[str, str] = {}
    for name, value in headers.items():
        lowered = name.lower()
        if not lowered.startswith(METADATA_HEADER):
            continue
        key = lowered[len(METADATA_HEADER) :]
        if key and key not in metadata:
            metadata[key] = value
    total = 0
    for key, value in metadata.items():
        shown = key[:60]
        if not printable(key) or not printable(value):
            raise RpcError(
                "invalid_argument",
                f"metadata '{shown}': key and value must be printable ASCII (0x20-0x7e)",
            )
        if len(key) > MAX_METADATA_KEY:
            raise RpcError(
                "invalid_argument",
                f"metadata key '{shown}…' is {len(key)} bytes (allowed: at most "
                f"{MAX_METADATA_KEY})",
            )
        total += len(METADATA_XATTR) + len(key) + len(value)
    if total > MAX_METADATA_TOTAL:
        raise RpcError(
            "invalid_argument",
            f"metadata totals {total} bytes with its '{METADATA_XATTR}' names (allowed: at "
            f"most {MAX_METADATA_TOTAL})",
        )
    return metadata


def write_metadata(fd: int, path: str, metadata: dict[str, str]) -> None:
    """Set ``metadata`` on the open file ``fd`` (the new file, before it replaces the
    old one: a failure leaves the old file as it was)."""
    for key, value in metadata.items():
        try:
            os.setxattr(fd, METADATA_XATTR + key, value.encode("ascii"))
        except OSError as err:
            if err.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
                raise RpcError(
                    "failed_precondition",
                    f"path '{path}': its file system stores no extended attributes, so no "
                    "metadata (allowed: write it without metadata, or under the home "
                    "directory)",
                ) from None
            if err.errno == errno.E2BIG:
                raise RpcError(
                    "invalid_argument",
                    f"path '{path}': metadata '{key[:60]}' is too large for its file system",
                ) from None
            raise


def mount_of(path: str, mountinfo: str) -> tuple[str, str]:
    """(mount point, file system type) of the mount holding ``path`` (a resolved path),
    read from the text of /proc/self/mountinfo: the longest mount point above it."""
    best = ("", "")
    for line in mountinfo.splitlines():
        fields, _, rest = line.partition(" - ")
        parts = fields.split(" ")
        if len(parts) < 5 or not rest:
            continue
        point = unescaped(parts[4])
        inside = path == point or path.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best[0]):
            best = (point, rest.split(" ", 1)[0])
    return best


def unescaped(text: str) -> str:
    """A mountinfo field with its octal escapes (``\\040`` for a space) undone."""
    out, i = [], 0
    while i < len(text):
        digits = text[i + 1 : i + 4]
        if text[i] == "\\" and len(digits) == 3 and all(c in "01234567" for c in digits):
            out.append(chr(int(digits, 8)))
            i += 4
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def network_filesystem(path: str) -> str | None:
    """The file system type when ``path`` is on a network (or FUSE) mount, else None."""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as handle:
            text = handle.read(4 * 1024 * 1024)
    except OSError:
        return None
    kind = mount_of(os.path.realpath(path), text)[1]
    if kind in NETWORK_FILESYSTEMS or kind.startswith("fuse."):
        return kind
    return None


# --- processes ---------------------------------------------------------------------------


class Proc:
    """One started process: its pipes, and the subscribers its events go to."""

    def __init__(self, popen: Any, config: dict[str, Any], tag: str | None) -> None:
        self.popen = popen
        self.pid = popen.pid
        # The terminal's master side for a PTY process; None once closed (under lock).
        self.master: int | None = getattr(popen, "master", None)
        self.config = config
        self.tag = tag
        self.lock = threading.Lock()
        self.subscribers: list[queue.Queue[dict[str, Any] | None]] = []
        self.end: dict[str, Any] | None = None

    def subscribe(self) -> queue.Queue[dict[str, Any] | None]:
        q: queue.Queue[dict[str, Any] | None] = queue.Queue(QUEUED_EVENTS)
        with self.lock:
            if self.end is not None:
                q.put({"end": self.end})
                q.put(None)
            else:
                self.subscribers.append(q)
        return q

    def unsubscribe(self, q: queue.Queue[dict[str, Any] | None]) -> None:
        with self.lock:
            if q in self.subscribers:
                self.subscribers.remove(q)

    def publish(self, event: dict[str, Any] | None) -> None:
        """Hand ``event`` to every subscriber. A full queue (a client reading slower than
        the process writes) blocks the pipe's reader, so the process blocks on its own
        output instead of the daemon buffering it without bound; a subscriber that left
        meanwhile stops counting."""
        with self.lock:
            targets = list(self.subscribers)
        for q in targets:
            while True:
                try:
                    q.put(event, timeout=0.5)
                    break
                except queue.Full:
                    with self.lock:
                        if q not in self.subscribers:
                            break


class Pump:
    """Reads one pipe of a process into its subscribers' events."""

    def __init__(self, proc: Proc, name: str, pipe: Any) -> None:
        self.proc = proc
        self.name = name
        # pipe None: the PTY's master, closed under the process's lock (input writes to it).
        fd = pipe.fileno() if pipe is not None else proc.master
        if fd is None:
            raise RpcError("failed_precondition", f"process {proc.pid} has no open terminal")
        self.fd: int = fd
        self.pipe = pipe
        self.waiting = False  # blocked in read(): everything read so far is handed on
        self.reads = 0
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while True:
            self.waiting = True
            try:
                data = os.read(self.fd, CHUNK)
            except OSError:
                break
            finally:
                self.waiting = False
                self.reads += 1
            if not data:
                break
            if self.proc.end is None:
                self.proc.publish({"data": {self.name: base64.b64encode(data).decode()}})
        if self.pipe is not None:
            self.pipe.close()
            return
        with self.proc.lock:
            if self.proc.master is not None:
                os.close(self.proc.master)
                self.proc.master = None

    def drained(self) -> bool:
        """True when the pipe is at its end, or empty with the reader waiting on it (twice
        in a row, 10 ms apart, with no read in between)."""
        if not self.thread.is_alive():
            return True
        before = self.reads
        if not (self.waiting and pending(self.fd) == 0):
            return False
        time.sleep(0.01)
        return self.waiting and self.reads == before and pending(self.fd) == 0


def pending(fd: int) -> int:
    """Bytes waiting in a pipe (FIONREAD); -1 when it cannot be told."""
    try:
        answer = fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0")
    except OSError:
        return -1
    return int(struct.unpack("i", answer)[0])


class PtyChild:
    """A process on a new terminal (os.forkpty: its own session, the terminal as its
    controlling one), shaped like the Popen fields the table uses."""

    stdin = None

    def __init__(self, argv: list[str], cwd: str, env: dict[str, str], rows: int, cols: int):
        pid, master = os.forkpty()
        if pid == 0:  # the child: only exec (or die) here
            try:
                os.chdir(cwd)
                os.execvpe(argv[0], argv, env)  # noqa: S606 - argv, no shell on purpose
            finally:
                os._exit(127)
        self.pid = pid
        self.master = master
        set_size(master, rows, cols)
        self.returncode: int | None = None

    def wait(self) -> int:
        _, status = os.waitpid(self.pid, 0)
        self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode


def set_size(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def pty_size(request: dict[str, Any]) -> tuple[int, int]:
    size = (request.get("pty") or {}).get("size") or {}
    try:
        rows, cols = int(size.get("rows", 24)), int(size.get("cols", 80))
    except (TypeError, ValueError):
        raise RpcError("invalid_argument", "pty.size rows and cols must be numbers") from None
    if not (1 <= rows <= 1000 and 1 <= cols <= 1000):
        raise RpcError(
            "invalid_argument", f"pty size {rows}x{cols} is not allowed (allowed: 1-1000 each)"
        )
    return rows, cols


def secrets_now(directory: str | None) -> dict[str, str]:
    """The secret files as the entrypoint exports them (file name = variable name, the
    whole file, trailing newlines dropped), read at each process start: a warm pool's
    claim delivers a session's secrets into the running environment after this daemon
    started. The access token is never among them (it stays this daemon's alone)."""
    found: dict[str, str] = {}
    if not directory:
        return found
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return found
    total = 0
    for name in names[:SECRET_FILES_MAX]:
        if name == TOKEN_ENV or not name.isascii() or not name.replace("_", "a").isalnum():
            continue
        if name[0].isdigit():
            continue
        try:
            # No link followed, and a FIFO planted there never blocks the start.
            descriptor = os.open(
                os.path.join(directory, name), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK
            )
        except OSError:
            continue
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            os.close(descriptor)
            continue
        with os.fdopen(descriptor, "rb") as handle:
            data = handle.read(SECRET_FILE_MAX + 1)
        if len(data) > SECRET_FILE_MAX or b"\0" in data or total + len(data) > SECRETS_TOTAL_MAX:
            continue
        total += len(data)
        found[name] = data.decode("utf-8", "replace").rstrip("\n")
    return found


class ProcessTable:
    def __init__(self, identity: Identity, env: dict[str, str]) -> None:
        self.identity = identity
        self.env = env
        self.lock = threading.Lock()
        self.procs: dict[int, Proc] = {}

    def select(self, selector: Any) -> Proc:
        if not isinstance(selector, dict) or not selector:
            raise RpcError("invalid_argument", "process selector is missing (allowed: pid or tag)")
        with self.lock:
            if "pid" in selector:
                try:
                    pid = int(selector["pid"])
                except (TypeError, ValueError):
                    raise RpcError("invalid_argument", "process pid is not a number") from None
                proc = self.procs.get(pid)
                if proc is None:
                    raise RpcError("not_found", f"process with pid {pid} not found")
                return proc
            if "tag" in selector:
                tag = str(selector["tag"])
                for proc in self.procs.values():
                    if proc.tag == tag:
                        return proc
                raise RpcError("not_found", f"process with tag '{tag}' not found")
        raise RpcError("invalid_argument", "process selector names neither pid nor tag")

    def start(self, request: dict[str, Any]) -> Proc:
        config = request.get("process")
        if not isinstance(config, dict) or not config.get("cmd"):
            raise RpcError("invalid_argument", "process.cmd is missing (allowed: a program)")
        args = config.get("args") or []
        envs = config.get("envs") or {}
        if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
            raise RpcError("invalid_argument", "process.args must be a list of strings")
        if not isinstance(envs, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in envs.items()
        ):
            raise RpcError("invalid_argument", "process.envs must map strings to strings")
        cwd = self.identity.resolve(config["cwd"], what="cwd") if config.get("cwd") else None
        cwd = cwd or self.identity.home
        if not os.path.isdir(cwd):
            raise RpcError("invalid_argument", f"cwd '{cwd}' is not an existing directory")
        env = {**self.env, **secrets_now(self.env.get(SECRETS_DIR_ENV)), **envs}
        tag = request.get("tag")
        if request.get("pty"):
            rows, cols = pty_size(request)
            if not shutil.which(str(config["cmd"]), path=env.get("PATH")):
                raise RpcError("invalid_argument", f"cannot start '{config['cmd']}': not found")
            try:
                child: Any = PtyChild([str(config["cmd"]), *args], cwd, env, rows, cols)
            except OSError as err:
                raise RpcError("internal", f"cannot open a terminal: {err}") from None
            record = {"cmd": config["cmd"], "args": args, "envs": envs, "cwd": cwd}
            proc = Proc(child, record, str(tag) if tag is not None else None)
            with self.lock:
                self.procs[proc.pid] = proc
            return proc
        try:
            popen = subprocess.Popen(
                [str(config["cmd"]), *args],
                stdin=subprocess.PIPE if request.get("stdin") else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=cwd,
                env=env,
                # Its own process group: a signal reaches the command's children too.
                start_new_session=True,
            )
        except OSError as err:
            raise RpcError("invalid_argument", f"cannot start '{config['cmd']}': {err}") from None
        record = {"cmd": config["cmd"], "args": args, "envs": envs, "cwd": cwd}
        proc = Proc(popen, record, str(tag) if tag is not None else None)
        with self.lock:
            self.procs[proc.pid] = proc
        return proc

    def run(self, proc: Proc) -> None:
        """Pump both pipes into events; once the process exited and what it wrote is read,
        the end event. A child left running in the background that keeps the pipes open
        (``server &``) does not hold the end back; what it writes later is dropped."""
        if proc.master is not None:
            pumps = [Pump(proc, "pty", None)]
        else:
            pumps = [
                Pump(proc, name, pipe)
                for name, pipe in (("stdout", proc.popen.stdout), ("stderr", proc.popen.stderr))
            ]
        for pump in pumps:
            pump.thread.start()
        code = proc.popen.wait()
        while not all(pump.drained() for pump in pumps):
            time.sleep(0.01)
        if code < 0:
            # What envd (Go) reports: "signal: killed", "signal: terminated".
            name = (signal.strsignal(-code) or f"signal {-code}").lower()
            end = {"exitCode": -1, "exited": False, "status": f"signal: {name}"}
            end["error"] = f"signal: {name}"
        else:
            end = {"exitCode": code, "exited": True, "status": f"exit status {code}"}
        with proc.lock:
            proc.end = end
        proc.publish({"end": end})
        proc.publish(None)
        with proc.lock:
            proc.subscribers.clear()
        if proc.popen.stdin is not None:
            with contextlib.suppress(OSError):
                proc.popen.stdin.close()
        with self.lock:
            self.procs.pop(proc.pid, None)

    def list(self) -> list[dict[str, Any]]:
        with self.lock:
            procs = list(self.procs.values())
        out = []
        for proc in procs:
            item: dict[str, Any] = {"config": proc.config, "pid": proc.pid}
            if proc.tag is not None:
                item["tag"] = proc.tag
            out.append(item)
        return out

    def send_input(self, request: dict[str, Any]) -> None:
        proc = self.select(request.get("process"))
        data = request.get("input") or {}
        try:
            chunk = base64.b64decode(data.get("pty", data.get("stdin", "")), validate=True)
        except (binascii.Error, TypeError):
            raise RpcError("invalid_argument", "input is not base64") from None
        if proc.popen.stdin is None and getattr(proc.popen, "master", None) is not None:
            with proc.lock:
                if proc.master is None:
                    raise RpcError("failed_precondition", f"terminal of process {proc.pid} closed")
                view = memoryview(chunk)
                while view:
                    try:
                        view = view[os.write(proc.master, view) :]
                    except BlockingIOError:
                        time.sleep(0.01)
            return
        if "pty" in data:
            raise RpcError("failed_precondition", f"process {proc.pid} has no terminal")
        stdin = proc.popen.stdin
        if stdin is None or stdin.closed:
            raise RpcError(
                "failed_precondition",
                f"process {proc.pid} has no open stdin (start it with stdin enabled)",
            )
        try:
            stdin.write(chunk)
            stdin.flush()
        except (BrokenPipeError, ValueError):
            raise RpcError("failed_precondition", f"process {proc.pid} closed its stdin") from None

    def close_stdin(self, request: dict[str, Any]) -> None:
        proc = self.select(request.get("process"))
        if getattr(proc.popen, "master", None) is not None:
            raise RpcError(
                "failed_precondition",
                f"process {proc.pid} runs on a terminal: send Ctrl+D (0x04) instead",
            )
        stdin = proc.popen.stdin
        if stdin is not None and not stdin.closed:
            with contextlib.suppress(BrokenPipeError):
                stdin.close()

    def send_signal(self, request: dict[str, Any]) -> None:
        proc = self.select(request.get("process"))
        wanted = request.get("signal")
        numbers = {"SIGNAL_SIGKILL": 9, "SIGNAL_SIGTERM": 15, 9: 9, 15: 15}
        number = numbers.get(wanted)  # type: ignore[arg-type]
        if number is None:
            raise RpcError(
                "invalid_argument",
                f"signal {wanted!r} is not supported (allowed: SIGNAL_SIGKILL, SIGNAL_SIGTERM)",
            )
        try:
            os.killpg(proc.pid, number)
        except ProcessLookupError:
            raise RpcError("not_found", f"process with pid {proc.pid} not found") from None
        except PermissionError:
            os.kill(proc.pid, number)


# --- filesystem watches ------------------------------------------------------------------


def snapshot(root: str, recursive: bool) -> dict[str, tuple[int, int, int]]:
    seen: dict[str, tuple[int, int, int]] = {}
    stack = [""]
    while stack:
        rel = stack.pop()
        try:
            with os.scandir(os.path.join(root, rel) if rel else root) as entries:
                for entry in entries:
                    name = os.path.join(rel, entry.name) if rel else entry.name
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    seen[name] = (st.st_mtime_ns, st.st_size, st.st_mode)
                    if len(seen) > MAX_WATCH_ENTRIES:
                        raise RpcError(
                            "resource_exhausted",
                            f"'{root}' holds more than {MAX_WATCH_ENTRIES} entries to watch "
                            "(watch a smaller directory)",
                        )
                    if recursive and entry.is_dir(follow_symlinks=False):
                        stack.append(name)
        except FileNotFoundError:
            if not rel:
                raise
        except (NotADirectoryError, PermissionError):
            if not rel:
                raise
    return seen


def diff(
    old: dict[str, tuple[int, int, int]], new: dict[str, tuple[int, int, int]]
) -> list[dict[str, Any]]:
    events = []
    for name in sorted(new.keys() - old.keys()):
        events.append({"name": name, "type": "EVENT_TYPE_CREATE"})
    for name in sorted(new.keys() & old.keys()):
        before, after = old[name], new[name]
        if before[:2] != after[:2]:
            events.append({"name": name, "type": "EVENT_TYPE_WRITE"})
        elif before[2] != after[2]:
            events.append({"name": name, "type": "EVENT_TYPE_CHMOD"})
    for name in sorted(old.keys() - new.keys()):
        events.append({"name": name, "type": "EVENT_TYPE_REMOVE"})
    return events


class Watcher:
    """Polls a directory tree; events are diffs between successive snapshots."""

    def __init__(
        self, root: str, recursive: bool, include_entry: bool, network: bool = False
    ) -> None:
        if not os.path.isdir(root):
            if not os.path.exists(root):
                raise RpcError("not_found", f"path '{root}' does not exist")
            raise RpcError("invalid_argument", f"path '{root}' is not a directory")
        kind = None if network else network_filesystem(root)
        if kind is not None:
            raise RpcError(
                "invalid_argument",
                f"cannot watch path on network filesystem: '{root}' is on {kind} (allowed: "
                "a local directory, or set allow_network_mounts; events there may be late)",
            )
        self.root = root
        self.recursive = recursive
        self.include_entry = include_entry
        try:
            self.state = snapshot(root, recursive)
        except OSError as err:
            raise os_error(err, root) from None
        self.lock = threading.Lock()
        self.pending: list[dict[str, Any]] = []
        self.stopped = threading.Event()

    def poll(self) -> list[dict[str, Any]]:
        with self.lock:
            try:
                new = snapshot(self.root, self.recursive)
            except (OSError, RpcError):
                new = {}
            events = diff(self.state, new)
            self.state = new
        if self.include_entry:
            for event in events:
                if event["type"] != "EVENT_TYPE_REMOVE":
                    with contextlib.suppress(OSError):
                        event["entry"] = entry_info(os.path.join(self.root, event["name"]))
        return events

    def run_in_background(self) -> None:
        """For CreateWatcher: poll on a thread so a file created and removed between two
        GetWatcherEvents calls still shows both events (at most MAX_WATCH_ENTRIES kept)."""

        def loop() -> None:
            while not self.stopped.wait(WATCH_POLL):
                found = self.poll()
                with self.lock:
                    room = MAX_WATCH_ENTRIES - len(self.pending)
                    self.pending.extend(found[: max(room, 0)])

        threading.Thread(target=loop, daemon=True).start()

    def drain(self) -> list[dict[str, Any]]:
        with self.lock:
            events, self.pending = self.pending, []
        return events


# --- HTTP --------------------------------------------------------------------------------


def token_problem(token: str | None) -> str | None:
    """Why ``token`` cannot guard the daemon (never its value), or None when it can."""
    if not token:
        return "missing"
    if len(token) < MIN_TOKEN:
        return f"{len(token)} characters"
    if not all("!" <= c <= "~" for c in token):
        return "has characters other than visible ASCII"
    return None


class Daemon:
    def __init__(self, token: str) -> None:
        problem = token_problem(token)
        if problem is not None:
            raise ValueError(f"{TOKEN_ENV}: {problem}")
        self.identity = Identity()
        env = dict(os.environ)
        env.pop(TOKEN_ENV, None)
        env.setdefault("HOME", self.identity.home)
        env.setdefault("USER", self.identity.name)
        self.token = token
        self.procs = ProcessTable(self.identity, env)
        self.watchers: dict[str, Watcher] = {}
        self.watch_lock = threading.Lock()


class BodyReader:
    """The request body, whether sent with Content-Length or chunked."""

    def __init__(self, handler: BaseHTTPRequestHandler) -> None:
        self.rfile = handler.rfile
        self.chunked = "chunked" in handler.headers.get("Transfer-Encoding", "").lower()
        length = handler.headers.get("Content-Length")
        self.left = int(length) if length and not self.chunked else 0
        self.chunk_left = 0
        self.done = not self.chunked and self.left == 0

    def read(self, size: int = CHUNK) -> bytes:
        if self.done:
            return b""
        if not self.chunked:
            data = self.rfile.read(min(size, self.left))
            if not data:
                raise ConnectionError("request body ended early")
            self.left -= len(data)
            self.done = self.left == 0
            return data
        if self.chunk_left == 0:
            line = self.rfile.readline(1024)
            if not line:
                raise ConnectionError("request body ended early")
            self.chunk_left = int(line.split(b";", 1)[0].strip(), 16)
            if self.chunk_left == 0:
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass
                self.done = True
                return b""
        data = self.rfile.read(min(size, self.chunk_left))
        if not data:
            raise ConnectionError("request body ended early")
        self.chunk_left -= len(data)
        if self.chunk_left == 0:
            self.rfile.readline(16)
        return data

    def read_all(self, limit: int) -> bytes:
        parts: list[bytes] = []
        total = 0
        while True:
            data = self.read()
            if not data:
                return b"".join(parts)
            total += len(data)
            if total > limit:
                raise RpcError("resource_exhausted", f"request body above {limit} bytes")
            parts.append(data)

    def drain(self) -> None:
        try:
            while self.read():
                pass
        except (ConnectionError, ValueError):
            pass


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = IO_TIMEOUT
    server_version = "dockyard-envd"
    daemon: Daemon  # set on the class by serve()

    def setup(self) -> None:
        super().setup()
        # Stream events are small and must go out at once.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def handle_one_request(self) -> None:
        # A client that goes away mid-answer, or sends a malformed chunked body, ends its
        # connection quietly instead of a traceback in the environment's log.
        try:
            super().handle_one_request()
        except (ConnectionError, ValueError):
            self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        return

    # -- plumbing --
    def send_json(self, status: int, body: Any, content_type: str = "application/json") -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def http_error(self, status: int, message: str) -> None:
        self.send_json(status, {"code": status, "message": message})

    def authorized(self) -> bool:
        # Fail closed: no usable token (never the case once main() started) denies all.
        token = getattr(getattr(self, "daemon", None), "token", None)
        if not isinstance(token, str) or token_problem(token) is not None:
            return False
        given = self.headers.get("X-Access-Token")
        if not given:
            return False
        return hmac.compare_digest(given.encode(errors="replace"), token.encode())

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        if self.headers.get("Transfer-Encoding") or self.headers.get("Content-Length", "0") != "0":
            # A GET's body is never read: its bytes must not be parsed as the next request
            # on this connection, so the connection ends after the answer.
            self.close_connection = True
        if url.path == "/health":
            self.send_response(204)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if not self.authorized():
            self.http_error(401, "X-Access-Token is missing or wrong")
            return
        if url.path == "/files":
            self.download(urllib.parse.parse_qs(url.query))
            return
        self.http_error(404, f"no route GET {url.path} (allowed: /files, /health)")

    def do_POST(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        body = BodyReader(self)
        if not self.authorized():
            body.drain()
            if url.path == "/files":
                self.http_error(401, "X-Access-Token is missing or wrong")
            else:
                self.rpc_error_unary(
                    RpcError("unauthenticated", "X-Access-Token is missing or wrong")
                )
            return
        if url.path == "/files":
            self.upload(urllib.parse.parse_qs(url.query), body)
            return
        route = RPC.get(url.path)
        if route is None:
            body.drain()
            self.rpc_error_unary(RpcError("unimplemented", f"no procedure {url.path}"))
            return
        kind, function = route
        if kind == "client":
            self.client_stream(function, body)
            return
        try:
            self.daemon.identity.check_user(self.headers.get("Authorization"))
            if kind == "unary":
                raw = body.read_all(MAX_RPC_BODY)
                request = json.loads(raw or b"{}")
            else:
                request = self.read_envelope(body)
            if not isinstance(request, dict):
                raise RpcError("invalid_argument", "request body is not a JSON object")
        except json.JSONDecodeError:
            self.rpc_error(kind, RpcError("invalid_argument", "request body is not JSON"))
            return
        except RpcError as err:
            body.drain()
            self.rpc_error(kind, err)
            return
        if kind == "unary":
            try:
                result = function(self.daemon, request)
            except RpcError as err:
                self.rpc_error_unary(err)
                return
            except Exception as err:  # a bug must answer, not hang the client
                self.rpc_error_unary(RpcError("internal", f"{type(err).__name__}: {err}"))
                return
            self.send_json(200, result)
            return
        self.stream(function, request)

    def rpc_error(self, kind: str, err: RpcError) -> None:
        if kind == "unary":
            self.rpc_error_unary(err)
        else:
            self.start_stream()
            self.end_stream(err)

    def rpc_error_unary(self, err: RpcError) -> None:
        self.send_json(HTTP_STATUS.get(err.code, 500), {"code": err.code, "message": err.message})

    @staticmethod
    def read_envelope(body: BodyReader) -> Any:
        raw = body.read_all(MAX_RPC_BODY)
        if len(raw) < 5:
            return json.loads(raw or b"{}") if raw[:1] == b"{" else {}
        flags, length = struct.unpack(">BI", raw[:5])
        if flags & 0x01:
            raise RpcError("unimplemented", "compressed messages are not supported")
        return json.loads(raw[5 : 5 + length] or b"{}")

    # -- client streams --
    def client_stream(self, function: Callable[..., Any], body: BodyReader) -> None:
        """A client stream: each enveloped message handed to ``function`` as it arrives
        (so input keeps its order and timing); one answer once the client ends."""
        err: RpcError | None = None
        try:
            self.daemon.identity.check_user(self.headers.get("Authorization"))
            function(self.daemon, envelopes(body))
        except RpcError as failed:
            err = failed
        except json.JSONDecodeError:
            err = RpcError("invalid_argument", "a message is not JSON")
        except (ConnectionError, ValueError):
            self.close_connection = True
            return
        except Exception as failed:  # a bug must answer, not hang the client
            err = RpcError("internal", f"{type(failed).__name__}: {failed}")
        body.drain()
        self.start_stream()
        if err is None:
            self.send_message({})
        self.end_stream(err)

    # -- server streams --
    def start_stream(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/connect+json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def write_chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def send_message(self, message: Any, flags: int = 0) -> None:
        data = json.dumps(message).encode()
        self.write_chunk(struct.pack(">BI", flags, len(data)) + data)

    def end_stream(self, err: RpcError | None = None) -> None:
        end: dict[str, Any] = {}
        if err is not None:
            end["error"] = {"code": err.code, "message": err.message}
        self.send_message(end, flags=0x02)
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def keepalive_interval(self) -> float:
        try:
            value = float(self.headers.get("Keepalive-Ping-Interval", KEEPALIVE_DEFAULT))
        except ValueError:
            value = KEEPALIVE_DEFAULT
        return min(max(value, 1.0), KEEPALIVE_DEFAULT)

    def stream(self, function: Callable[..., Iterator[Any]], request: dict[str, Any]) -> None:
        try:
            messages = function(self.daemon, request, self.keepalive_interval())
            first = next(messages)
        except RpcError as err:
            self.start_stream()
            self.end_stream(err)
            return
        except StopIteration:
            self.start_stream()
            self.end_stream()
            return
        except Exception as err:  # a bug must answer, not hang the client
            self.start_stream()
            self.end_stream(RpcError("internal", f"{type(err).__name__}: {err}"))
            return
        self.start_stream()
        try:
            self.send_message(first)
            for message in messages:
                self.send_message(message)
        except RpcError as err:
            self.end_stream(err)
            return
        except OSError:
            # The client went away: close the generator so it unsubscribes.
            close = getattr(messages, "close", None)
            if close is not None:
                close()
            self.close_connection = True
            return
        except Exception as err:  # a bug must end the stream with an error, not cut it
            self.end_stream(RpcError("internal", f"{type(err).__name__}: {err}"))
            return
        self.end_stream()

    # -- /files --
    def download(self, query: dict[str, list[str]]) -> None:
        identity = self.daemon.identity
        try:
            identity.check_user(self.user_from_query(query))
            path = identity.resolve(query.get("path", [""])[0])
            # Non-blocking open: a FIFO must not hold this thread until a writer comes.
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                kind = "a directory" if stat.S_ISDIR(os.fstat(fd).st_mode) else "not a regular file"
                os.close(fd)
                raise RpcError("invalid_argument", f"path '{path}' is {kind} (allowed: a file)")
            os.set_blocking(fd, True)
            handle = os.fdopen(fd, "rb")
        except RpcError as err:
            self.http_error(HTTP_STATUS.get(err.code, 400), err.message)
            return
        except OSError as err:
            mapped = os_error(err, query.get("path", [""])[0])
            self.http_error(HTTP_STATUS.get(mapped.code, 500), mapped.message)
            return
        with handle:
            size = os.fstat(handle.fileno()).st_size
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(size))
            quoted = urllib.parse.quote(os.path.basename(path))
            self.send_header("Content-Disposition", f"attachment; filename*=UTF-8''{quoted}")
            self.end_headers()
            left = size
            while left > 0:
                data = handle.read(min(CHUNK * 4, left))
                if not data:
                    # Shrunk while being sent: the client must see a short body, not a
                    # next response glued to it.
                    self.close_connection = True
                    break
                self.wfile.write(data)
                left -= len(data)

    @staticmethod
    def user_from_query(query: dict[str, list[str]]) -> str | None:
        user = query.get("username", [""])[0]
        if not user:
            return None
        return "Basic " + base64.b64encode(f"{user}:".encode()).decode()

    def upload(self, query: dict[str, list[str]], body: BodyReader) -> None:
        identity = self.daemon.identity
        content_type = self.headers.get("Content-Type", "")
        gzip = self.headers.get("Content-Encoding", "").lower() == "gzip"
        written: list[dict[str, Any]] = []
        try:
            identity.check_user(self.user_from_query(query))
            metadata = metadata_from(self.headers)
            if content_type.startswith("multipart/form-data"):
                boundary = ""
                for param in content_type.split(";")[1:]:
                    key, _, value = param.strip().partition("=")
                    if key.lower() == "boundary":
                        boundary = value.strip('"')
                if not boundary:
                    raise RpcError("invalid_argument", "multipart upload without a boundary")
                default = query.get("path", [""])[0]
                for name, chunks in multipart(body, boundary.encode()):
                    path = identity.resolve(name or default)
                    written.append(write_file(path, chunks, metadata))
            else:
                path = identity.resolve(query.get("path", [""])[0])
                source: Iterator[bytes] = iter(body.read, b"")
                if gzip:
                    source = gunzip(source)
                written.append(write_file(path, source, metadata))
        except RpcError as err:
            body.drain()
            self.http_error(HTTP_STATUS.get(err.code, 400), err.message)
            return
        except OSError as err:
            body.drain()
            if isinstance(err, ConnectionError):
                self.close_connection = True
                return
            mapped = os_error(err, query.get("path", [""])[0])
            # 507 is what the SDKs read as "not enough space" (429 would mean rate limited).
            status = (
                507 if mapped.code == "resource_exhausted" else HTTP_STATUS.get(mapped.code, 500)
            )
            self.http_error(status, mapped.message)
            return
        except zlib.error:
            body.drain()
            self.http_error(400, "Content-Encoding gzip: the body is not valid gzip")
            return
        if not written:
            self.http_error(400, "upload holds no file (allowed: one or more 'file' parts)")
            return
        self.send_json(200, written)


def read_exact(body: BodyReader, size: int) -> bytes:
    parts, left = [], size
    while left:
        data = body.read(min(left, CHUNK))
        if not data:
            raise ConnectionError("request body ended inside a message")
        parts.append(data)
        left -= len(data)
    return b"".join(parts)


def envelopes(body: BodyReader) -> Iterator[dict[str, Any]]:
    """The enveloped JSON messages of a client stream, read as they arrive."""
    while True:
        head = body.read(5)
        if not head:
            return
        if len(head) < 5:
            head += read_exact(body, 5 - len(head))
        flags, length = struct.unpack(">BI", head)
        if flags & 0x01:
            raise RpcError("unimplemented", "compressed messages are not supported")
        if length > MAX_RPC_BODY:
            raise RpcError("resource_exhausted", f"a message above {MAX_RPC_BODY} bytes")
        message = json.loads(read_exact(body, length) or b"{}")
        if flags & 0x02:  # end of stream
            return
        if not isinstance(message, dict):
            raise RpcError("invalid_argument", "a message is not a JSON object")
        yield message


def gunzip(source: Iterator[bytes]) -> Iterator[bytes]:
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    for data in source:
        out = inflater.decompress(data)
        if out:
            yield out
    tail = inflater.flush()
    if tail:
        yield tail


def write_file(
    path: str, chunks: Iterator[bytes], metadata: dict[str, str] | None = None
) -> dict[str, Any]:
    """Write ``chunks`` to ``path`` (parents created), replacing it only once complete,
    with exactly ``metadata`` (a new file: an overwritten file's old metadata is gone)."""
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    if os.path.isdir(path):
        raise RpcError("invalid_argument", f"path '{path}' is a directory (allowed: a file)")
    temp = os.path.join(
        parent, f".{os.path.basename(path)}.envd-{os.getpid()}-{threading.get_ident()}"
    )
    try:
        with open(temp, "wb") as out:
            for data in chunks:
                out.write(data)
            write_metadata(out.fileno(), path, metadata or {})
        if os.path.exists(path):
            shutil.copymode(path, temp)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    written: dict[str, Any] = {"name": os.path.basename(path), "type": "file", "path": path}
    if metadata:
        written["metadata"] = dict(metadata)
    return written


def multipart(body: BodyReader, boundary: bytes) -> Iterator[tuple[str, Iterator[bytes]]]:
    """Parts of a multipart/form-data body as (filename, chunks), streamed: each part's
    chunks must be consumed before the next part is asked for."""
    delimiter = b"\r\n--" + boundary
    buffer = b"\r\n"
    ended = False

    def fill() -> bool:
        nonlocal buffer, ended
        if ended:
            return False
        data = body.read()
        if not data:
            ended = True
            return False
        buffer += data
        return True

    # Skip the preamble up to the first delimiter.
    while True:
        at = buffer.find(delimiter)
        if at >= 0:
            buffer = buffer[at + len(delimiter) :]
            break
        buffer = buffer[-len(delimiter) :]
        if not fill():
            raise RpcError("invalid_argument", "multipart body has no part")
    while True:
        while len(buffer) < 2 and fill():
            pass
        if buffer.startswith(b"--"):
            body.drain()
            return
        while b"\r\n\r\n" not in buffer:
            if len(buffer) > 16384 or not fill():
                raise RpcError("invalid_argument", "multipart part headers are malformed")
        head, buffer = buffer.split(b"\r\n\r\n", 1)
        filename = ""
        for line in head.split(b"\r\n"):
            key, _, value = line.decode("utf-8", "replace").partition(":")
            if key.strip().lower() == "content-disposition":
                filename = disposition_filename(value)

        def part() -> Iterator[bytes]:
            nonlocal buffer
            while True:
                at = buffer.find(delimiter)
                if at >= 0:
                    data, buffer = buffer[:at], buffer[at + len(delimiter) :]
                    if data:
                        yield data
                    return
                keep = len(delimiter) - 1
                if len(buffer) > keep:
                    data, buffer = buffer[:-keep], buffer[-keep:]
                    yield data
                if not fill():
                    raise RpcError("invalid_argument", "multipart body ended inside a part")

        chunks = part()
        yield filename, chunks
        for _ in chunks:  # whatever the consumer left unread
            pass


def disposition_filename(value: str) -> str:
    for param in value.split(";")[1:]:
        key, _, raw = param.strip().partition("=")
        key = key.lower()
        if key == "filename*" and "''" in raw:
            return urllib.parse.unquote(raw.split("''", 1)[1])
        if key == "filename":
            raw = raw.strip()
            if raw.startswith('"') and raw.endswith('"'):
                raw = raw[1:-1].replace('\\"', '"').replace("\\\\", "\\")
            return raw
    return ""


# --- procedures --------------------------------------------------------------------------


def process_events(
    daemon: Daemon, proc: Proc, interval: float, sub: queue.Queue[dict[str, Any] | None]
) -> Iterator[Any]:
    try:
        yield {"event": {"start": {"pid": proc.pid}}}
        while True:
            try:
                event = sub.get(timeout=interval)
            except queue.Empty:
                yield {"event": {"keepalive": {}}}
                continue
            if event is None:
                return
            yield {"event": event}
    finally:
        proc.unsubscribe(sub)


def p_start(daemon: Daemon, request: dict[str, Any], interval: float) -> Iterator[Any]:
    proc = daemon.procs.start(request)
    sub = proc.subscribe()
    threading.Thread(target=daemon.procs.run, args=(proc,), daemon=True).start()
    return process_events(daemon, proc, interval, sub)


def p_connect(daemon: Daemon, request: dict[str, Any], interval: float) -> Iterator[Any]:
    proc = daemon.procs.select(request.get("process"))
    return process_events(daemon, proc, interval, proc.subscribe())


def p_list(daemon: Daemon, request: dict[str, Any]) -> Any:
    return {"processes": daemon.procs.list()}


def p_send_input(daemon: Daemon, request: dict[str, Any]) -> Any:
    daemon.procs.send_input(request)
    return {}


def p_send_signal(daemon: Daemon, request: dict[str, Any]) -> Any:
    daemon.procs.send_signal(request)
    return {}


def p_close_stdin(daemon: Daemon, request: dict[str, Any]) -> Any:
    daemon.procs.close_stdin(request)
    return {}


def p_stream_input(daemon: Daemon, messages: Iterator[dict[str, Any]]) -> None:
    """StreamInput: a start message naming the process, then input in order."""
    selector: Any = None
    for message in messages:
        if "start" in message:
            selector = (message["start"] or {}).get("process")
            daemon.procs.select(selector)
        elif "data" in message:
            if selector is None:
                raise RpcError("invalid_argument", "input came before the start message")
            daemon.procs.send_input(
                {"process": selector, "input": (message["data"] or {}).get("input")}
            )


def p_update(daemon: Daemon, request: dict[str, Any]) -> Any:
    proc = daemon.procs.select(request.get("process"))
    if not request.get("pty"):
        return {}
    rows, cols = pty_size(request)
    with proc.lock:
        if proc.master is None:
            raise RpcError("failed_precondition", f"process {proc.pid} has no open terminal")
        set_size(proc.master, rows, cols)
    return {}


def f_stat(daemon: Daemon, request: dict[str, Any]) -> Any:
    path = daemon.identity.resolve(request.get("path", ""))
    try:
        return {"entry": entry_info(path)}
    except OSError as err:
        raise os_error(err, path) from None


def f_list_dir(daemon: Daemon, request: dict[str, Any]) -> Any:
    path = daemon.identity.resolve(request.get("path", ""))
    depth = int(request.get("depth") or 1)
    if depth < 1:
        raise RpcError("invalid_argument", f"depth {depth} is not allowed (allowed: 1 or more)")
    if not os.path.isdir(path):
        if not os.path.lexists(path):
            raise RpcError("not_found", f"path '{path}' does not exist")
        raise RpcError("invalid_argument", f"path '{path}' is not a directory")
    entries = []
    level = [(path, 1)]
    while level:
        directory, at = level.pop()
        try:
            names = sorted(os.listdir(directory))
        except OSError as err:
            if directory == path:
                raise os_error(err, path) from None
            continue
        for name in names:
            full = os.path.join(directory, name)
            try:
                info = entry_info(full)
            except OSError:
                continue
            entries.append(info)
            if len(entries) > MAX_LIST_ENTRIES:
                raise RpcError(
                    "resource_exhausted",
                    f"'{path}' holds more than {MAX_LIST_ENTRIES} entries to depth {depth} "
                    "(list a smaller depth or directory)",
                )
            if at < depth and info["type"] == "FILE_TYPE_DIRECTORY" and not info.get("isSymlink"):
                level.append((full, at + 1))
    return {"entries": entries}


def f_make_dir(daemon: Daemon, request: dict[str, Any]) -> Any:
    path = daemon.identity.resolve(request.get("path", ""))
    if os.path.lexists(path):
        raise RpcError("already_exists", f"path '{path}' already exists")
    try:
        os.makedirs(path)
        return {"entry": entry_info(path)}
    except OSError as err:
        raise os_error(err, path) from None


def f_move(daemon: Daemon, request: dict[str, Any]) -> Any:
    source = daemon.identity.resolve(request.get("source", ""), what="source")
    destination = daemon.identity.resolve(request.get("destination", ""), what="destination")
    if not os.path.lexists(source):
        raise RpcError("not_found", f"path '{source}' does not exist")
    try:
        os.makedirs(os.path.dirname(destination), exist_ok=True)
        os.rename(source, destination)
        return {"entry": entry_info(destination)}
    except OSError as err:
        raise os_error(err, destination) from None


def f_remove(daemon: Daemon, request: dict[str, Any]) -> Any:
    """Remove a file or a whole directory; a path that is not there is already removed
    (E2B's daemon answers it the same: the SDKs' own suite removes missing paths)."""
    path = daemon.identity.resolve(request.get("path", ""))
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)
    except FileNotFoundError:
        return {}
    except OSError as err:
        raise os_error(err, path) from None
    return {}


def new_watcher(daemon: Daemon, request: dict[str, Any]) -> Watcher:
    path = daemon.identity.resolve(request.get("path", ""))
    return Watcher(
        path,
        bool(request.get("recursive")),
        bool(request.get("includeEntry")),
        bool(request.get("allowNetworkMounts")),
    )


def f_watch_dir(daemon: Daemon, request: dict[str, Any], interval: float) -> Iterator[Any]:
    watcher = new_watcher(daemon, request)

    def events() -> Iterator[Any]:
        yield {"start": {}}
        quiet_since = time.monotonic()
        while True:
            time.sleep(WATCH_POLL)
            found = watcher.poll()
            for event in found:
                yield {"filesystem": event}
            if found:
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since >= interval:
                quiet_since = time.monotonic()
                yield {"keepalive": {}}

    return events()


def f_create_watcher(daemon: Daemon, request: dict[str, Any]) -> Any:
    watcher = new_watcher(daemon, request)
    watcher_id = base64.urlsafe_b64encode(os.urandom(12)).decode()
    with daemon.watch_lock:
        if len(daemon.watchers) >= 64:
            raise RpcError("resource_exhausted", "64 watchers exist already (remove one first)")
        daemon.watchers[watcher_id] = watcher
    watcher.run_in_background()
    return {"watcherId": watcher_id}


def get_watcher(daemon: Daemon, request: dict[str, Any]) -> Watcher:
    watcher_id = str(request.get("watcherId", ""))
    with daemon.watch_lock:
        watcher = daemon.watchers.get(watcher_id)
    if watcher is None:
        raise RpcError("not_found", f"watcher '{watcher_id}' not found")
    return watcher


def f_get_watcher_events(daemon: Daemon, request: dict[str, Any]) -> Any:
    return {"events": get_watcher(daemon, request).drain()}


def f_remove_watcher(daemon: Daemon, request: dict[str, Any]) -> Any:
    get_watcher(daemon, request).stopped.set()
    with daemon.watch_lock:
        daemon.watchers.pop(str(request.get("watcherId", "")), None)
    return {}


RPC: dict[str, tuple[str, Callable[..., Any]]] = {
    "/process.Process/Start": ("stream", p_start),
    "/process.Process/Connect": ("stream", p_connect),
    "/process.Process/List": ("unary", p_list),
    "/process.Process/SendInput": ("unary", p_send_input),
    "/process.Process/SendSignal": ("unary", p_send_signal),
    "/process.Process/CloseStdin": ("unary", p_close_stdin),
    "/process.Process/Update": ("unary", p_update),
    "/process.Process/StreamInput": ("client", p_stream_input),
    "/filesystem.Filesystem/Stat": ("unary", f_stat),
    "/filesystem.Filesystem/ListDir": ("unary", f_list_dir),
    "/filesystem.Filesystem/MakeDir": ("unary", f_make_dir),
    "/filesystem.Filesystem/Move": ("unary", f_move),
    "/filesystem.Filesystem/Remove": ("unary", f_remove),
    "/filesystem.Filesystem/WatchDir": ("stream", f_watch_dir),
    "/filesystem.Filesystem/CreateWatcher": ("unary", f_create_watcher),
    "/filesystem.Filesystem/GetWatcherEvents": ("unary", f_get_watcher_events),
    "/filesystem.Filesystem/RemoveWatcher": ("unary", f_remove_watcher),
}


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64


def main(argv: list[str]) -> int:
    host, port = "0.0.0.0", PORT  # noqa: S104 - reached through the environment's own network
    for arg in argv:
        if arg.startswith("--host="):
            host = arg.split("=", 1)[1]
        elif arg.startswith("--port="):
            port = int(arg.split("=", 1)[1])
        else:
            print(
                f"ERROR: unknown argument '{arg}' (allowed: --host=ADDR --port=N)", file=sys.stderr
            )
            return 2
    if os.geteuid() == 0:
        print("ERROR: envd must not run as root (run it as the agent user)", file=sys.stderr)
        return 1
    token = os.environ.get(TOKEN_ENV)
    problem = token_problem(token)
    if token is None or problem is not None:
        print(
            f"ERROR: {TOKEN_ENV}: {problem} (allowed: at least {MIN_TOKEN} visible ASCII"
            " characters; envd never serves unauthenticated)",
            file=sys.stderr,
        )
        return 1
    Handler.daemon = Daemon(token)
    try:
        server = Server((host, port), Handler)
    except OSError as err:
        print(f"ERROR: envd cannot listen on {host}:{port}: {err}", file=sys.stderr)
        return 1
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with contextlib.suppress(KeyboardInterrupt, SystemExit):
        server.serve_forever(poll_interval=0.5)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
