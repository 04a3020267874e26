"""SSH into an environment with short-lived certificates (docs/access.md).

One user CA per stack, generated on the host that runs the program and kept there
(``$DOCKYARD_SSH_DIR/<stack>/user_ca``, default ``/etc/dockyard/ssh``, directory 0700,
key 0600); only its public half goes into the environments (``TrustedUserCAKeys``).
An environment accepts a certificate only for principal ``agent@<session id>`` (its
``AuthorizedPrincipalsFile``), so a certificate opens one session, as the agent user,
for at most :data:`MAX_MINUTES`. Everything here is ``ssh-keygen``: no key material is
handled in Python.
"""

from __future__ import annotations

import ipaddress
import os
import re
import selectors
import shlex
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from .config.values import TENANT
from .contract import SESSION_ID
from .errors import Failed, InvalidInput

DEFAULT_DIR = "/etc/dockyard/ssh"
DIR_ENV = "DOCKYARD_SSH_DIR"
CA_NAME = "user_ca"
CONTAINER_PORT = 22
USER = "agent"
MAX_MINUTES = 15
DEFAULT_MINUTES = 15
# Stack and session names become path parts and principals: plain names only.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}", re.ASCII)


class SshError(Failed):
    """A certificate or CA operation failed; the message says which and why."""


class SshOptionError(InvalidInput):
    """An ssh option or argument that is not allowed; the message names it."""


def principal(session: str) -> str:
    """The one principal an environment accepts: the agent user of that session."""
    return f"{USER}@{session}"


def ca_dir(stack: str) -> Path:
    if not NAME.fullmatch(stack):
        raise SshError(f"stack {stack!r} is not allowed (allowed: {NAME.pattern})")
    return Path(os.environ.get(DIR_ENV) or DEFAULT_DIR) / stack


