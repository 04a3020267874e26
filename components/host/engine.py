"""The Docker engine as host scripts reach it: the Engine API over the unix socket, every
read bounded in bytes and in total time; an exec past its bounds is killed, inside the
container and from the host (standard library only)."""

from __future__ import annotations

import http.client
import json
import math
import os
import signal
import socket
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from .commands import CHUNK
from .config import parse_selector
from .errors import EngineError, EngineOverrun, HostError

# Defaults; callers that read from an environment pass tighter ones.
REQUEST_MAX_BYTES = 64 * 2**20  # one Engine API response body
REQUEST_DEADLINE_S = 120.0  # one Engine API request, connect to last byte
EXEC_MAX_BYTES = 2**20  # one exec's output
EXEC_DEADLINE_S = 30.0  # one exec, create to exit
PID_SETTLE_S = 2.0  # how long a running exec may show Pid 0 before its pid is recorded

DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"


class Engine:
    """Minimal Docker Engine API client over the unix socket."""

    def __init__(self, socket_path: str) -> None:
        self.socket_path = socket_path

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Engine:
        """The engine DOCKER_HOST names (default the local socket); only unix sockets:
        the scripts run on the Docker host itself."""
        host = environ.get("DOCKER_HOST") or DEFAULT_DOCKER_HOST
        if not host.startswith("unix://"):
            raise HostError(
                f"DOCKER_HOST={host} is not a unix socket (allowed: unix:///path; run this on "
                "the Docker host)"
            )
        return cls(host.removeprefix("unix://"))

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        raw: bytes | None = None,
        expect: Sequence[int] = (200, 201, 204, 304),
        *,
        max_bytes: int = REQUEST_MAX_BYTES,
        deadline_s: float = REQUEST_DEADLINE_S,
    ) -> Any:
        """One Engine API request: the JSON it answers, else the raw bytes. The response
        is read in chunks, at most ``max_bytes`` of it, and the whole request (connect to
        last byte) takes at most ``deadline_s``; past either :class:`EngineOverrun`."""
        status, content_type, data = self._bounded(
            method, path, body, raw, max_bytes=max_bytes, deadline_s=deadline_s
        )
        if status not in expect:
            message = data.decode(errors="replace").strip()[:1000]
            raise EngineError(f"{method} {path}: {status} {message}")
        if content_type.startswith("application/json") and data:
            return json.loads(data)
        return bytes(data)

    def _bounded(
        self,
        method: str,
        path: str,
        body: Any,
        raw: bytes | None,
        *,
        max_bytes: int,
        deadline_s: float,
        partial: bytearray | None = None,
    ) -> tuple[int, str, bytearray]:
        deadline = time.monotonic() + deadline_s
        connection = _UnixConnection(self.socket_path, timeout=deadline_s)
        headers = {"Host": "docker"}
        payload = raw
        if body is not None:
            payload = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        elif raw is not None:
            headers["Content-Type"] = "application/x-tar"
        data = bytearray() if partial is None else partial
        try:
            connection.request(method, path, body=payload, headers=headers)
            # getresponse() lets go of connection.sock when the answer is read to close.
            sock = connection.sock
            sock.settimeout(max(deadline - time.monotonic(), 0.001))
            response = connection.getresponse()
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError
                sock.settimeout(remaining)
                chunk = response.read1(CHUNK)
                if not chunk:
                    break
                data.extend(chunk)
                if len(data) > max_bytes:
                    raise EngineOverrun(
                        f"{method} {_path_only(path)}: answer over {max_bytes} bytes",
                        f"output over {max_bytes} bytes",
                        time_up=False,
                    )
        except TimeoutError:
            raise EngineOverrun(
                f"{method} {_path_only(path)}: no end within {deadline_s:g} s",
                f"no end within {deadline_s:g} s",
                time_up=True,
            ) from None
        except (OSError, http.client.HTTPException) as exc:
            raise EngineError(f"{method} {_path_only(path)}: {exc}") from None
        finally:
            connection.close()
        return response.status, response.getheader("Content-Type", ""), data

    def containers(self, selector: str) -> list[dict[str, Any]]:
        """Every container (running or not) carrying the label ``selector``."""
        parse_selector(selector)
        filters = urllib.parse.quote(json.dumps({"label": [selector]}))
        return self.request("GET", f"/containers/json?all=1&filters={filters}")

    def inspect(self, ref: str) -> dict[str, Any]:
        return self.request("GET", f"/containers/{ref}/json")

    def stats(self, ref: str) -> dict[str, Any]:
        return self.request("GET", f"/containers/{ref}/stats?stream=false")

    def exec(self, ref: str, cmd: list[str], user: str = "1000") -> tuple[int, str]:
        """(exit code, output) of ``cmd`` in the container, within the default bounds of
        :meth:`exec_bounded`; past them :class:`EngineOverrun`."""
        result = self.exec_bounded(ref, cmd, user=user)
        if result.problem is not None:
            raise EngineOverrun(
                f"exec in {ref[:12]}: {result.problem}",
                result.problem,
                time_up=result.problem.startswith("no end"),
            )
        return int(result.code if result.code is not None else 1), result.output

    def exec_bounded(
        self,
        ref: str,
        cmd: list[str],
        *,
        user: str = "1000",
        deadline_s: float = EXEC_DEADLINE_S,
        max_bytes: int = EXEC_MAX_BYTES,
        inside_timeout: bool = True,
    ) -> ExecResult:
        """Run ``cmd`` in container ``ref`` (as ``user``, on a tty: stdout and stderr
        together) and read at most ``max_bytes`` of its output within ``deadline_s`` in
        all (create to exit). Past either bound the client side is closed and the exec's
        processes are killed: from the host (its pid and every descendant, once the pid
        is checked to be in the container's pid namespace) and, with ``inside_timeout``,
        by ``timeout -s KILL`` run inside around ``cmd`` (which the image must have;
        coreutils and busybox both do). The result's ``problem`` names the bound hit."""
        deadline = time.monotonic() + deadline_s
        argv = (
            ["timeout", "-s", "KILL", str(math.ceil(deadline_s)), *cmd] if inside_timeout else cmd
        )
        created = self.request(
            "POST",
            f"/containers/{ref}/exec",
            {"Cmd": argv, "User": user, "AttachStdout": True, "AttachStderr": True},
            deadline_s=deadline_s,
        )
        exec_id = created["Id"]
        output = bytearray()
        try:
            self._bounded(
                "POST",
                f"/exec/{exec_id}/start",
                {"Detach": False, "Tty": True},
                None,
                max_bytes=max_bytes,
                deadline_s=max(deadline - time.monotonic(), 0.001),
                partial=output,
            )
            while True:  # the stream can end (stdout closed) before the process does
                info = self.request(
                    "GET", f"/exec/{exec_id}/json", deadline_s=max(deadline - time.monotonic(), 1)
                )
                if not info.get("Running"):
                    code = info.get("ExitCode")
                    return ExecResult(
                        int(code) if code is not None else None,
                        output[:max_bytes].decode(errors="replace"),
                        None if code is not None else "no exit code",
                    )
                if time.monotonic() >= deadline:
                    raise EngineOverrun("", "", time_up=True)
                time.sleep(0.05)
        except EngineOverrun as exc:
            bound = f"no end within {deadline_s:g} s" if exc.time_up else exc.bound
            killed = self.kill_exec(exec_id)
            return ExecResult(
                None, output[:max_bytes].decode(errors="replace"), f"{bound}; {killed}"
            )

    def kill_exec(self, exec_id: str) -> str:
        """Kill a running exec's process and its descendants from the host (root's view
        of the container's processes); says what was done. Nothing is killed unless the
        exec's pid is in the pid namespace of its container's init (never a host process
        that reuses the number; with a sandboxed runtime such as gVisor the pid is the
        sandbox's own and the in-container ``timeout`` is what kills it)."""
        try:
            # The engine marks an exec running before it records its pid: a flood that
            # hits the cap within milliseconds of the start can find Pid 0 for a moment.
            settle = time.monotonic() + PID_SETTLE_S
            while True:
                info = self.request("GET", f"/exec/{exec_id}/json", deadline_s=10)
                if not info.get("Running"):
                    return "it had exited"
                pid = int(info.get("Pid") or 0)
                if pid > 0 or time.monotonic() >= settle:
                    break
                time.sleep(0.02)
            init = int(self.inspect(info["ContainerID"])["State"].get("Pid") or 0)
        except (HostError, KeyError, TypeError, ValueError) as exc:
            return f"not killed from the host ({exc})"
        return kill_process_tree(pid, init)


