"""dockyard host library: what the host scripts (health report, idle monitor, egress
guard) share, so that each fact is written once on the host side too.

- Label names and the label grammar: the same strings the Pulumi components put on
  every environment (tests/unit/test_contracts.py fails when the two drift apart).
- Engine access: the Engine API over the unix socket (:class:`Engine`) and the docker
  CLI or any other command (:func:`run`).
- Bounded reads: an environment's agent is hostile, so everything a (root) host script
  reads from it or through the engine is bounded in bytes and in total time, never per
  read: :func:`run`, :meth:`Engine.request` and :meth:`Engine.exec_bounded` stop at their
  cap or deadline, kill what they started (an exec's processes in the container too) and
  say which bound was hit (:class:`Overrun`).
- Config loading: a JSON object over the script's defaults; unknown keys and values of
  the wrong type are refused, naming the key, the value and what is allowed.
- Atomic writes: a temporary file in the same directory, fsync'd, renamed over the
  target, then the directory fsync'd, so readers see the old file or the new one and a
  power cut loses neither.
- The manifest rewrite: a manifest changed on the host (new container id after a
  refresh, new host ports after a restart) is validated against the shipped contract v1
  schema before it replaces the file. The schema is installed beside this module. With
  the ``jsonschema`` package importable the host validates with it; hosts rarely have
  it, so otherwise a small validator of the keywords the shipped schema uses does the
  same job (:data:`VALIDATOR` says which; a schema keyword it does not know is an error,
  never silently skipped).

Stdlib only: the host scripts run under the system python3.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import math
import os
import re
import selectors
import signal
import socket
import subprocess
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

# --- Labels ------------------------------------------------------------------------------

# What the components (components/environment.py, egress.py, program.py) put on every
# environment's container, network and volumes.
LABEL_MANAGED = "dockyard.managed"
LABEL_ENVIRONMENT = "dockyard.environment"
LABEL_SESSION = "dockyard.session"
LABEL_BACKEND = "dockyard.backend"
LABEL_STACK = "dockyard.stack"
LABEL_TENANT = "dockyard.tenant"
LABEL_VOLUME = "dockyard.volume"
LABEL_EGRESS = "dockyard.egress"
LABEL_EGRESS_ALLOW = "dockyard.egress.allow"
LABEL_HOST = "dockyard.host"
LABEL_LIMITS_CPUS = "dockyard.limits.cpus"
LABEL_LIMITS_MEMORY = "dockyard.limits.memory"
# A credential broker (credentials: brokered): not an environment, so never managed.
LABEL_BROKER = "dockyard.broker"
# On an environment's container: its credentials mode, "files" or "brokered".
LABEL_CREDENTIALS = "dockyard.credentials"
LABELS = frozenset(
    {
        LABEL_MANAGED,
        LABEL_ENVIRONMENT,
        LABEL_SESSION,
        LABEL_BACKEND,
        LABEL_STACK,
        LABEL_TENANT,
        LABEL_VOLUME,
        LABEL_EGRESS,
        LABEL_EGRESS_ALLOW,
        LABEL_HOST,
        LABEL_LIMITS_CPUS,
        LABEL_LIMITS_MEMORY,
        LABEL_BROKER,
        LABEL_CREDENTIALS,
    }
)
MANAGED_VALUE = "true"
# Every dockyard environment, and nothing else.
MANAGED_SELECTOR = f"{LABEL_MANAGED}={MANAGED_VALUE}"

# A label key: the grammar the stack configuration accepts for user labels
# (dockyard.config.LABEL_KEY), full-matched, ASCII only.
LABEL_KEY = re.compile(r"[a-z0-9](?:[a-z0-9._/-]{0,126}[a-z0-9])?", re.ASCII)
# A label selector as the scripts take it (docker's `label=` filter): a key, or
# key=value with a value that is a name, a session id, a stack, "true" ...
SELECTOR_VALUE = re.compile(r"[A-Za-z0-9._/:-]{0,255}", re.ASCII)
SELECTOR_ALLOWED = (
    "a label key (lower-case letters, digits, '.', '_', '/', '-'; at most 128) or key=value "
    "(value: letters, digits, '.', '_', '/', ':', '-'; at most 255)"
)


class HostError(RuntimeError):
    """Something on the host is not as a script needs it; the message says what."""


class ConfigError(HostError, ValueError):
    """A configuration value is not allowed."""


def parse_selector(text: str) -> tuple[str, str | None]:
    """``key`` or ``key=value`` -> (key, value or None); anything else is a ConfigError."""
    if not isinstance(text, str):
        raise ConfigError(f"label selector: {text!r} is not allowed (allowed: {SELECTOR_ALLOWED})")
    key, sep, value = text.partition("=")
    if not LABEL_KEY.fullmatch(key) or (sep and not SELECTOR_VALUE.fullmatch(value)):
        raise ConfigError(
            f"label selector: {json.dumps(text)[:120]} is not allowed (allowed: {SELECTOR_ALLOWED})"
        )
    return key, (value if sep else None)


# --- Engine access -----------------------------------------------------------------------


class EngineError(HostError):
    """The Docker engine refused or failed a request."""


# --- Bounds on what is read ----------------------------------------------------------------
# Defaults; callers that read from an environment pass tighter ones.
RUN_MAX_BYTES = 16 * 2**20  # stdout + stderr of one command
REQUEST_MAX_BYTES = 64 * 2**20  # one Engine API response body
REQUEST_DEADLINE_S = 120.0  # one Engine API request, connect to last byte
EXEC_MAX_BYTES = 2**20  # one exec's output
EXEC_DEADLINE_S = 30.0  # one exec, create to exit
_CHUNK = 65536


class Overrun(HostError):
    """A read went past its byte cap or its deadline; what was started was killed.
    ``bound`` says which ("output over N bytes", "no end within N s")."""

    bound: str = ""


class CommandError(HostError):
    """A command exited non-zero (or was killed at a bound: see :class:`CommandOverrun`)."""

    def __init__(self, argv: Sequence[str], returncode: int, stderr: str) -> None:
        super().__init__(f"{' '.join(argv[:3])} failed ({returncode}): {stderr.strip()}")
        self.argv = list(argv)
        self.returncode = returncode
        self.stderr = stderr


class CommandOverrun(CommandError, Overrun):
    """A command went past its output cap or deadline and was killed (its whole process
    group). Return code 124 (time, as timeout(1)) or 125 (bytes)."""

    def __init__(self, argv: Sequence[str], bound: str, time_up: bool) -> None:
        super().__init__(argv, 124 if time_up else 125, f"{bound}; killed")
        self.bound = bound


Runner = Callable[[Sequence[str]], str]


def run(
    argv: Sequence[str],
    stdin: str | None = None,
    timeout: float = 120,
    max_bytes: int = RUN_MAX_BYTES,
) -> str:
    """Run a command (docker, nft, dnsmasq ...); its stdout, or CommandError (also when
    it cannot be started at all). ``timeout`` bounds the whole run and ``max_bytes`` the
    stdout and stderr read together: past either the command's process group is killed
    and :class:`CommandOverrun` raised. Output is decoded as UTF-8 (bad bytes replaced)."""
    try:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,  # its own process group: killed as one on overrun
        )
    except OSError as exc:
        raise CommandError(argv, 127, f"cannot run {argv[0]}: {exc.strerror}") from None
    deadline = time.monotonic() + timeout
    out, err = bytearray(), bytearray()
    pending = memoryview(stdin.encode() if stdin is not None else b"")
    overrun: str | None = None
    time_up = False
    assert proc.stdout is not None
    assert proc.stderr is not None
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ, out)
        selector.register(proc.stderr, selectors.EVENT_READ, err)
        if proc.stdin is not None:
            if pending:
                os.set_blocking(proc.stdin.fileno(), False)
                selector.register(proc.stdin, selectors.EVENT_WRITE)
            else:
                proc.stdin.close()
        while selector.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                overrun, time_up = f"no end within {timeout:g} s", True
                break
            for key, _ in selector.select(remaining):
                if key.fileobj is proc.stdin:
                    try:
                        pending = pending[os.write(key.fd, pending[:_CHUNK]) :]
                    except BrokenPipeError:
                        pending = pending[:0]
                    if not pending:
                        selector.unregister(key.fileobj)
                        proc.stdin.close()
                    continue
                chunk = os.read(key.fd, _CHUNK)
                if not chunk:
                    selector.unregister(key.fileobj)
                    continue
                key.data.extend(chunk)
                if len(out) + len(err) > max_bytes:
                    overrun = f"output over {max_bytes} bytes"
                    break
            if overrun:
                break
        if overrun is None:
            try:
                proc.wait(max(deadline - time.monotonic(), 0))
            except subprocess.TimeoutExpired:
                overrun, time_up = f"no end within {timeout:g} s", True
    if overrun is not None:
        _kill_group(proc)
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()
    if overrun is not None:
        raise CommandOverrun(argv, overrun, time_up)
    stdout, stderr = out.decode(errors="replace"), err.decode(errors="replace")
    if proc.returncode != 0:
        raise CommandError(argv, proc.returncode, stderr)
    return stdout


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


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
                chunk = response.read1(_CHUNK)
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
            info = self.request("GET", f"/exec/{exec_id}/json", deadline_s=10)
            if not info.get("Running"):
                return "it had exited"
            pid = int(info.get("Pid") or 0)
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


class EngineOverrun(EngineError, Overrun):
    """An Engine API read went past its byte cap or deadline (``time_up``)."""

    def __init__(self, message: str, bound: str, *, time_up: bool) -> None:
        super().__init__(message)
        self.bound = bound
        self.time_up = time_up


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


# --- Workspace backups -------------------------------------------------------------------

# A backup of a large workspace to remote storage takes minutes, not run()'s 120 s.
BACKUP_TIMEOUT_S = 6 * 3600


def backup_first(
    command: Sequence[str], container: str, reason: str, runner: Runner | None = None
) -> str | None:
    """Back up ``container``'s workspace before it is stopped, recreated or the host goes
    down: ``command`` (the workspace_backup role's ``workspace-backup ... hook``) is run
    with the container and ``--reason REASON`` appended. Returns None when it succeeded
    or no command is configured (``[]``), else why it failed."""
    if not command:
        return None
    argv = [*command, container, "--reason", reason]
    try:
        if runner is None or runner is run:
            run(argv, timeout=BACKUP_TIMEOUT_S)
        else:
            runner(argv)
    except HostError as exc:
        return str(exc)
    return None


# --- Audit trail -------------------------------------------------------------------------
# The same JSON lines as the sessions API's trail (components/sessions/audit.py; the
# fields are checked equal by tests/unit/test_contracts.py), in one host-side log:
# $DOCKYARD_AUDIT_LOG, else /var/log/dockyard/audit.jsonl.

AUDIT_LOG = "/var/log/dockyard/audit.jsonl"
AUDIT_FIELDS = (
    "time",
    "actor",
    "action",
    "session",
    "tenant",
    "host",
    "stack",
    "result",
    "duration_ms",
)
AUDIT_MAX_BYTES = 10 * 1024 * 1024
AUDIT_KEEP = 5


def audit(
    action: str,
    *,
    actor: str,
    labels: Mapping[str, str] | None = None,
    result: str = "ok",
    duration_ms: int = 0,
    detail: str | None = None,
    log: str | None = None,
) -> None:
    """Append one audit line for ``action`` on the environment whose container carries
    ``labels`` (session, tenant, stack come from them). Names and numbers only: never a
    secret or an environment value. A log that cannot be written is reported on stderr,
    never fatal to the action it records."""
    import fcntl
    import sys

    labels = labels or {}
    entry: dict[str, Any] = {
        "time": iso_millis(datetime.now(UTC)),
        "actor": actor,
        "action": action,
        "session": labels.get(LABEL_SESSION),
        "tenant": labels.get(LABEL_TENANT),
        "host": socket.gethostname(),
        "stack": labels.get(LABEL_STACK),
        "result": result,
        "duration_ms": duration_ms,
    }
    if detail:
        entry["detail"] = detail[:300]
    path = Path(log or os.environ.get("DOCKYARD_AUDIT_LOG") or AUDIT_LOG)
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(path.with_name(path.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if path.exists() and path.stat().st_size > AUDIT_MAX_BYTES:
                for index in range(AUDIT_KEEP - 1, 0, -1):
                    older = path.with_name(f"{path.name}.{index}")
                    if older.exists():
                        older.replace(path.with_name(f"{path.name}.{index + 1}"))
                path.replace(path.with_name(f"{path.name}.1"))
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, (json.dumps(entry) + "\n").encode())
                os.fsync(fd)
            finally:
                os.close(fd)
    except OSError as exc:
        print(f"WARNING: audit log {path}: {exc}", file=sys.stderr)


def check_command(key: str, command: Any, allow_empty: bool = True) -> None:
    """A configured command: an argv list of non-empty strings (``[]`` for none)."""
    if not isinstance(command, list) or not all(isinstance(a, str) and a for a in command):
        raise ConfigError(
            f"{key}: {json.dumps(command)[:120]} is not allowed (allowed: an argv list of "
            "non-empty strings)"
        )
    if not command and not allow_empty:
        raise ConfigError(f"{key}: [] is not allowed (allowed: a non-empty argv list)")


def parse_engine_time(value: str) -> datetime:
    """The engine's RFC 3339 time (nanoseconds, UTC) as an aware datetime."""
    base, _, rest = value.partition(".")
    fraction = "".join(ch for ch in rest if ch.isdigit())[:6]
    return datetime.fromisoformat(f"{base}.{fraction or '0'}").replace(tzinfo=UTC)


def iso_millis(moment: datetime) -> str:
    """The manifest's time format: ISO-8601 UTC with milliseconds."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


# --- Config ------------------------------------------------------------------------------


def _kind(default: Any) -> tuple[Callable[[Any], bool], str]:
    if isinstance(default, bool):
        return (lambda v: isinstance(v, bool)), "true or false"
    if isinstance(default, int):
        return (lambda v: isinstance(v, int) and not isinstance(v, bool)), "a whole number"
    if isinstance(default, float):
        return (
            lambda v: isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
        ), "a number"
    if isinstance(default, str):
        return (lambda v: isinstance(v, str)), "a string"
    if isinstance(default, list):
        return (lambda v: isinstance(v, list)), "a list"
    if isinstance(default, dict):
        return (lambda v: isinstance(v, dict)), "an object"
    return (lambda _v: True), "any value"


def load_config(
    path: str | None,
    defaults: Mapping[str, Any],
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """``defaults``, then the JSON object in ``path`` (if given), then the ``overrides``
    that are not None. Every key must be one of the defaults' and every value of the
    default's type (an int where a float is expected becomes a float)."""
    config = dict(defaults)
    source = path or "config"
    if path:
        try:
            with open(path, encoding="utf-8") as handle:
                loaded = json.load(handle)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}: not JSON ({exc.msg} at line {exc.lineno})") from None
        if not isinstance(loaded, dict):
            raise ConfigError(
                f"{path}: a JSON {type(loaded).__name__} is not allowed (allowed: a JSON object)"
            )
        config.update(loaded)
    config.update({k: v for k, v in (overrides or {}).items() if v is not None})
    unknown = sorted(set(config) - set(defaults))
    if unknown:
        raise ConfigError(
            f"{source}: unknown keys {unknown} (allowed: {', '.join(sorted(defaults))})"
        )
    for key, default in defaults.items():
        accepts, allowed = _kind(default)
        if not accepts(config[key]):
            raise ConfigError(
                f"{source}: {key}: {json.dumps(config[key])[:120]} is not allowed (allowed: {allowed})"
            )
        if isinstance(default, float):
            config[key] = float(config[key])
    return config