def _keygen(*args: str) -> str:
    keygen = shutil.which("ssh-keygen")
    if keygen is None:
        raise SshError("ssh-keygen is not on PATH (Debian: apt-get install openssh-client)")
    result = subprocess.run([keygen, *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SshError(f"ssh-keygen {args[0]} failed: {result.stderr.strip()}")
    return result.stdout


def ensure_ca(stack: str) -> str:
    """The stack's CA public key (``ssh-ed25519 ...``), creating the CA on first use."""
    directory = ca_dir(stack)
    key = directory / CA_NAME
    if not key.exists():
        try:
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise SshError(
                f"cannot create the SSH CA directory {directory} ({exc.strerror}); "
                f"set {DIR_ENV} to a directory this user owns"
            ) from None
        _keygen("-q", "-t", "ed25519", "-N", "", "-C", f"dockyard {stack} user CA", "-f", str(key))
    key.chmod(0o600)
    return key.with_suffix(".pub").read_text().strip()


@dataclass(frozen=True)
class Certificate:
    path: Path
    key_id: str
    principal: str
    minutes: int


def bounded_minutes(minutes: int) -> int:
    if not 1 <= minutes <= MAX_MINUTES:
        raise SshError(f"--minutes {minutes} is not allowed (allowed: 1-{MAX_MINUTES})")
    return minutes


def issue(
    stack: str,
    session: str,
    public_key: Path,
    minutes: int = DEFAULT_MINUTES,
    caller: str = "unknown",
    principal_name: str | None = None,
    valid: str | None = None,
) -> Certificate:
    """Sign the caller's public key for ``agent@<session>``; the certificate lands beside
    the key (``<key>-cert.pub``, where ssh looks for it). ``valid`` overrides the window
    (an ``ssh-keygen -V`` interval, for tests of expired certificates)."""
    if not NAME.fullmatch(session):
        raise SshError(f"session {session!r} is not allowed (allowed: {NAME.pattern})")
    minutes = bounded_minutes(minutes)
    if not public_key.is_file():
        raise SshError(f"public key {public_key} does not exist")
    ca = ca_dir(stack) / CA_NAME
    if not ca.exists():
        raise SshError(f"stack {stack!r} has no SSH CA at {ca} (no environment with ssh: true)")
    name = principal_name or principal(session)
    key_id = f"dockyard:{stack}/{session}:{caller}"
    # Back-dated a minute for clock skew between the host and the caller.
    _keygen(
        "-q", "-s", str(ca), "-I", key_id, "-n", name, "-V", valid or f"-1m:+{minutes}m",
        "-O", "clear", "-O", "permit-pty", "-O", "permit-port-forwarding",
        str(public_key),
    )  # fmt: skip
    return Certificate(public_key.with_name(public_key.stem + "-cert.pub"), key_id, name, minutes)


# The sshd inside an environment runs as the agent, which can replace it: anything the
# client forwards into the session (the user's agent, their X display) is the agent's.
NO_FORWARDING = (
    "-o", "ForwardAgent=no", "-o", "ForwardX11=no", "-o", "ForwardX11Trusted=no",
    "-o", "PermitLocalCommand=no",
)  # fmt: skip
# ssh's single-letter flags: those that take no value, and those that take one.
_FLAGS = frozenset("46AaCfGgKkMNnqsTtVvXxYy")
_WITH_VALUE = frozenset("BbcDEeFIiJLlmOoPpQRSWw")
_REFUSED_FLAGS = {
    "A": "-A (agent forwarding)",
    "X": "-X (X11 forwarding)",
    "Y": "-Y (X11 forwarding)",
}
_REFUSED_OPTIONS = ("forwardagent", "forwardx11", "permitlocalcommand", "localcommand")


def refused_options(options: list[str]) -> list[str]:
    """The ssh options in ``options`` that would forward the caller's agent or display
    into the environment (or run a local command): each named, to be refused."""
    refused: list[str] = []
    words = iter(options)
    for word in words:
        if not word.startswith("-") or word.startswith("--") or word == "-":
            continue
        letters = word[1:]
        for index, letter in enumerate(letters):
            if letter in _REFUSED_FLAGS:
                refused.append(_REFUSED_FLAGS[letter])
            if letter in _WITH_VALUE:
                value = letters[index + 1 :] or next(words, "")
                key = value.split("=", 1)[0].split(None, 1)[0].strip().lower() if value else ""
                if letter == "o" and key in _REFUSED_OPTIONS:
                    refused.append(f"-o {key}")
                break
            if letter not in _FLAGS:
                break
    return refused


def check_options(options: list[str]) -> None:
    """Refuse (:class:`SshOptionError`, naming each) options that forward into the environment."""
    refused = refused_options(options)
    if refused:
        raise SshOptionError(
            f"ssh options {', '.join(refused)} are not allowed: the environment's sshd runs as "
            "the agent, so whatever is forwarded into it is the agent's "
            "(allowed: port forwards -L/-R/-D, -N, -v, and -o options other than forwarding)"
        )


def ssh_argv(
    identity: Path,
    certificate: Path,
    host: str,
    port: int,
    known_hosts: Path,
    options: list[str],
    command: list[str],
    proxy: str | None = None,
) -> list[str]:
    """The ssh command for a session's published port (loopback by default): ``options``
    before the destination, ``command`` after it. Agent and X11 forwarding are off, and
    options that would turn them on are refused (:func:`check_options`). ``proxy``: a
    ``ProxyCommand`` (:func:`proxy_command`) that makes the TCP connection instead of ssh;
    the destination and ``-p`` stay, so the host key is still the one pinned for
    ``[host]:port`` in ``known_hosts``."""
    check_options(options)
    ssh = shutil.which("ssh")
    if ssh is None:
        raise SshError("ssh is not on PATH (Debian: apt-get install openssh-client)")
    return [
        ssh, "-i", str(identity), "-o", f"CertificateFile={certificate}",
        "-o", "IdentitiesOnly=yes", "-o", f"UserKnownHostsFile={known_hosts}",
        "-o", "StrictHostKeyChecking=accept-new", *NO_FORWARDING,
        *(["-o", f"ProxyCommand={proxy}"] if proxy else []), "-p", str(port), *options,
        f"{USER}@{host}", *command,
    ]  # fmt: skip


# ``--host``: an IP address or a DNS name (it also goes into a ProxyCommand).
HOST_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252}[A-Za-z0-9])?", re.ASCII)


