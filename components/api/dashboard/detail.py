"""One session's page: its manifest, state, log tail, stats, audit history and actions
(refresh, pause, resume, backup, destroy with a confirmation naming the session)."""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import Callable, Coroutine
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from ...errors import DockyardError, InvalidInput
from ...sessions import audit, backups
from ...sessions import pause as pausing
from ...sessions.stats_history import sample_of
from ...sessions.status import container_logs, engine_state
from ..context import Context
from ..principal import mark
from .bars import bar, chart
from .history import history_of
from .live import stream_of
from .login import viewer_of
from .logtail import TAIL_LINES
from .on_session import OnSession, part_of, posted_on, problems, session_page
from .pages import (
    SECURITY_HEADERS,
    Viewer,
    ctx_of,
    error_page,
    page,
    port_host,
    scope_of,
    suffix_of,
    to_login,
    to_session,
)

router = APIRouter(include_in_schema=False)

LOG_LINES = TAIL_LINES
AUDIT_LINES = 30
BACKUP_ROWS = 20
"""Backups listed on the detail page: the newest."""
BACKUP_ID = re.compile(r"[0-9a-f]{8,64}|latest")
"""A backup (restic snapshot) id as the restore form may name it."""
"""The detail page's audit history: the session's newest lines (page views left out)."""
DONE = {
    "refreshed": "refreshed",
    "paused": "paused",
    "resumed": "resumed",
    "backed-up": "backed up",
    "restored": "restored from its backup",
}
"""What a detail page's notice may say after an action (``?done=``; nothing else is shown)."""


def _logs(ctx: Context, session: str, scope: str | None) -> str:
    """The container's last lines (what `dockyard logs --tail N` prints)."""
    record, manifest = ctx.sessions.locate(session, scope)
    return container_logs(manifest["container"]["id"], record.host, LOG_LINES)


def _detail(ctx: Context, session: str, scope: str | None) -> dict[str, Any]:
    record = ctx.sessions.registry.find(session, scope)
    manifest: dict[str, Any] = dict(ctx.sessions.get(session, scope))
    state = engine_state(manifest["container"]["id"], record.host)
    try:
        # The plan destroy and pause read (secret names only): the engine backend and
        # whether the host settings have a backup repository.
        config = pausing.plan_of(ctx.sessions, record).config
        backend, backup_on = config.backend, config.backup is not None
    except DockyardError:
        backend, backup_on = None, False
    return {
        "record": record,
        "manifest": manifest,
        "state": state,
        "can_pause": backend == "docker" and state["status"] == pausing.RUNNING,
        "can_resume": backend == "docker" and state["status"] == pausing.PAUSED,
        "backup_on": backup_on,
        "history": _history(ctx, record.session_id, record.tenant),
    }


def _kept(ctx: Context, session: str, scope: str | None) -> dict[str, Any]:
    """The session's backups (newest first; with the host's backup repository) and the
    engine snapshots taken of it, each with why it cannot be listed."""
    record = ctx.sessions.registry.find(session, scope)
    tenant = record.tenant
    try:
        backup_on = pausing.plan_of(ctx.sessions, record).config.backup is not None
    except DockyardError:
        backup_on = False
    kept: dict[str, Any] = {"record": record, "backup_on": backup_on}
    kept.update(backups=[], backups_problem="", snapshots=[])
    kept["snapshots_problem"] = ""
    if backup_on:
        try:
            found = backups.snapshots(backups.target(ctx.sessions, session, scope))
            kept["backups"] = [backups.as_dict(s) for s in found][::-1][:BACKUP_ROWS]
        except DockyardError as error:
            kept["backups_problem"] = "; ".join(error.problems)
    try:
        kept["snapshots"] = [
            s.as_dict() for s in ctx.sessions.snapshots(tenant) if s.session == session
        ]
    except DockyardError as error:
        kept["snapshots_problem"] = "; ".join(error.problems)
    return kept


