"""Run a command in a session's container as the agent user and stream what it says, with
a timeout, an output cap and signals to its process group (issue 27 item 1).

A signal reaches a command this process started through the process group its stream
began with. One started by another process (another server replica, on this host or any
other, on runc or gVisor) is found through the engine and inside the container: the
engine's record of the exec must say it runs, in this session's container, as the agent
user, through this module's launcher, whose name (``$0``) carries a random tag the
command also has in its environment (:data:`TAG_VARIABLE`); the signal is sent, as the
agent user inside the container, to the process groups led by a process with that tag
(:data:`GROUP_KILL`). Nothing on the engine's host is read, so a remote engine or
gVisor's own /proc are no different. (An agent that copies the tag into processes of its
own can only make such a signal reach them too: they are its own.)
"""

from __future__ import annotations

import contextlib
import re
import secrets
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from ..contract import AGENT_UID, WORKSPACE_MOUNT
from ..errors import Failed, InvalidInput, NotFound
from .exec_streams import STREAMS, Controls, Frames, Raw, feed
from .workspace_container import Container, Limits
from .workspace_paths import shown, workspace_path

ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
SIGNALS = ("HUP", "INT", "QUIT", "KILL", "USR1", "USR2", "TERM", "STOP", "CONT", "WINCH")
IDLE_SECONDS = 1.0
"""How often an exec stream says it is alive while the command is quiet."""
KILL_GRACE_SECONDS = 2.0
"""After a timeout's kill, how long the stream may still drain before it is cut."""
# The exec launcher: the command's process-group id first on stderr, then the command
# itself (docker exec starts it as a session leader: pid == pgid == sid).
LAUNCHER = 'printf "%s\\n" "$$" >&2; exec "$@"'
PGID_LINE = re.compile(rb"([0-9]{1,10})\r?\n")
EXEC_ID = re.compile(r"[0-9a-f]{64}")
TAG_VARIABLE = "DOCKYARD_EXEC"
"""The variable holding an exec's tag in its environment (set last: a request cannot
override it)."""
TAG_PREFIX = "dockyard-exec-"
"""The launcher's ``$0``: this prefix and the exec's tag (what the engine records)."""
TAG = re.compile(r"[0-9a-f]{32}")
# Inside the container, as the agent user: signal $1 to the process group led by the
# exec's own process — the one whose environment holds DOCKYARD_EXEC=$2, that leads its
# session and group, and whose parent is outside the container's pid namespace (ppid 0:
# the engine started it; a daemon the command detached with setsid has a parent inside,
# and is left alone as the same replica's signal leaves it). /proc/PID/stat after the
# command's closing parenthesis: field 2 the parent, 3 the group, 4 the session. Only
# builtins and /usr/bin/tr, /usr/bin/grep (by path: never an agent's PATH entry). Exit 3
# when there is none.
GROUP_KILL = (
    'sig=$1; want="DOCKYARD_EXEC=$2"; sent=3; '
    "for d in /proc/[0-9]*; do p=${d#/proc/}; "
    'read -r stat 2>/dev/null < "$d/stat" || continue; rest=${stat##*) }; '
    'set -f; set -- $rest; [ "$2" = 0 ] && [ "$3" = "$p" ] && [ "$4" = "$p" ] || continue; '
    '/usr/bin/tr "\\0" "\\n" 2>/dev/null < "$d/environ" '
    '| /usr/bin/grep -qxF -e "$want" || continue; '
    'kill -s "$sig" -- "-$p" 2>/dev/null && sent=0; done; exit $sent'
)


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


@dataclass
class _Running:
    container: str
    pgid: int


_RUNNING: dict[str, _Running] = {}
_RUNNING_LOCK = threading.Lock()


class ExecVerbs(Container):
    """Exec and signal."""

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
        tag = secrets.token_hex(16)
        exec_id, sock = self._exec_socket(
            ["/bin/sh", "-c", LAUNCHER, TAG_PREFIX + tag, *checked.command],
            stdin=interactive or checked.stdin is not None,
            env={**checked.env, TAG_VARIABLE: tag},
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
            threading.Thread(target=feed, args=(feeder, checked.stdin), daemon=True).start()
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
        if running is not None and running.container == self.container:
            self._run(["/bin/sh", "-c", 'kill -s "$1" -- "-$2"', "sh", name, str(running.pgid)])
            return
        missing = NotFound(
            f"session {self.record.session_id!r}: no running exec {exec_id!r} (it ended, or "
            "it is not a command started through dockyard in this session)"
        )
        tag = self._tag_elsewhere(exec_id)
        if tag is None:
            raise missing
        if self._run(["/bin/sh", "-c", GROUP_KILL, "sh", name, tag])[2] != 0:
            raise missing

    def _tag_elsewhere(self, exec_id: str) -> str | None:
        """The tag of a running exec another process started in this container through
        the launcher, as the engine records it (see the module's docstring); None when
        the engine does not vouch for one."""
        if not EXEC_ID.fullmatch(exec_id):
            return None
        try:
            info = self.api.exec_inspect(exec_id)
        except Exception:  # the engine's NotFound, or any refusal: not one to signal
            return None
        config = info.get("ProcessConfig") or {}
        container = str(info.get("ContainerID") or "")
        arguments = list(config.get("arguments") or [])
        name = str(arguments[2]) if len(arguments) > 2 else ""
        tag = name.removeprefix(TAG_PREFIX)
        if (
            info.get("Running") is not True
            or not (
                container == self.container
                or (len(self.container) >= 12 and container.startswith(self.container))
            )
            or config.get("entrypoint") != "/bin/sh"
            or arguments[:2] != ["-c", LAUNCHER]
            or not name.startswith(TAG_PREFIX)
            or not TAG.fullmatch(tag)
            or config.get("user") != f"{AGENT_UID}:{AGENT_UID}"
        ):
            return None
        return tag
