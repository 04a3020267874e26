"""Instant sessions (issue 29): ``pause``, ``resume``, ``hibernate``, ``fork`` and the ``snapshot`` group
(``snapshot create|ls|rm``; ``snapshots`` stays the list of a session's restic backups).
The service layer does the work: :mod:`dockyard.sessions.pause` and
:mod:`dockyard.sessions.hibernate` and :mod:`dockyard.sessions.snapshots`."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from ..sessions import Sessions
from ..terminal import errors
from .options import JsonFlag, TenantOption
from .output import emit, grid, manifest_table, out, progress, working

verbs = typer.Typer()
"""``pause``, ``resume``, ``hibernate`` and ``fork``, merged into the root command by :mod:`dockyard.cli`."""
snapshot_verbs = typer.Typer(
    help="Snapshots of a session: its container layer and volumes (docs/instant-sessions.md).",
    no_args_is_help=True,
)
"""``dockyard snapshot create|ls|rm``."""
pool_verbs = typer.Typer(
    help="Warm pools of ready sandboxes (pools: in the host settings; docs/instant-sessions.md).",
    no_args_is_help=True,
)
"""``dockyard pool ls|refill``."""


def _state(data: dict[str, Any]) -> None:
    moved = "" if data["changed"] else f" (already {data['status']})"
    out.print(f"{data['sessionId']}: {data['status']}{moved}")
    if data.get("detail"):
        out.print(f"  {data['detail']}")


@verbs.command()
def pause(session: str, tenant: TenantOption = None, as_json: JsonFlag = False) -> None:
    """Pause the session: its processes stop where they are, memory kept (no CPU)."""
    with errors(as_json):
        emit(Sessions.default().pause(session, tenant).as_dict(), as_json, _state)


@verbs.command()
def resume(session: str, tenant: TenantOption = None, as_json: JsonFlag = False) -> None:
    """Resume a paused session where it stopped, or a hibernated one from its checkpoint."""
    with errors(as_json):
        emit(Sessions.default().resume(session, tenant).as_dict(), as_json, _state)


@verbs.command()
def hibernate(session: str, tenant: TenantOption = None, as_json: JsonFlag = False) -> None:
    """Hibernate the session: processes and memory checkpointed to disk, container stopped.

    Only where the host can checkpoint (CRIU and the engine's experimental mode); elsewhere
    the answer says what was measured and what to do. `dockyard resume` restores it."""
    with errors(as_json), working(f"hibernating {session}…", as_json):
        emit(Sessions.default().hibernate(session, tenant).as_dict(), as_json, _state)


@verbs.command()
def fork(
    session: str,
    as_: Annotated[str, typer.Option("--as", help="The new session's id.")],
    snapshot: Annotated[
        str | None, typer.Option(help="Fork from this snapshot (default: one taken now).")
    ] = None,
    tenant: TenantOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Create --as NEW with SESSION's files and packages, and an identity of its own.

    Its own id, ports, secrets, network and SSH host key; secret values come from the
    environment, as for `dockyard up`."""
    with errors(as_json), working(f"forking {session} as {as_}…", as_json):
        manifest = Sessions.default().fork(
            session, as_, tenant, snapshot=snapshot, progress=progress(as_json)
        )
        emit(manifest, as_json, manifest_table)


def _rows(data: list[dict[str, Any]]) -> None:
    grid(
        ("snapshot", "tenant", "of session", "kind", "volumes", "created"),
        (
            [
                r["name"],
                r["tenant"] or "-",
                r["session"],
                r["kind"],
                ",".join(r["volumes"]) or "-",
                r["createdAt"],
            ]
            for r in data
        ),
    )


@snapshot_verbs.command("create")
def create(session: str, name: str, tenant: TenantOption = None, as_json: JsonFlag = False) -> None:
    """Snapshot SESSION as NAME: its container layer and its workspace, config and home."""
    with errors(as_json):
        taken = Sessions.default().snapshot(session, name, tenant).as_dict()
        emit(taken, as_json, lambda r: _rows([r]))


@snapshot_verbs.command("ls")
def listing(tenant: TenantOption = None, as_json: JsonFlag = False) -> None:
    """List snapshots (a tenant's, or every one)."""
    with errors(as_json):
        emit([s.as_dict() for s in Sessions.default().snapshots(tenant)], as_json, _rows)


@snapshot_verbs.command("rm")
def remove(name: str, tenant: TenantOption = None, as_json: JsonFlag = False) -> None:
    """Remove a snapshot (refused while a session runs its image)."""
    with errors(as_json):
        removed = Sessions.default().remove_snapshot(name, tenant).as_dict()
        emit(removed, as_json, lambda r: out.print(f"snapshot {r['name']} removed"))


def _pools(data: list[dict[str, Any]]) -> None:
    grid(
        ("pool", "free", "being made", "min", "max"),
        ([str(r[k]) for k in ("pool", "free", "making", "min", "max")] for r in data),
    )


@pool_verbs.command("ls")
def pools(as_json: JsonFlag = False) -> None:
    """Each warm pool of the host settings: free members, members being made, min, max."""
    with errors(as_json):
        emit(Sessions.default().pools(), as_json, _pools)


@pool_verbs.command("refill")
def refill(as_json: JsonFlag = False) -> None:
    """Top every pool up to its min now; members of older settings or image are re-rolled.

    `dockyard serve` does this every few seconds."""
    with errors(as_json), working("refilling the warm pools…", as_json):
        done = Sessions.default().refill_pools(progress(as_json))
        emit(
            {"made": done.made, "rerolled": done.rerolled, "failed": done.failed},
            as_json,
            lambda r: out.print(
                f"made {len(r['made'])}, re-rolled {len(r['rerolled'])}"
                + "".join(f"\n  not done: {line}" for line in r["failed"])
            ),
        )
        if done.failed:
            raise typer.Exit(1)