def _history(ctx: Context, session: str, tenant: str | None) -> list[dict[str, Any]]:
    """The session's audit lines, newest first: its lifecycle actions and every request
    that changed something (page views and polls, GETs, are left out)."""
    lines = audit.read(ctx.sessions.where.audit_log, session=session, tenant=tenant)
    kept = [
        line
        for line in lines
        if (line.get("tenant") or None) == tenant
        and not (line.get("action") == "api" and str(line.get("detail", "")).startswith("GET "))
    ]
    return kept[::-1][:AUDIT_LINES]


def _stats(ctx: Context, session: str, scope: str | None) -> dict[str, Any]:
    """The session's stats from the service layer (what GET /api/sessions/{id}/stats
    answers) with its memory and disk as bars against their limits."""
    workspace = ctx.sessions.workspace(session, scope)
    try:
        stats = workspace.stats()
    finally:
        with contextlib.suppress(Exception):
            workspace.client.close()
    memory, disk = stats.get("memory") or {}, stats.get("disk") or {}
    return {
        **stats,
        "memory_bar": bar(memory.get("used"), memory.get("limit")),
        "disk_bar": bar(disk.get("used"), disk.get("total")),
    }


@router.get("/sessions/{session_id}")
async def detail_page(session_id: str, request: Request) -> Response:
    viewer = await viewer_of(request)
    if viewer is None:
        return to_login()
    scope = scope_of(request, viewer)
    mark(request, session_id, scope)
    ctx = ctx_of(request)
    try:
        found = await ctx.call(_detail, ctx, session_id, scope)
    except DockyardError as error:
        return error_page(request, viewer, error)
    try:
        logs = await ctx.call(_logs, ctx, session_id, scope)
    except DockyardError as error:  # the page still shows what the service layer knows
        logs = "(no logs: " + "; ".join(error.problems) + ")"
    # The engine takes about 2 s to sample a container's stats: the page's script loads
    # them from /stats after the page; ?stats=now renders them in it (without the script).
    tenant = found["record"].tenant
    stats: dict[str, Any] = {
        "stats": None,
        "stats_problem": "",
        "stats_later": True,
        "chart": _chart(request, session_id, tenant),
    }
    if request.query_params.get("stats") == "now":
        stats = await _stats_of(request, session_id, scope, found["state"]["status"], tenant)
    # Listing snapshots asks each engine for its images by label (seconds with hundreds of
    # images): the page's script loads the list after the page; ?kept=now renders it in.
    kept: dict[str, Any] = {"kept_later": True}
    if request.query_params.get("kept") == "now":
        listed = await ctx.call(_kept, ctx, session_id, scope)
        kept = {k: v for k, v in listed.items() if k not in ("record", "backup_on")}
    record = found["record"]
    ssh = f"dockyard ssh {session_id}" + (f" --tenant {record.tenant}" if record.tenant else "")
    return page(
        request,
        "detail.html",
        viewer=viewer,
        session=session_id,
        suffix=suffix_of(viewer, scope),
        record=record,
        manifest=found["manifest"],
        manifest_json=json.dumps(found["manifest"], indent=2, sort_keys=True),
        state=found["state"],
        host_name=port_host(record.host, request),
        ssh=ssh,
        ssh_enabled=bool(record.request.get("ssh")),
        logs=logs,
        log_lines=LOG_LINES,
        **stats,
        stats_now=f"/sessions/{session_id}?"
        + urlencode(
            {**({"tenant": scope} if viewer.principal.admin and scope else {}), "stats": "now"}
        ),
        can_pause=found["can_pause"],
        can_resume=found["can_resume"],
        backup_on=found["backup_on"],
        history=found["history"],
        **kept,
        kept_now=f"/sessions/{session_id}?"
        + urlencode(
            {**({"tenant": scope} if viewer.principal.admin and scope else {}), "kept": "now"}
        ),
        done=DONE.get(request.query_params.get("done", ""), ""),
        **await stream_of(
            request, {"session": session_id, "tenant": scope if viewer.principal.admin else None}
        ),
    )


