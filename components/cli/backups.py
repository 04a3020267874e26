"""A session's workspace backups and the audit trail: ``backup``, ``restore``,
``snapshots`` and ``audit`` (the service layer's :mod:`dockyard.sessions.backups` and
:mod:`dockyard.sessions.audit`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer

from ..sessions import Sessions
from ..sessions import audit as audit_log
from ..sessions import backups as backup_sessions
from ..terminal import errors
from .options import JsonFlag, StackFileOption, TenantOption
from .output import emit, grid, out, progress

verbs = typer.Typer()
"""Merged into the root command by :mod:`dockyard.cli`."""


@verbs.command()
def audit(
    session: Annotated[str | None, typer.Option(help="Only this session.")] = None,
    tenant: TenantOption = None,
    action: Annotated[
        str | None, typer.Option(help="Only this action (create, backup, api...).")
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(help="Only lines at or after this time (ISO 8601; no zone: UTC)."),
    ] = None,
    limit: Annotated[
        int | None, typer.Option(min=1, help="At most this many lines: the newest.")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Show the audit trail (JSON lines of every lifecycle action)."""
    with errors(as_json):
        sessions = Sessions.default()
        entries = audit_log.read(
            sessions.where.audit_log,
            session=session,
            tenant=tenant,
            action=action,
            since=None if since is None else audit_log.moment(since, "--since"),
            limit=limit,
        )
        columns = ("time", "actor", "action", "session", "tenant", "result", "duration_ms")

        def table(data: list[dict[str, Any]]) -> None:
            grid(
                ("time", "actor", "action", "session", "tenant", "result", "ms"),
                (
                    [str(entry.get(k) if entry.get(k) is not None else "-") for k in columns]
                    for entry in data
                ),
            )

        emit(entries, as_json, table)


@contextmanager
def _backups_of(
    session: str, tenant: str | None, stack: str | None, as_json: bool
) -> Iterator[tuple[Sessions, backup_sessions.Target]]:
    """The session whose backups a verb acts on, inside the verb's error helper."""
    with errors(as_json):
        sessions = Sessions.default()
        yield sessions, backup_sessions.target(sessions, session, tenant, stack)


def _backups_verb(
    name: str,
    summary: str,
    act: Callable[[Sessions, backup_sessions.Target, Callable[[str], None]], Any],
    show: Callable[[str, Any], None],
) -> None:
    """Register ``dockyard NAME SESSION``, a verb on one session's backups (its own restic
    repository): ``act`` gives the result, ``show`` prints it as a table (else JSON)."""

    @verbs.command(name, help=summary)
    def verb(
        session: str,
        tenant: TenantOption = None,
        stack: StackFileOption = None,
        as_json: JsonFlag = False,
    ) -> None:
        with _backups_of(session, tenant, stack, as_json) as (sessions, who):
            emit(act(sessions, who, progress(as_json)), as_json, lambda data: show(session, data))


_backups_verb(
    "backup",
    "Back the session's workspace up now (encrypted, to its own restic repository).",
    lambda sessions, who, shown: backup_sessions.as_dict(
        backup_sessions.run_backup(sessions, who, progress=shown)
    ),
    lambda session, r: out.print(
        f"{session}: snapshot {r['snapshot']} ({r['files']} files, {r['bytes']} bytes, "
        f"{r['added_bytes']} new)"
    ),
)


@verbs.command()
def restore(
    session: str,
    snapshot: Annotated[str, typer.Option(help="A snapshot id (prefix) or latest.")] = "latest",
    into: Annotated[
        str | None, typer.Option("--into", help="Restore into this session's workspace instead.")
    ] = None,
    force: Annotated[
        bool,
        typer.Option(
            help="Replace a non-empty workspace (its content is backed up first).", metavar=""
        ),
    ] = False,
    tenant: TenantOption = None,
    stack: StackFileOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Restore a backup into the session's workspace (or --into another's), verified."""
    with _backups_of(session, tenant, stack, as_json) as (sessions, who):
        other = backup_sessions.target(sessions, into, tenant, stack) if into else None
        result = backup_sessions.restore(
            sessions, who, snapshot, other, force, progress=progress(as_json)
        )
        emit(
            backup_sessions.as_dict(result),
            as_json,
            lambda r: out.print(
                f"{r['session']}: restored snapshot {r['snapshot'][:8]} of {r['source']} "
                f"({r['files']} files, {r['bytes']} bytes, verified)"
            ),
        )


_backups_verb(
    "snapshots",
    "List the session's backups, oldest first.",
    lambda _sessions, who, _shown: [
        backup_sessions.as_dict(s) for s in backup_sessions.snapshots(who)
    ],
    lambda _session, rows: grid(
        ("snapshot", "time", "tags"),
        ((r["short_id"], r["time"], ", ".join(r["tags"])) for r in rows),
    ),
)