# --- Atomic writes -----------------------------------------------------------------------


def write_atomic(path: str | os.PathLike[str], text: str, mode: int = 0o644) -> None:
    """Replace ``path`` with ``text``: readers see the old or the new file, never half of
    one, and both the data and the rename are on disk when this returns."""
    target = Path(path)
    directory = target.parent
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    # The rename itself lives in the directory: without this a crash can lose it.
    directory_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(directory_fd)
    finally:
        os.close(directory_fd)


def write_json_atomic(path: str | os.PathLike[str], data: Any, mode: int = 0o644) -> None:
    """:func:`write_atomic` of ``data`` as indented JSON (the manifest writer's format)."""
    write_atomic(path, json.dumps(data, indent=2) + "\n", mode)


# --- Manifests ---------------------------------------------------------------------------

SCHEMA_NAME = "manifest.schema.json"
_HERE = Path(__file__).resolve().parent
# Installed (and staged by playbooks/health.yml): beside this module. Run from the
# repository (tests): the components' own copy, the one the role installs.
SCHEMA_CANDIDATES = (_HERE / SCHEMA_NAME,) + (
    (_HERE.parents[2] / "components" / SCHEMA_NAME,)
    if (_HERE.parent.name, _HERE.parent.parent.name) == ("host_common", "roles")
    else ()
)