async def _stats_of(
    request: Request, session: str, scope: str | None, status: str | None, tenant: str | None
) -> dict[str, Any]:
    """The stats part's values: the stats (a sample for the session's ring too), or why
    there are none; and the chart of the ring's last hour."""
    history, ctx = history_of(request), ctx_of(request)
    values: dict[str, Any] = {"stats": None, "stats_problem": ""}
    if status not in (pausing.RUNNING, pausing.PAUSED):
        values["stats_problem"] = f"the container is {status}, not running"
    else:
        try:
            values["stats"] = await ctx.call(_stats, ctx, session, scope)
            history.record(tenant, session, sample_of(values["stats"], time.time()))
        except DockyardError as error:
            values["stats_problem"] = "; ".join(error.problems)
    return {**values, "chart": _chart(request, session, tenant)}


def _chart(request: Request, session: str, tenant: str | None) -> dict[str, Any] | None:
    return chart(history_of(request).series(tenant, session), time.time())


@router.get("/sessions/{session_id}/stats")
async def stats_fragment(session_id: str, request: Request) -> Response:
    """The detail page's stats part alone (its script loads it after the page, then
    every 15 s)."""
    on, found = await part_of(request, session_id, _state)
    values = await _stats_of(request, session_id, on.scope, found["status"], found["tenant"])
    return page(request, "stats.html", viewer=on.viewer, session=session_id, **values)


def _state(ctx: Context, session: str, scope: str | None) -> dict[str, Any]:
    manifest = ctx.sessions.get(session, scope)
    record = ctx.sessions.registry.find(session, scope)
    return {**engine_state(manifest["container"]["id"], record.host), "tenant": record.tenant}


@router.get("/sessions/{session_id}/kept")
async def kept_fragment(session_id: str, request: Request) -> Response:
    """The detail page's backups and snapshots alone (its script loads them after the page)."""
    on, kept = await part_of(request, session_id, _kept)
    suffix = suffix_of(on.viewer, on.scope)
    return page(request, "kept.html", viewer=on.viewer, session=session_id, suffix=suffix, **kept)


@router.get("/sessions/{session_id}/logs")
async def logs_fragment(session_id: str, request: Request) -> Response:
    viewer = await viewer_of(request)
    if viewer is None:
        return Response(status_code=401, headers=SECURITY_HEADERS)
    ctx = ctx_of(request)
    try:
        text = await ctx.call(_logs, ctx, session_id, scope_of(request, viewer))
    except DockyardError as error:
        return problems(error)
    return Response(text, media_type="text/plain; charset=utf-8", headers=SECURITY_HEADERS)


def _backup(ctx: Context, session: str, scope: str | None) -> Any:
    """``dockyard backup SESSION``: the service layer's backup of the session's workspace,
    for a session of the viewer's tenant only (the verb's target would otherwise name a
    destroyed session's repository: another tenant's answers "not found" here)."""
    ctx.sessions.registry.find(session, scope)
    return backups.run_backup(ctx.sessions, backups.target(ctx.sessions, session, scope))


Action = Callable[[Context, str, str | None, dict[str, str]], Any]
"""A form's service-layer call on a session: (context, session, the viewer's tenant, the
posted form), made in a worker thread."""

ACTIONS: dict[str, tuple[Action, str]] = {
    "refresh": (lambda ctx, session, scope, _: ctx.sessions.refresh(session, scope), "refreshed"),
    "pause": (lambda ctx, session, scope, _: ctx.sessions.pause(session, scope), "paused"),
    "resume": (lambda ctx, session, scope, _: ctx.sessions.resume(session, scope), "resumed"),
    "backup": (lambda ctx, session, scope, _: _backup(ctx, session, scope), "backed-up"),
}
"""The detail page's buttons: each a service-layer call and the notice it leaves."""


