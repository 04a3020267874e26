"""``dockyard serve --workers N``: N server processes on one address, each a whole replica
(its own key store connection, event hub, exec table and rate buckets), exactly as several
replicas on one key store are (docs/api.md, "Several processes"); the kernel spreads new
connections over their listening sockets (``SO_REUSEPORT``).

Why: one Python process answers a list of 100 sessions in about 0.5 ms of CPU, so 200
requests arriving at once are answered after about 100 ms on one core, however lean the
path; N processes use N cores. Stdlib only, no supervisor of our own beyond this: the
parent forks, forwards a stop to every child once, and stops the others when one ends (a
server missing a process would drop a share of its connections).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable
from types import FrameType
from typing import Any

log = logging.getLogger(__package__)

MAX_WORKERS = 64
BACKLOG = 512
_PR_SET_PDEATHSIG = 1
STOPPING_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
Handler = Callable[[int, FrameType | None], Any] | int | None


def listening(host: str, port: int, count: int) -> list[socket.socket]:
    """``count`` sockets listening on ``host:port`` (port 0: a free one, the same for all);
    more than one share the port (``SO_REUSEPORT``). Raises :class:`OSError` with none
    left open."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sockets: list[socket.socket] = []
    try:
        for index in range(count):
            sock = socket.socket(family, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if count > 1:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, port if index == 0 else sockets[0].getsockname()[1]))
            sock.listen(BACKLOG)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def _die_with_parent(parent: int) -> None:
    """This child gets SIGTERM when the supervising parent dies (even by SIGKILL), so no
    worker is left holding the port on its own."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    if os.getppid() != parent:  # the parent died before the line above
        os._exit(1)


def supervise(sockets: list[socket.socket], serve_one: Callable[[socket.socket], None]) -> int:
    """``serve_one(sock)`` in a child process per socket, until every child has ended; the
    exit code: 0 when each ended cleanly, else the first failing child's. A stop signal to
    this process goes to every child once; the children are in a process group of their
    own, so a terminal's Ctrl-C reaches them once, through here."""
    parent = os.getpid()
    children: dict[int, int] = {}
    stopping = False

    def stop_all(*_: object) -> None:
        nonlocal stopping
        if os.getpid() != parent:  # a child before it restored its own handlers
            return
        stopping = True
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    previous = {number: signal.signal(number, stop_all) for number in STOPPING_SIGNALS}
    try:
        for index, sock in enumerate(sockets):
            if stopping:
                break
            pid = os.fork()
            if pid == 0:
                _child(parent, sock, sockets, serve_one, previous)
            children[pid] = index
        for sock in sockets:
            sock.close()
        if stopping:  # a stop that came while the children were made reaches them all
            stop_all()
        code = 0
        while children:
            try:
                pid, status = os.wait()
            except ChildProcessError:
                break
            children.pop(pid, None)
            ended = os.waitstatus_to_exitcode(status)
            if stopping and ended == -signal.SIGTERM:
                # uvicorn raises a stop signal again once it has shut down: ended as asked.
                ended = 0
            if ended != 0 and code == 0:
                code = ended if ended > 0 else 1
            if not stopping:
                log.warning(
                    "server process %d ended (exit %d): stopping the other %d",
                    pid,
                    ended,
                    len(children),
                )
                stop_all()
        return code
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _child(
    parent: int,
    sock: socket.socket,
    sockets: list[socket.socket],
    serve_one: Callable[[socket.socket], None],
    previous: dict[signal.Signals, Handler],
) -> None:
    code = 1
    try:
        for number, handler in previous.items():
            signal.signal(number, handler)
        os.setpgid(0, 0)
        _die_with_parent(parent)
        for other in sockets:
            if other is not sock:
                other.close()
        serve_one(sock)
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    except BaseException:
        log.exception("server process %d failed", os.getpid())
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
