"""A new session from one of the session's snapshots: the form on the detail page (its
snapshots' list) and ``POST /sessions/{id}/fork``, which calls the service's fork from
that snapshot (:meth:`dockyard.sessions.Sessions.fork`, what ``dockyard fork SESSION
--snapshot NAME --as NEW`` calls) in the viewer's tenant. The new id is checked by the
service's own rule (:func:`dockyard.sessions.snapshots.validate_name`, the CLI's message
word for word) and its problem is shown beside the field; another tenant's session or
snapshot answers "not found" like a missing one; the result is the new session's page."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from ...errors import DockyardError, InvalidInput
from ...sessions import snapshots as snapshotting
from ..context import Context
from .on_session import posted_on, session_page
from .pages import Viewer, error_page, page, suffix_of, to_session

router = APIRouter(include_in_schema=False)

FIELD = "as"
"""The new session id's field: the CLI's ``--as``, the key its problems name."""


def _checked(snapshot: str, as_: str) -> None:
    """Both names by the service's rule, every problem at once (the fork checks them too,
    one at a time)."""
    problems: list[str] = []
    for name, key in ((as_, FIELD), (snapshot, "snapshot")):
        try:
            snapshotting.validate_name(name, key)
        except InvalidInput as error:
            problems += error.problems
    if problems:
        raise InvalidInput("request", problems)


def _fork(ctx: Context, session: str, scope: str | None, snapshot: str, as_: str) -> Any:
    """The service's fork of ``session`` (found in ``scope`` first: another tenant's is
    not found before anything is checked) from ``snapshot`` as ``as_``; its manifest."""
    ctx.sessions.registry.find(session, scope)
    _checked(snapshot, as_)
    return ctx.sessions.fork(session, as_, scope, snapshot=snapshot)


def _form(
    request: Request,
    viewer: Viewer,
    session: str,
    scope: str | None,
    form: dict[str, str],
    status: int = 200,
    problems: list[str] | None = None,
) -> Response:
    placed = [p for p in problems or [] if p.split(":", 1)[0] == FIELD]
    general = [p for p in problems or [] if p not in placed]
    return page(
        request,
        "fork.html",
        status,
        viewer,
        session=session,
        snapshot=form.get("snapshot", "")[:200],
        as_=form.get(FIELD, "")[:200],
        placed=placed,
        general=general,
        suffix=suffix_of(viewer, scope),
    )


@router.get("/sessions/{session_id}/fork")
async def fork_page(session_id: str, request: Request) -> Response:
    """The form alone (``?snapshot=NAME``), for a session of the viewer's tenant."""
    form = {"snapshot": request.query_params.get("snapshot", "")}
    return await session_page(
        request, session_id, lambda on, _: _form(request, on.viewer, session_id, on.scope, form)
    )


@router.post("/sessions/{session_id}/fork")
async def fork(session_id: str, request: Request) -> Response:
    on = await posted_on(request, session_id)
    viewer, scope, ctx, form = on.viewer, on.scope, on.ctx, on.form
    as_, snapshot = form.get(FIELD, "").strip(), form.get("snapshot", "").strip()
    try:
        manifest = await ctx.call(_fork, ctx, session_id, scope, snapshot, as_)
    except InvalidInput as error:
        return _form(request, viewer, session_id, scope, form, 422, error.problems)
    except DockyardError as error:
        if error.http_status == 404:  # the session or the snapshot: as a missing one
            return error_page(request, viewer, error)
        return _form(request, viewer, session_id, scope, form, error.http_status, error.problems)
    return to_session(manifest["sessionId"], viewer, scope)