async def _posted(
    session_id: str,
    request: Request,
    action: Action,
    after: Callable[[OnSession], Response],
    *,
    confirm: bool = False,
) -> Response:
    """A form's action on the session, posted with the login's CSRF token, in the viewer's
    tenant (``confirm``: with the session's name typed again); ``after`` answers once it
    is done, the error page if it failed."""
    on = await posted_on(request, session_id)
    if confirm and on.form.get("confirm") != session_id:
        return _not_confirmed(request, on.viewer, session_id)
    try:
        await on.ctx.call(action, on.ctx, session_id, on.scope, on.form)
    except DockyardError as error:
        return error_page(request, on.viewer, error)
    return after(on)


def _button(verb: str) -> Callable[[str, Request], Coroutine[Any, Any, Response]]:
    """A button's route: its action, then the session's page with its notice."""
    action, done = ACTIONS[verb]

    async def act(session_id: str, request: Request) -> Response:
        return await _posted(
            session_id,
            request,
            action,
            lambda on: to_session(session_id, on.viewer, on.scope, done),
        )

    act.__name__ = verb
    return act


for _verb in ACTIONS:
    router.add_api_route(f"/sessions/{{session_id}}/{_verb}", _button(_verb), methods=["POST"])


async def _confirmation(
    request: Request,
    session_id: str,
    template: str,
    check: Callable[[], Any] = lambda: None,
    **values: Any,
) -> Response:
    """A confirmation page: it names the session (and its tenant) before anything goes,
    and asks for the session's name typed again."""
    return await session_page(
        request,
        session_id,
        lambda on, record: page(
            request,
            template,
            viewer=on.viewer,
            session=session_id,
            record=record,
            suffix=suffix_of(on.viewer, on.scope),
            **values,
        ),
        check,
    )


@router.get("/sessions/{session_id}/restore")
async def restore_page(session_id: str, request: Request) -> Response:
    """The restore's confirmation: it names the session and the backup."""
    snapshot = request.query_params.get("snapshot", "")
    return await _confirmation(
        request, session_id, "restore.html", lambda: _backup_id(snapshot), snapshot=snapshot
    )


def _backup_id(snapshot: str) -> str:
    if not BACKUP_ID.fullmatch(snapshot):
        raise InvalidInput(
            "request",
            [
                f"snapshot: {snapshot[:80]!r} is not a backup id (allowed: 8 to 64 hex "
                "digits from the session's list of backups, or 'latest')"
            ],
        )
    return snapshot


def _restore(ctx: Context, session: str, scope: str | None, form: dict[str, str]) -> Any:
    """``dockyard restore SESSION SNAPSHOT [--force]``: the service layer's restore of the
    session's own backup (the form's ``snapshot``) into its workspace (another tenant's
    session answers "not found")."""
    snapshot = _backup_id(form.get("snapshot", ""))
    ctx.sessions.registry.find(session, scope)
    who = backups.target(ctx.sessions, session, scope)
    return backups.restore(ctx.sessions, who, snapshot, None, form.get("force") == "yes")


@router.post("/sessions/{session_id}/restore")
async def restore(session_id: str, request: Request) -> Response:
    return await _posted(
        session_id,
        request,
        _restore,
        lambda on: to_session(session_id, on.viewer, on.scope, "restored"),
        confirm=True,
    )


def _not_confirmed(request: Request, viewer: Viewer, session_id: str) -> Response:
    return page(
        request,
        "error.html",
        422,
        viewer,
        title="Not confirmed",
        problems=[
            f"confirm: not the session's name (allowed: {session_id!r}, from the confirmation page)"
        ],
    )


@router.get("/sessions/{session_id}/destroy")
async def destroy_page(session_id: str, request: Request) -> Response:
    return await _confirmation(request, session_id, "confirm.html")


def _destroyed(session_id: str) -> Response:
    """After a destroy: the sessions table, saying which one went."""
    return RedirectResponse(
        "/?" + urlencode({"destroyed": session_id}), status_code=303, headers=SECURITY_HEADERS
    )


@router.post("/sessions/{session_id}/destroy")
async def destroy(session_id: str, request: Request) -> Response:
    return await _posted(
        session_id,
        request,
        lambda ctx, session, scope, _: ctx.sessions.destroy(session, scope),
        lambda _: _destroyed(session_id),
        confirm=True,
    )
