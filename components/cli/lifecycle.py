"""A session's life: ``up``, ``down``, ``ls``, ``show``, ``refresh``, and ``validate`` (a
request or a stack file, checked without creating anything)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import typer

from ..config import ConfigError, stack_file
from ..errors import InvalidInput
from ..sessions import Sessions
from ..terminal import errors, warn
from .options import JsonFlag, RequestOption, TenantOption
from .output import emit, grid, line, manifest_table, ports, progress, working
from .remote import Lifecycle, ServerOption, sessions
from .request import SessionFlagMissing, other_problems, read_request, request_from_flags

verbs = typer.Typer()
"""Merged into the root command by :mod:`dockyard.cli`."""


@verbs.command()
def up(
    request_file: RequestOption = None,
    session: Annotated[str | None, typer.Option("--session", "-s", help="Session id.")] = None,
    cwd: Annotated[str | None, typer.Option(help="Project directory (default: here).")] = None,
    backend: Annotated[str | None, typer.Option(help="claude or codex.")] = None,
    image: Annotated[
        str | None, typer.Option(help="Image reference (default: the host's).")
    ] = None,
    port: Annotated[
        list[int] | None, typer.Option("--port", "-p", help="Container port to publish (repeat).")
    ] = None,
    volume: Annotated[
        list[str] | None, typer.Option("--volume", "-v", help="source:target[:ro] (repeat).")
    ] = None,
    env: Annotated[
        list[str] | None, typer.Option("--env", "-e", help="NAME=value (repeat).")
    ] = None,
    secret: Annotated[
        list[str] | None,
        typer.Option("--secret", help="Secret name, value from the environment (repeat)."),
    ] = None,
    tenant: TenantOption = None,
    profile: Annotated[str | None, typer.Option(help="Resource profile.")] = None,
    as_json: JsonFlag = False,
    server: ServerOption = None,
) -> None:
    """Create a session (or converge an existing one) and print its manifest."""
    with errors(as_json):
        try:
            request = request_from_flags(
                request_file,
                session,
                cwd,
                backend,
                image,
                port or [],
                volume or [],
                env or [],
                secret or [],
                tenant,
                profile,
            )
        except SessionFlagMissing as missing:
            if server is not None:  # the server is not asked for a request it cannot take
                raise
            others = other_problems(missing.request, lambda r: Sessions.default().plan(r))
            raise SessionFlagMissing(missing.request, others) from None
        lifecycle = sessions(server)
        with working("creating the session…", as_json):
            manifest = lifecycle.create(request, progress=progress(as_json))
        emit(manifest, as_json, manifest_table)


@verbs.command()
def down(
    session: str,
    tenant: TenantOption = None,
    no_backup: Annotated[
        bool,
        typer.Option("--no-backup", help="Skip the final backup (backup.onDestroy).", metavar=""),
    ] = False,
    as_json: JsonFlag = False,
    server: ServerOption = None,
) -> None:
    """Destroy a session: container, network, volumes, manifest and its stack."""
    with errors(as_json):
        sessions(server).destroy(
            session, tenant, progress=progress(as_json), final_backup=not no_backup
        )
        emit({"sessionId": session, "destroyed": True}, as_json, line(f"destroyed {session}"))


@verbs.command("ls")
def list_sessions(
    tenant: TenantOption = None, as_json: JsonFlag = False, server: ServerOption = None
) -> None:
    """List this machine's sessions (or the server's)."""
    with errors(as_json):
        rows = sessions(server).list(tenant)

        def table(data: list[dict[str, Any]]) -> None:
            grid(
                ("session", "tenant", "container", "ports", "created"),
                (
                    (
                        row["sessionId"],
                        row["tenant"] or "-",
                        row.get("container", "?"),
                        ports(row.get("ports", []), "->"),
                        row["createdAt"],
                    )
                    for row in data
                ),
            )

        emit(rows, as_json, table)


def _manifest_verb(
    name: str,
    summary: str,
    act: Callable[[Lifecycle, str, str | None, Callable[[str], None]], Any],
) -> None:
    """Register ``dockyard NAME SESSION``: ``act`` on the session (this machine's, or the
    server's with ``--server``), then its manifest printed (a table, else JSON)."""

    @verbs.command(name, help=summary)
    def verb(
        session: str,
        tenant: TenantOption = None,
        as_json: JsonFlag = False,
        server: ServerOption = None,
    ) -> None:
        with errors(as_json):
            manifest = act(sessions(server), session, tenant, progress(as_json))
            emit(manifest, as_json, manifest_table)


_manifest_verb(
    "show",
    "Print a session's manifest.",
    lambda found, session, tenant, _shown: found.get(session, tenant),
)
_manifest_verb(
    "refresh",
    "Recreate the session's container, keeping its workspace.",
    lambda found, session, tenant, shown: found.refresh(session, tenant, progress=shown),
)


@verbs.command()
def validate(
    request_file: RequestOption = None,
    stack: Annotated[
        str | None, typer.Option("--stack", help="A stacks/Pulumi.<stack>.yaml file.")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Check a request or a stack file; list every problem at once. Creates nothing."""
    with errors(as_json):
        if (request_file is None) == (stack is None):
            raise InvalidInput("give exactly one of --request FILE or --stack FILE")
        if stack is not None:
            config = stack_file(stack, check_secrets=False, label=f"--stack {stack}")
            # A named secret that is not set yet: the file is valid, the run would stop
            # (docs/stacks.md); the only difference of the second check is that one.
            try:
                stack_file(stack, label=f"--stack {stack}")
                unset: list[str] = []
            except ConfigError as error:
                unset = error.problems
            for problem in unset:
                warn(problem)
            result = {
                "valid": True,
                "stack": config.stack,
                "sessions": [e.session_id for e in config.environments],
                "warnings": unset,
            }
        else:
            session_plan, _ = Sessions.default().plan(read_request(str(request_file)))
            result = {
                "valid": True,
                "stack": session_plan.stack_name,
                "sessions": [session_plan.session_id],
                "warnings": [],
            }
        emit(result, as_json, line("valid"))