class ManifestError(HostError, ValueError):
    """A manifest is not a valid contract v1 manifest (or cannot be read)."""


class SchemaError(HostError):
    """The schema uses something the stdlib validator cannot check."""


def schema_path() -> Path:
    for candidate in SCHEMA_CANDIDATES:
        if candidate.is_file():
            return candidate
    raise HostError(
        f"{SCHEMA_NAME} not found (looked in {', '.join(str(c.parent) for c in SCHEMA_CANDIDATES)})"
    )


@cache
def manifest_schema() -> dict[str, Any]:
    return json.loads(schema_path().read_text(encoding="utf-8"))


try:
    import jsonschema as _jsonschema
except ImportError:  # the usual case on a host: the system python3 without it
    _jsonschema = None

VALIDATOR = "jsonschema" if _jsonschema is not None else "stdlib"
"""Which validator :func:`validate_manifest` uses on this host."""


def manifest_problems(
    manifest: Any, schema: Mapping[str, Any] | None = None, validator: str | None = None
) -> list[str]:
    """Every violation of the schema (default: the shipped manifest schema), as
    ``path: message`` lines; empty when the manifest is valid."""
    schema = manifest_schema() if schema is None else schema
    if (validator or VALIDATOR) == "jsonschema":
        if _jsonschema is None:
            raise HostError("validator jsonschema is not allowed here (allowed: stdlib)")
        checker = _jsonschema.Draft202012Validator(schema)
        errors = sorted(checker.iter_errors(manifest), key=lambda e: list(e.absolute_path))
        return [f"{'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}" for e in errors]
    problems: list[str] = []
    _check(manifest, schema, (), problems)
    return problems


