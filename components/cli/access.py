"""Into a running session: ``attach`` (its tmux), ``ssh`` (a short-lived certificate), and
``logs``. Each checks the session against the engine, then the terminal becomes the
program's (``docker`` or ``ssh``, an argv list, no shell)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Annotated

import typer

from .. import ssh
from ..sessions import DriverError, Sessions
from ..sessions import audit as audit_log
from ..sessions.request import SESSIONS_STACK
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
        port = ssh.host_port(manifest)
        with audit_log.recorded(
            sessions.where.audit_log,
            "ssh-certificate",
            session=session,
            tenant=record.tenant,
            host=record.host,
            stack=record.stack_name,
        ) as entry:
            # The CA is the stack configuration's: one per tenant (or "sessions").
            cert = ssh.issue(
                record.tenant or SESSIONS_STACK,
                session,
                key.with_name(key.name + ".pub"),
                minutes,
                caller=audit_log.actor(),
            )
            # The audit line's free-text field: what was issued, never key material.
            entry["detail"] = (
                f"key id {cert.key_id}, principal {cert.principal}, {cert.minutes} min"
            )
        argv = ssh.ssh_argv(
            key,
            cert.path,
            host,
            port,
            sessions.where.state / "ssh_known_hosts",
            options,
            [command] if command else remote,
        )
        if print_only:
            print(" ".join(argv))
            return
        os.execv(argv[0], argv)  # noqa: S606 - an argv list, no shell: the terminal becomes ssh's


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
