"""Into a running session: ``attach`` (its tmux), ``ssh`` (a short-lived certificate), and
``logs``. Each checks the session against the engine, then the terminal becomes the
program's (``docker`` or ``ssh``, an argv list, no shell). ``ssh-proxy`` is the
``ProxyCommand`` ``ssh`` runs: it wakes a paused or hibernated session, then carries the
connection."""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import sys
from pathlib import Path
from typing import Annotated

import typer

from .. import ssh
from ..sessions import DriverError, Sessions, certificates
from ..terminal import errors
from .options import TenantOption

verbs = typer.Typer()
"""Merged into the root command by :mod:`dockyard.cli`."""


def _docker(host: str) -> list[str]:
    docker = shutil.which("docker")
    if docker is None:
        raise DriverError("the docker CLI is not on PATH")
    return [docker, *([] if host == "local" else ["-H", host])]


@verbs.command()
def attach(session: str, tenant: TenantOption = None) -> None:
    """Attach to the session's tmux session `main` (docker exec)."""
    with errors(False):
        sessions = Sessions.default()
        _, manifest = sessions.locate(session, tenant)  # checked against the engine
        record = sessions.audit_attach(session, tenant)
        argv = [
            *_docker(record.host),
            "exec",
            "-it",
            manifest["container"]["id"],
            "tmux",
            "attach",
            "-t",
            "main",
        ]
        os.execv(argv[0], argv)  # noqa: S606 - an argv list, no shell: the terminal becomes docker's


@verbs.command("ssh", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def ssh_session(
    ctx: typer.Context,
    session: str,
    identity: Annotated[
        Path, typer.Option("--identity", "-i", help="Your private key; its .pub gets signed.")
    ] = Path("~/.ssh/id_ed25519"),
    minutes: Annotated[
        int, typer.Option(help=f"Certificate lifetime (1-{ssh.MAX_MINUTES} minutes).")
    ] = ssh.DEFAULT_MINUTES,
    host: Annotated[
        str, typer.Option(help="Address the session's ports are published on.")
    ] = "127.0.0.1",
    print_only: Annotated[
        bool,
        typer.Option("--print", help="Issue the certificate, print the ssh command.", metavar=""),
    ] = False,
    command: Annotated[
        str | None, typer.Option("--command", help="Run this instead of a login shell.")
    ] = None,
    tenant: TenantOption = None,
) -> None:
    """SSH into a session (ssh: true) with a certificate valid for minutes, bound to your
    key and the session; extra arguments are ssh options (-L/-R/-D forwards, -N, -o)."""
    with errors(False):
        sessions = Sessions.default()
        record, manifest = sessions.locate(session, tenant)  # checked against the engine
        key = identity.expanduser()
        options, remote = ssh.split_command(list(ctx.args))
        if command and remote:
            raise ssh.SshOptionError("give the remote command once: --command CMD or -- CMD")
        ssh.check_options(options)  # before a certificate is issued
        # Every connection goes through `dockyard ssh-proxy`, which wakes the session
        # (the printed command too, run later while the idle monitor has paused it).
        proxy = ssh.proxy_command(_program(), record.session_id, record.tenant, host)
        access = certificates.issue(
            sessions, record, manifest, key.with_name(key.name + ".pub"), minutes
        )
        argv = ssh.ssh_argv(
            key,
            access.certificate.path,
            host,
            access.port,
            access.known_hosts,
            options,
            [command] if command else remote,
            proxy=proxy,
        )
        if print_only:
            print(shlex.join(argv))
            return
        os.execv(argv[0], argv)  # noqa: S606 - an argv list, no shell: the terminal becomes ssh's


def _program() -> str:
    """The absolute path of the ``dockyard`` console script (what ssh's ProxyCommand runs)."""
    script = Path(sys.argv[0])
    if script.name == "dockyard" and script.is_file():
        return os.path.abspath(script)
    beside = Path(sys.executable).with_name("dockyard")
    if beside.is_file():
        return os.path.abspath(beside)
    found = shutil.which("dockyard")
    if found is None:
        raise ssh.SshError(
            "the dockyard console script is not found (beside the Python running this, or "
            "on PATH); install dockyard so ssh can run `dockyard ssh-proxy`"
        )
    return os.path.abspath(found)


@verbs.command("ssh-proxy")
def ssh_proxy(
    session: str,
    tenant: TenantOption = None,
    host: Annotated[
        str, typer.Option(help="Address the session's ports are published on.")
    ] = "127.0.0.1",
) -> None:
    """ssh's ProxyCommand (what `dockyard ssh` and its --print use): wakes the session if it
    is paused or hibernated, then copies bytes between stdin/stdout and its SSH port."""
    with errors(False):
        ssh.checked_host(host)
        port = certificates.proxy_port(Sessions.default(), session, tenant)
        connection = ssh.connect(host, port)
    with contextlib.closing(connection):
        ssh.relay(connection, sys.stdin.fileno(), sys.stdout.fileno())


@verbs.command()
def logs(
    session: str,
    tenant: TenantOption = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new lines.", metavar="")
    ] = False,
    tail: Annotated[int | None, typer.Option(help="Last N lines.")] = None,
) -> None:
    """Print the session container's logs."""
    with errors(False):
        sessions = Sessions.default()
        record, manifest = sessions.locate(session, tenant)  # checked against the engine
        argv = [
            *_docker(record.host),
            "logs",
            *(["--follow"] if follow else []),
            *(["--tail", str(tail)] if tail is not None else []),
            manifest["container"]["id"],
        ]
        os.execv(argv[0], argv)  # noqa: S606 - an argv list, no shell: the terminal becomes docker's
