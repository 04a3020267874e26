"""A session's container reached through its engine: one Docker client per engine, an
exec's socket as the agent user, a command run to its end, and the data plane's limits.
The verbs (:mod:`.workspace_exec`, :mod:`.workspace_files`, :mod:`.workspace_stats`,
:mod:`.workspace_ports`) build on :class:`Container`; :class:`.dataplane.Workspace` is the
one way in.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..capacity import connect
from ..contract import AGENT_UID, WORKSPACE_MOUNT
from ..errors import Conflict, Failed
from .exec_streams import Frames, feed, raw_socket
from .registry import Record

STATUS_LINE_MAX = 8 * 1024 * 1024
"""Largest status line the file helper may write (a listing of ``list_entries`` names)."""
HELPER_TIMEOUT_SECONDS = 60.0
"""How long the file helper may stay silent (the agent can stop it: same user)."""


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


class Container:
    """One session's container, located and checked; every command runs as the agent user."""

    wake: Callable[[], bool] | None = None
    """Wake on use: called when the engine refuses an exec because the container is not
    running (409: paused, or stopped by hibernate); it resumes the session if it can
    (``Sessions.workspace`` sets :func:`.hibernate.wake`) and True means try once more.
    So every exec and file call reaches a paused session without its caller doing
    anything; stats and logs (no exec) leave it paused."""

    def __init__(
        self, record: Record, manifest: Mapping[str, Any], client: Any, limits: Limits
    ) -> None:
        self.record = record
        self.manifest = manifest
        self.client = client
        self.limits = limits
        self.container = str(manifest["container"]["id"])

    @property
    def helper_timeout(self) -> float:
        """How long a helper command may stay silent (read at each call)."""
        return HELPER_TIMEOUT_SECONDS

    @property
    def status_line_max(self) -> int:
        """Most bytes of a helper's status kept (read at each call)."""
        return STATUS_LINE_MAX

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

        woken = False
        while True:
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
                sock = raw_socket(self.api.exec_start(created["Id"], socket=True, tty=tty))
            except docker.errors.NotFound:
                raise Conflict(
                    f"session {self.record.session_id!r}: its container is gone; refresh the "
                    "session"
                ) from None
            except docker.errors.APIError as exc:
                if exc.status_code == 409:
                    if not woken and self.wake is not None and self.wake():
                        woken = True
                        continue
                    raise Conflict(
                        f"session {self.record.session_id!r}: its container is not running "
                        f"(`dockyard refresh {self.record.session_id}` starts it again)"
                    ) from None
                raise Failed(
                    f"session {self.record.session_id!r}: exec failed: {exc.explanation}"
                ) from None
            return created["Id"], sock

    def _exit_code(self, exec_id: str) -> int | None:
        for _ in range(50):
            info = self.api.exec_inspect(exec_id)
            if not info.get("Running"):
                code = info.get("ExitCode")
                return int(code) if code is not None else None
            time.sleep(0.02)
        return None

    def _run(self, argv: list[str], stdin: bytes | None = None) -> tuple[bytes, bytes, int | None]:
        exec_id, sock = self._exec_socket(argv, stdin=stdin is not None)
        out, err = bytearray(), bytearray()
        try:
            if stdin is not None:
                feed(sock, stdin)
            sock.settimeout(self.helper_timeout)
            frames = Frames(sock)
            while (piece := frames.next()) is not None:
                target = out if piece[0] == 1 else err
                if len(target) < self.status_line_max:
                    target += piece[1]
        except TimeoutError:
            raise silent() from None
        finally:
            sock.close()
        return bytes(out), bytes(err), self._exit_code(exec_id)


def silent() -> Failed:
    return Failed(
        "the file helper in the container stopped answering (the agent can stop or kill "
        "processes of its user); nothing more was done: retry"
    )