def validate_manifest(manifest: Any, source: str = "manifest") -> None:
    """Raise :class:`ManifestError` naming every violation of the schema."""
    problems = manifest_problems(manifest)
    if problems:
        raise ManifestError(f"{source} is not a valid v1 manifest:\n  " + "\n  ".join(problems))


def rewrite_manifest(
    path: str | os.PathLike[str], change: Callable[[dict[str, Any]], None]
) -> bool:
    """Apply ``change`` to the manifest in ``path``; when that changed anything, validate
    the result against the schema and replace the file atomically. Returns whether the
    file was rewritten; an invalid result raises :class:`ManifestError` and the file is
    left as it was."""
    manifest = read_manifest(path)
    before = json.dumps(manifest, sort_keys=True)
    change(manifest)
    if json.dumps(manifest, sort_keys=True) == before:
        return False
    validate_manifest(manifest, str(path))
    write_json_atomic(path, manifest)
    return True


def read_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    try:
        manifest = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ManifestError(f"{path}: cannot read it ({exc.strerror})") from None
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{path}: not JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(manifest, dict):
        raise ManifestError(f"{path}: a JSON {type(manifest).__name__} is not a manifest")
    return manifest


def manifest_for_container(manifest_dir: str, container_id: str) -> Path | None:
    """The manifest file in ``manifest_dir`` that describes container ``container_id``."""
    directory = Path(manifest_dir)
    if not manifest_dir or not directory.is_dir():
        return None
    for path in sorted(directory.glob("*.json")):
        try:
            manifest = read_manifest(path)
        except ManifestError:
            continue  # not ours to judge here: the inventory plugin names broken files
        container = manifest.get("container")
        if isinstance(container, dict) and container.get("id") == container_id:
            return path
    return None