def checked_host(host: str) -> str:
    """``host`` if it is an IP address or a host name, else :class:`SshOptionError`."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not HOST_NAME.fullmatch(host):
            raise SshOptionError(
                f"--host {host!r} is not allowed (allowed: an IP address or a host name, "
                f"{HOST_NAME.pattern})"
            ) from None
    return host


def proxy_command(program: str, session: str, tenant: str | None, host: str) -> str:
    """ssh's ``ProxyCommand`` for ``dockyard ssh-proxy``: ssh runs it through the user's
    shell, so every word is checked against its grammar and quoted (``program``: the
    absolute path of the ``dockyard`` console script)."""
    if not SESSION_ID.fullmatch(session):
        raise SshError(f"session {session!r} is not allowed (allowed: {SESSION_ID.pattern})")
    if tenant is not None and not TENANT.fullmatch(tenant):
        raise SshError(f"tenant {tenant!r} is not allowed (allowed: {TENANT.pattern})")
    if not os.path.isabs(program):
        raise SshError(f"the ProxyCommand program {program!r} is not an absolute path")
    words = [program, "ssh-proxy", session, *(["--tenant", tenant] if tenant else [])]
    # ssh expands %-tokens (%h, %p, %%) in a ProxyCommand before the shell sees it.
    return shlex.join([*words, "--host", checked_host(host)]).replace("%", "%%")


CONNECT_SECONDS = 30
"""How long :func:`connect` retries a refused connection (an sshd starting after a cold
restore) and waits for the TCP handshake."""
CHUNK = 65536


def connect(host: str, port: int, seconds: float = CONNECT_SECONDS) -> socket.socket:
    """A TCP connection to ``host:port``; a refused one is retried for ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            made = socket.create_connection((host, port), timeout=seconds)
        except ConnectionRefusedError:
            if time.monotonic() >= deadline:
                raise SshError(
                    f"{host}:{port} refused the connection for {seconds:.0f} s"
                ) from None
            time.sleep(0.2)
        except OSError as exc:
            raise SshError(f"cannot connect to {host}:{port}: {exc.strerror or exc}") from None
        else:
            made.settimeout(None)
            return made


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def relay(connection: socket.socket, reading: int, writing: int) -> None:
    """Copy bytes both ways until the far side closes: ``reading`` (ssh's end of the pipe,
    the proxy's stdin) to ``connection``, and ``connection`` to ``writing``. The end of
    ``reading`` half-closes the connection (the far side sees EOF and finishes); the end
    of the connection, a reset or a closed ``writing`` ends the copy."""
    with selectors.DefaultSelector() as selector:
        selector.register(connection, selectors.EVENT_READ, "far")
        selector.register(reading, selectors.EVENT_READ, "near")
        try:
            while True:
                for key, _ in selector.select():
                    if key.data == "far":
                        data = connection.recv(CHUNK)
                        if not data:
                            return
                        _write_all(writing, data)
                        continue
                    data = os.read(reading, CHUNK)
                    if data:
                        connection.sendall(data)
                        continue
                    selector.unregister(reading)
                    connection.shutdown(socket.SHUT_WR)
        except OSError:  # a reset, a closed pipe: the copy is over either way
            return


def split_command(extra: list[str]) -> tuple[list[str], list[str]]:
    """``dockyard ssh S [ssh options] [--] [command...]``: the ssh options, then the remote
    command from the first word that is neither an option nor an option's value — how
    ssh itself reads ``ssh [options] destination [command]``."""
    words = list(extra)
    index = 0
    while index < len(words):
        word = words[index]
        if not word.startswith("-") or word == "-":
            break
        index += 1
        letters = word[1:]
        for position, letter in enumerate(letters):
            if letter in _WITH_VALUE:
                if position == len(letters) - 1:
                    index += 1  # the value is the next word
                break
            if letter not in _FLAGS:
                break
    return words[:index], words[index:]


def host_port(manifest: dict) -> int:
    for mapping in manifest["container"]["portMappings"]:
        if mapping["containerPort"] == CONTAINER_PORT:
            return int(mapping["hostPort"])
    raise SshError(
        f"session {manifest['sessionId']!r} has no SSH port (set ssh: true on its environment)"
    )
