"""``dockyard serve --workers N``: N server processes accepting on one listening socket,
each a whole replica (its own key store connection, event hub, exec table and rate
buckets), exactly as several replicas on one key store are (docs/api.md, "Several
processes").

Why: one Python process answers a list of 100 sessions in about 0.5 ms of CPU, so 200
requests arriving at once are answered after about 100 ms on one core, however lean the
path; N processes use N cores. One socket made here and inherited by every process (the
pre-fork model), not one per process joined with ``SO_REUSEPORT``: such a group is open
to any later process of the same user, which would silently take a share of the
connections and of the keys they carry. Stdlib only; Linux only (the parent's death is
passed on with ``prctl``).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal
import socket
import sys
import traceback
from collections.abc import Callable
from types import FrameType
from typing import Any

from ..errors import DEBUG_VARIABLE, Failed, unexpected

MAX_WORKERS = 64
BACKLOG = 512
_PR_SET_PDEATHSIG = 1
STOPPING_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
Handler = Callable[[int, FrameType | None], Any] | int | None


def available() -> bool:
    """Whether more than one process can serve here (the parent's death reaches the
    children through Linux's ``prctl``)."""
    return sys.platform == "linux"


def listening(host: str, port: int) -> socket.socket:
    """A socket listening on ``host:port`` (port 0: a free one). Raises :class:`OSError`
    with nothing left open."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock


def _die_with_parent(parent: int) -> None:
    """This child is killed when the supervising parent dies (even by SIGKILL): a server
    torn down abruptly leaves no process holding its socket, whatever streams are open."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != parent:  # the parent died before the line above
        os._exit(1)


def supervise(sock: socket.socket, count: int, serve_one: Callable[[], None]) -> int:
    """``serve_one()`` in ``count`` child processes accepting on ``sock``, until every child
    has ended; the exit code: 0 when they ended because they were asked to, else 1 (or the
    first failing child's code). The first stop signal to this process reaches each child
    as it came (a graceful stop); another one forces them (SIGINT twice is uvicorn's force).
    The children are in a process group of their own, so a terminal's Ctrl-C reaches them
    only through here."""
    children: set[int] = set()
    stops = 0

    def stop_all(number: int = signal.SIGTERM, _frame: object = None) -> None:
        nonlocal stops
        stops += 1
        forwarded = number if stops == 1 else signal.SIGINT
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, forwarded)

    previous: dict[signal.Signals, Handler] = {
        number: signal.getsignal(number) for number in STOPPING_SIGNALS
    }
    # Blocked while the children are made: a stop then is delivered once each child has
    # its own handlers and this process knows every child.
    signal.pthread_sigmask(signal.SIG_BLOCK, STOPPING_SIGNALS)
    try:
        parent = os.getpid()
        for _ in range(count):
            try:
                pid = os.fork()
            except OSError as error:  # out of processes or memory: none is left running
                stop_all(signal.SIGKILL)
                for made in children:
                    os.waitpid(made, 0)
                raise Failed(
                    f"--workers {count}: cannot start a server process ({error})"
                ) from None
            if pid == 0:
                _child(parent, previous, serve_one)
            children.add(pid)
        sock.close()
        for number in STOPPING_SIGNALS:
            signal.signal(number, stop_all)
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOPPING_SIGNALS)
    try:
        code = 0
        while children:
            try:
                pid, status = os.wait()
            except ChildProcessError:
                break
            children.discard(pid)
            ended = os.waitstatus_to_exitcode(status)
            if stops:
                # uvicorn raises a stop signal again once it has shut down: ended as asked.
                asked = ended == 0 or -ended in STOPPING_SIGNALS
                failure = 0 if asked else (ended if ended > 0 else 1)
            else:
                print(
                    f"dockyard: server process {pid} ended (exit {ended}): stopping the "
                    f"other {len(children)}",
                    file=sys.stderr,
                    flush=True,
                )
                failure = ended if ended > 0 else 1  # unasked, even a clean end is one
                stop_all()
            code = code or failure
        return code
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _child(
    parent: int, previous: dict[signal.Signals, Handler], serve_one: Callable[[], None]
) -> None:
    code = 1
    try:
        for number, handler in previous.items():
            signal.signal(number, handler)
        os.setpgid(0, 0)
        _die_with_parent(parent)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOPPING_SIGNALS)
        serve_one()
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    except KeyboardInterrupt:  # a stop (SIGINT) before the server had its own handlers
        code = 0
    except BaseException as error:  # a bug of dockyard's: one line, as the CLI says it
        if os.environ.get(DEBUG_VARIABLE) == "1":
            traceback.print_exception(error, file=sys.stderr)
        print(f"ERROR: {unexpected(error)}", file=sys.stderr)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