@dataclass(frozen=True)
class ExecResult:
    """What :meth:`Engine.exec_bounded` got: the exit code (None when the exec did not end
    within its bounds), the output read (at most the cap), and why it is not a result
    (``problem``: the bound hit and what was killed; None when it ended normally)."""

    code: int | None
    output: str
    problem: str | None


def _path_only(path: str) -> str:
    return path.partition("?")[0]


def _ppids() -> dict[int, int]:
    """pid -> parent pid of every process the host's /proc shows."""
    parents = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as handle:
                stat = handle.read()
        except OSError:
            continue
        fields = stat.rpartition(b")")[2].split()
        if len(fields) > 1 and fields[1].isdigit():
            parents[int(entry.name)] = int(fields[1])
    return parents


def kill_process_tree(pid: int, init: int) -> str:
    """SIGKILL process ``pid`` and its descendants, provided ``pid`` is in the same pid
    namespace as ``init`` (a container's first process) and is not ``init`` itself.
    Signals go through pidfds, so a number reused meanwhile is never hit."""
    if pid <= 1 or init <= 1 or pid == init:
        return f"not killed from the host (pid {pid} is not an exec's)"
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return "it had exited"
    try:
        try:
            same = os.readlink(f"/proc/{pid}/ns/pid") == os.readlink(f"/proc/{init}/ns/pid")
        except OSError:
            same = False
        if not same:
            return "not killed from the host (its pid is not in the container's pid namespace)"
        signal.pidfd_send_signal(pidfd, signal.SIGSTOP)  # no new children from here on
        parents = _ppids()
        tree, frontier = [], [pid]
        while frontier:
            parent = frontier.pop()
            children = [child for child, ppid in parents.items() if ppid == parent]
            tree += children
            frontier += children
        killed = 1
        for child in tree:
            try:
                child_fd = os.pidfd_open(child)
            except OSError:
                continue
            try:
                signal.pidfd_send_signal(child_fd, signal.SIGKILL)
                killed += 1
            except OSError:
                pass
            finally:
                os.close(child_fd)
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        return f"killed {killed} process(es) of the exec"
    except OSError as exc:
        return f"not killed from the host ({exc.strerror})"
    finally:
        os.close(pidfd)


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float = REQUEST_DEADLINE_S) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.socket_path)


def parse_engine_time(value: str) -> datetime:
    """The engine's RFC 3339 time (nanoseconds, UTC) as an aware datetime."""
    base, _, rest = value.partition(".")
    fraction = "".join(ch for ch in rest if ch.isdigit())[:6]
    return datetime.fromisoformat(f"{base}.{fraction or '0'}").replace(tzinfo=UTC)
