"""What every dashboard request on one session does first, written once: the viewer (a
login; for a posted form, its CSRF token too), the tenant it acts in (an admin's filter,
else the key's own) and the service call, each refusal answered the way its kind of
request answers: a page sends to the login page and shows an error page, a part the
page's script loads answers 401 or its problems as text, a form also checks its token.
Another tenant's session answers "not found" like a missing one everywhere (the service
layer looks it up in the viewer's tenant)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import Request
from fastapi.responses import Response

from ...errors import DockyardError
from ...sessions.registry import Record
from ..context import Context
from ..principal import mark
from .login import posted_form, viewer_of
from .pages import SECURITY_HEADERS, Answered, Viewer, ctx_of, error_page, scope_of, to_login

T = TypeVar("T")


@dataclass(frozen=True)
class OnSession:
    """A request on one session: who asks, in which tenant, with the server's context
    (and the posted form's fields, for a form)."""

    viewer: Viewer
    scope: str | None
    ctx: Context
    form: dict[str, str]


def problems(error: DockyardError) -> Response:
    """A part's refusal: its problems as text, with the error's status."""
    return Response(
        "\n".join(error.problems), status_code=error.http_status, headers=SECURITY_HEADERS
    )


async def part_of(
    request: Request, session_id: str, call: Callable[[Context, str, str | None], T]
) -> tuple[OnSession, T]:
    """A part of the session's page its script loads (named on the audit line) and what
    ``call(ctx, session_id, scope)`` gives in a worker thread; else :class:`Answered`
    with 401 without a login, or with the call's problems."""
    viewer = await viewer_of(request)
    if viewer is None:
        raise Answered(Response(status_code=401, headers=SECURITY_HEADERS))
    on = OnSession(viewer, scope_of(request, viewer), ctx_of(request), {})
    mark(request, session_id, on.scope)
    try:
        return on, await on.ctx.call(call, on.ctx, session_id, on.scope)
    except DockyardError as error:
        raise Answered(problems(error)) from error


async def session_page(
    request: Request,
    session_id: str,
    render: Callable[[OnSession, Record], Response],
    check: Callable[[], Any] = lambda: None,
) -> Response:
    """A page about the session (a form, a confirmation): ``render`` with its record found
    in the viewer's tenant, once ``check`` (the page's own query) passes; or the login
    page, or the error page."""
    viewer = await viewer_of(request)
    if viewer is None:
        return to_login()
    on = OnSession(viewer, scope_of(request, viewer), ctx_of(request), {})
    try:
        record = await on.ctx.call(on.ctx.sessions.registry.find, session_id, on.scope)
        check()
    except DockyardError as error:
        return error_page(request, viewer, error)
    return render(on, record)


async def posted_on(request: Request, session_id: str) -> OnSession:
    """A form posted on the session with the login's CSRF token (named on the audit
    line); else :class:`Answered` with the response that refuses it (the login page;
    403)."""
    viewer, form = await posted_form(request)
    on = OnSession(viewer, scope_of(request, viewer), ctx_of(request), form)
    mark(request, session_id, on.scope)
    return on