# The keywords the stdlib validator checks, and those that only annotate.
_ANNOTATIONS = frozenset({"$schema", "$id", "$comment", "title", "description", "examples"})
_TYPES: dict[str, Callable[[Any], bool]] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    # JSON Schema counts 3.0 as an integer, as jsonschema does.
    "integer": lambda v: (
        (isinstance(v, int) and not isinstance(v, bool))
        or (isinstance(v, float) and v.is_integer())
    ),
}


def _same(a: Any, b: Any) -> bool:
    """JSON equality: true is not 1, 1 is 1.0."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if _TYPES["number"](a) and _TYPES["number"](b):
        return bool(a == b)
    return type(a) is type(b) and a == b


_KEYWORDS = frozenset(
    {
        "type", "const", "enum", "pattern", "minLength", "maxLength", "minimum", "maximum",
        "required", "properties", "additionalProperties", "items", "minItems", "maxItems",
        "uniqueItems",
    }
)  # fmt: skip


def _check(value: Any, schema: Mapping[str, Any], at: tuple[Any, ...], problems: list[str]) -> None:
    where = "/".join(map(str, at)) or "(top)"
    unknown = set(schema) - _ANNOTATIONS - _KEYWORDS
    if unknown:
        raise SchemaError(
            f"schema at {where}: keywords {sorted(unknown)} are not allowed "
            f"(allowed for the stdlib validator: {', '.join(sorted(_KEYWORDS))})"
        )
    problem = problems.append
    if "type" in schema:
        names = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(_TYPES[name](value) for name in names):
            problem(f"{where}: {_show(value)} is not of type {' or '.join(map(repr, names))}")
    if "const" in schema and not _same(value, schema["const"]):
        problem(f"{where}: {_show(schema['const'])} was expected")
    if "enum" in schema and not any(_same(value, option) for option in schema["enum"]):
        problem(f"{where}: {_show(value)} is not one of {schema['enum']!r}")
    if isinstance(value, str):
        # JSON Schema patterns are unanchored searches: what the schema anchors is anchored.
        if "pattern" in schema and not re.search(schema["pattern"], value):
            problem(f"{where}: {_show(value)} does not match {schema['pattern']!r}")
        if len(value) < schema.get("minLength", 0):
            problem(f"{where}: {_show(value)} is shorter than {schema['minLength']}")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            problem(f"{where}: {_show(value)} is longer than {schema['maxLength']}")
    if _TYPES["number"](value):
        if "minimum" in schema and value < schema["minimum"]:
            problem(f"{where}: {value!r} is less than the minimum of {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            problem(f"{where}: {value!r} is greater than the maximum of {schema['maximum']}")
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        for key in schema.get("required", []):
            if key not in value:
                problem(f"{where}: {key!r} is a required property")
        for key, item in value.items():
            if key in properties:
                _check(item, properties[key], (*at, key), problems)
            elif schema.get("additionalProperties") is False:
                problem(f"{where}: additional property {key!r} is not allowed")
            elif isinstance(schema.get("additionalProperties"), dict):
                _check(item, schema["additionalProperties"], (*at, key), problems)
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0):
            problem(f"{where}: fewer than {schema['minItems']} items")
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            problem(f"{where}: more than {schema['maxItems']} items")
        if schema.get("uniqueItems") and any(
            _same(a, b) for i, a in enumerate(value) for b in value[i + 1 :]
        ):
            problem(f"{where}: {_show(value)} has non-unique elements")
        for index, item in enumerate(value):
            if "items" in schema:
                _check(item, schema["items"], (*at, index), problems)


def _show(value: Any) -> str:
    return json.dumps(value)[:80]
