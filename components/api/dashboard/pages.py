"""The dashboard's page plumbing: templates, security headers, the shared responses
(a page, the login redirect, an error, a refused form), the posted form's parsing, and
:class:`Answered`, how the steps every request shares refuse one."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape

from ...errors import DockyardError
from ..context import Context
from ..principal import Principal

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'; "
        "base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

templates = Environment(
    loader=FileSystemLoader(str(resources.files(__package__) / "templates")),
    autoescape=select_autoescape(default=True, default_for_string=True),
    trim_blocks=True,
    lstrip_blocks=True,
)


class Answered(Exception):
    """A request that a step every request shares has answered already (the login page,
    a refused form's 403, a part's 401 or problems): raised by that step, its
    ``response`` sent as it is (:func:`dockyard.api.dashboard.install`), so a route reads
    on only with what the step gave."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status_code)
        self.response = response


@dataclass(frozen=True)
class Viewer:
    principal: Principal
    csrf: str
    token: str


def ctx_of(request: Request) -> Context:
    return request.app.state.context  # type: ignore[no-any-return]


def page(
    request: Request,
    template: str,
    status: int = 200,
    viewer: Viewer | None = None,
    **values: Any,
) -> HTMLResponse:
    html = templates.get_template(template).render(
        viewer=viewer.principal if viewer else None,
        csrf=viewer.csrf if viewer else "",
        path=request.url.path,
        **values,
    )
    return HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS)


def to_login() -> RedirectResponse:
    return RedirectResponse("/login", status_code=303, headers=SECURITY_HEADERS)


async def form_of(request: Request) -> dict[str, str]:
    """The posted form (urlencoded; the body size is bounded by the middleware)."""
    if request.headers.get("content-type", "").split(";")[0].strip() != (
        "application/x-www-form-urlencoded"
    ):
        return {}
    parsed = parse_qs((await request.body()).decode("utf-8", "replace"), keep_blank_values=True)
    return {k: v[-1] for k, v in parsed.items()}


def refused(request: Request, viewer: Viewer | None) -> HTMLResponse:
    return page(
        request,
        "error.html",
        403,
        viewer,
        title="Refused",
        problems=[
            "csrf: the form's token is missing or wrong (allowed: submit the form from this "
            "dashboard's page; reload it and try again)"
        ],
    )


def error_page(request: Request, viewer: Viewer, error: DockyardError) -> HTMLResponse:
    return page(
        request,
        "error.html",
        error.http_status,
        viewer,
        title={404: "Not found", 422: "Invalid", 429: "Refused"}.get(error.http_status, "Failed"),
        problems=error.problems,
    )


def secure(request: Request) -> bool:
    return request.url.scheme == "https"


def port_host(record_host: str, request: Request) -> str:
    """Where a session's published ports are reached: the engine's host."""
    if record_host == "local":
        return request.url.hostname or "127.0.0.1"
    return urlsplit(record_host).hostname or record_host


def scope_of(request: Request, viewer: Viewer) -> str | None:
    return viewer.principal.scope(request.query_params.get("tenant") or None)


def suffix_of(viewer: Viewer, scope: str | None) -> str:
    return "?" + urlencode({"tenant": scope}) if viewer.principal.admin and scope else ""


def to_session(
    session_id: str, viewer: Viewer, scope: str | None, done: str | None = None
) -> RedirectResponse:
    """After a form: the session's page, in the viewer's tenant filter, with the notice
    ``done`` names (``?done=``)."""
    query = {"tenant": scope} if viewer.principal.admin and scope else {}
    if done:
        query["done"] = done
    where = f"/sessions/{session_id}" + ("?" + urlencode(query) if query else "")
    return RedirectResponse(where, status_code=303, headers=SECURITY_HEADERS)
