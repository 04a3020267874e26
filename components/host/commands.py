"""Commands a host script runs (docker, nft, dnsmasq, the backup hook): bounded in output
and in time, their process group killed past either bound (standard library only)."""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import subprocess
import time
from collections.abc import Callable, Sequence

from .errors import CommandError, CommandOverrun, HostError

RUN_MAX_BYTES = 16 * 2**20  # stdout + stderr of one command
CHUNK = 65536

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
                        pending = pending[os.write(key.fd, pending[:CHUNK]) :]
                    except BrokenPipeError:
                        pending = pending[:0]
                    if not pending:
                        selector.unregister(key.fileobj)
                        proc.stdin.close()
                    continue
                chunk = os.read(key.fd, CHUNK)
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


# --- Workspace backups -------------------------------------------------------------------

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
