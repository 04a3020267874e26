"""The file helper that runs INSIDE a session's container, as the agent user, for the data
plane (:mod:`.dataplane`): ``python3 -I -S -c <this file> '<spec json>'``.

Standard library only, no imports from dockyard (it runs where dockyard is not installed).
Every path is walked one component at a time from the workspace's directory with
``openat(..., O_NOFOLLOW)``: a symlink anywhere on the way (planted by the agent, pointing at
/etc or at another directory) is refused, never followed; ``..``, ``.``, empty and ``/``
components are refused; only regular files are read, and only by their own descriptor
(a FIFO or device is never opened for reading and blocking). Writes go to a fresh
``O_EXCL`` file in the same directory, renamed into place when complete (a link at the
final name is replaced, never written through; an interrupted upload leaves nothing).

Protocol: status lines (JSON, one per line) on stderr; file content on stdout; uploads
arrive on stdin as frames ``<4-byte big-endian length><bytes>``, a zero length ends them
(EOF before that: the upload is discarded).
"""

import contextlib
import errno
import json
import os
import secrets
import shutil
import stat
import sys

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
CHUNK = 1024 * 1024


class Problem(Exception):
    def __init__(self, kind, message):
        super().__init__(message)
        self.kind = kind
        self.message = message


def status(**fields):
    sys.stderr.write(json.dumps(fields) + "\n")
    sys.stderr.flush()


def shown(parts):
    return "/".join(parts) or "."


def check(name):
    if not isinstance(name, str) or name in ("", ".", "..") or "/" in name or "\0" in name:
        raise Problem("invalid", "a path component is empty, '.', '..' or holds '/' or NUL")


def walk(root, parts, create=False):
    """A descriptor of the directory ``root/parts``, every component opened with
    O_NOFOLLOW from its parent's descriptor."""
    fd = os.open(root, DIR_FLAGS)
    done = []
    try:
        for name in parts:
            check(name)
            try:
                child = os.open(name, DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise Problem(
                        "not-found", f"{shown([*done, name])}: no such directory"
                    ) from None
                with contextlib.suppress(FileExistsError):
                    os.mkdir(name, 0o755, dir_fd=fd)
                child = os.open(name, DIR_FLAGS, dir_fd=fd)
            except OSError as error:
                if error.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise Problem(
                        "conflict",
                        f"{shown([*done, name])}: a symlink or not a directory (links are never "
                        "followed)",
                    ) from None
                raise
            os.close(fd)
            fd = child
            done.append(name)
    except BaseException:
        os.close(fd)
        raise
    return fd


def kind_of(mode):
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "directory"
    if stat.S_ISLNK(mode):
        return "symlink"
    return "other"


def describe(name, st, dir_fd=None):
    kind = kind_of(st.st_mode)
    info = {
        "name": os.fsencode(name).decode("utf-8", "backslashreplace"),
        "type": kind,
        "size": st.st_size,
        "mode": stat.S_IMODE(st.st_mode),
        "mtime": st.st_mtime,
    }
    if kind == "symlink" and dir_fd is not None:
        target = os.readlink(name, dir_fd=dir_fd)
        info["target"] = os.fsencode(target).decode("utf-8", "backslashreplace")
    return info


def parent(spec, create=False):
    parts = spec["path"]
    if not parts:
        raise Problem("invalid", "the workspace itself: name a path inside it")
    check(parts[-1])
    return walk(spec["root"], parts[:-1], create), parts[-1]


def op_stat(spec):
    if not spec["path"]:
        fd = walk(spec["root"], [])
        try:
            status(ok=True, entry=describe(".", os.fstat(fd)))
        finally:
            os.close(fd)
        return
    dfd, name = parent(spec)
    try:
        st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        status(ok=True, entry=describe(name, st, dfd))
    except FileNotFoundError:
        raise Problem("not-found", f"{shown(spec['path'])}: no such file or directory") from None
    finally:
        os.close(dfd)


def op_list(spec):
    fd = walk(spec["root"], spec["path"])
    entries, truncated = [], False
    try:
        with os.scandir(fd) as found:
            for entry in found:
                if len(entries) >= spec["limit"]:
                    truncated = True
                    break
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                entries.append(describe(entry.name, st, fd))
    finally:
        os.close(fd)
    entries.sort(key=lambda e: e["name"])
    status(ok=True, entries=entries, truncated=truncated)


def op_read(spec):
    dfd, name = parent(spec)
    try:
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
        fd = os.open(name, flags, dir_fd=dfd)
    except FileNotFoundError:
        raise Problem("not-found", f"{shown(spec['path'])}: no such file") from None
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise Problem(
                "conflict", f"{shown(spec['path'])}: a symlink (links are never followed)"
            ) from None
        raise
    finally:
        os.close(dfd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise Problem(
                "conflict",
                f"{shown(spec['path'])}: a {kind_of(st.st_mode)}, not a regular file",
            )
        if st.st_size > spec["max"]:
            raise Problem(
                "too-large",
                f"{shown(spec['path'])}: {st.st_size} bytes (allowed: at most {spec['max']})",
            )
        os.set_blocking(fd, True)
        status(ok=True, size=st.st_size)
        out = sys.stdout.fileno()
        left = st.st_size
        while left > 0:
            data = os.read(fd, min(CHUNK, left))
            if not data:
                break
            left -= len(data)
            while data:
                data = data[os.write(out, data) :]
    finally:
        os.close(fd)


def read_exact(size):
    data = bytearray(size)
    view, got = memoryview(data), 0
    while got < size:
        more = os.readv(0, [view[got:]])
        if not more:
            return None
        got += more
    return view


def op_write(spec):
    dfd, name = parent(spec, create=spec.get("parents", False))
    temp = f".dockyard-upload-{secrets.token_hex(8)}"
    try:
        try:
            st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                raise Problem("conflict", f"{shown(spec['path'])}: a directory")
        except FileNotFoundError:
            pass
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(temp, flags, spec["mode"], dir_fd=dfd)
        complete = False
        try:
            status(ok=True, ready=True)
            total = 0
            while True:
                header = read_exact(4)
                if header is None:
                    raise Problem("failed", "the upload was interrupted: nothing was written")
                size = int.from_bytes(header, "big")
                if size == 0:
                    break
                total += size
                if total > spec["max"]:
                    raise Problem(
                        "too-large",
                        f"{shown(spec['path'])}: over {spec['max']} bytes (allowed: at most "
                        f"{spec['max']})",
                    )
                data = read_exact(size)
                if data is None:
                    raise Problem("failed", "the upload was interrupted: nothing was written")
                while len(data):
                    data = data[os.write(fd, data) :]
            os.fchmod(fd, spec["mode"])
            os.rename(temp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
            complete = True
        finally:
            os.close(fd)
            if not complete:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(temp, dir_fd=dfd)
        status(ok=True, size=total)
    finally:
        os.close(dfd)


def op_remove(spec):
    dfd, name = parent(spec)
    try:
        try:
            st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        except FileNotFoundError:
            raise Problem(
                "not-found", f"{shown(spec['path'])}: no such file or directory"
            ) from None
        if stat.S_ISDIR(st.st_mode):
            if spec.get("recursive"):
                shutil.rmtree(name, dir_fd=dfd)
            else:
                try:
                    os.rmdir(name, dir_fd=dfd)
                except OSError as error:
                    if error.errno == errno.ENOTEMPTY:
                        raise Problem(
                            "conflict",
                            f"{shown(spec['path'])}: a directory that is not empty (allowed: "
                            "recursive=true)",
                        ) from None
                    raise
        else:
            os.unlink(name, dir_fd=dfd)
        status(ok=True, removed=kind_of(st.st_mode))
    finally:
        os.close(dfd)


def op_df(spec):
    fd = walk(spec["root"], [])
    try:
        vfs = os.fstatvfs(fd)
    finally:
        os.close(fd)
    total = vfs.f_blocks * vfs.f_frsize
    free = vfs.f_bavail * vfs.f_frsize
    status(ok=True, total=total, used=total - vfs.f_bfree * vfs.f_frsize, available=free)


OPS = {
    "stat": op_stat,
    "list": op_list,
    "read": op_read,
    "write": op_write,
    "remove": op_remove,
    "df": op_df,
}


def main(argv):
    try:
        spec = json.loads(argv[1])
        OPS[spec["op"]](spec)
    except Problem as problem:
        status(ok=False, kind=problem.kind, message=problem.message)
        return 1
    except PermissionError:
        status(ok=False, kind="forbidden", message="permission denied for the agent user")
        return 1
    except OSError as error:
        status(ok=False, kind="failed", message=f"{error.strerror or error}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
