"""The create form: the reference request from its fields, each problem beside the field
its key path names (all at once, the service layer's own included)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from ...errors import DockyardError, InvalidInput
from ..sessions import _split_secrets
from .login import posted_form, viewer_of
from .pages import ctx_of, page, to_login, to_session

router = APIRouter(include_in_schema=False)

FIELDS = (
    "sessionId",
    "cwd",
    "backend",
    "image",
    "variant",
    "profile",
    "ports",
    "volumes",
    "env",
    "secrets",
    "tenant",
)
"""The create form's fields, in order; a problem's key path picks its field."""
FIELD_OF_PATH = {
    "request.sessionId": "sessionId",
    "request.cwd": "cwd",
    "request.backend": "backend",
    "request.container.image": "image",
    "request.variant": "variant",
    "request.profile": "profile",
    "request.container.ports": "ports",
    "request.container.volumes": "volumes",
    "request.container.env": "env",
    "request.secrets": "secrets",
    "request.tenant": "tenant",
}


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def _request_of(form: dict[str, str]) -> tuple[dict[str, Any], list[str]]:
    """The reference request from the form's text fields. Values pass through as typed
    (a port that is not a number reaches the service layer as text, which names it)."""
    problems = []
    container: dict[str, Any] = {}
    if form.get("image", "").strip():
        container["image"] = form["image"].strip()
    ports: list[Any] = []
    for item in form.get("ports", "").replace(",", " ").split():
        ports.append(int(item) if item.isdigit() else item)
    if ports:
        container["ports"] = ports
    if _lines(form.get("volumes", "")):
        container["volumes"] = _lines(form["volumes"])
    env: dict[str, str] = {}
    for number, line in enumerate(_lines(form.get("env", "")), 1):
        name, sep, value = line.partition("=")
        if not sep:
            problems.append(
                f"request.container.env: line {number} has no '=' (allowed: NAME=value, one a line)"
            )
            continue
        env[name.strip()] = value
    if env:
        container["env"] = env
    request: dict[str, Any] = {
        "sessionId": form.get("sessionId", "").strip(),
        "cwd": form.get("cwd", "").strip(),
        "backend": form.get("backend", "").strip(),
        "container": container,
    }
    for name in ("variant", "profile", "tenant"):
        if form.get(name, "").strip():
            request[name] = form[name].strip()
    names = form.get("secrets", "").replace(",", " ").split()
    if names:
        request["secrets"] = names
    return request, problems


def _by_field(problems: list[str]) -> tuple[dict[str, list[str]], list[str]]:
    """Each problem beside the field its key path names; the rest above the form."""
    placed: dict[str, list[str]] = {}
    general = []
    for problem in problems:
        path = problem.split(":", 1)[0]
        base = path.split("[", 1)[0]
        name = FIELD_OF_PATH.get(base) or next(
            (f for p, f in FIELD_OF_PATH.items() if base.startswith(p + ".")), None
        )
        if name is None:
            general.append(problem)
        else:
            placed.setdefault(name, []).append(problem)
    return placed, general


@router.get("/sessions/new")
async def new_page(request: Request) -> Response:
    viewer = await viewer_of(request)
    if viewer is None:
        return to_login()
    form = {"backend": "claude", "ports": "3000"}
    return page(request, "new.html", viewer=viewer, form=form, placed={}, general=[])


@router.post("/sessions/new")
async def create(request: Request) -> Response:
    viewer, form = await posted_form(request)
    body, problems = _request_of(form)
    ctx = ctx_of(request)
    try:
        session_request, values = _split_secrets(body, viewer.principal)
        request.scope.setdefault("dockyard", {}).update(
            session=str(session_request.get("sessionId")), tenant=session_request.get("tenant")
        )
        if problems:
            # With the service layer's own problems, all at once (a plan creates nothing).
            try:
                await ctx.call(ctx.sessions.plan, session_request, values)
            except InvalidInput as error:
                problems += error.problems
            raise InvalidInput("request", problems)
        manifest = await ctx.call(ctx.sessions.create, session_request, values)
    except InvalidInput as error:
        placed, general = _by_field(error.problems)
        return page(request, "new.html", 422, viewer, form=form, placed=placed, general=general)
    except DockyardError as error:
        return page(
            request,
            "new.html",
            error.http_status,
            viewer,
            form=form,
            placed={},
            general=error.problems,
        )
    return to_session(manifest["sessionId"], viewer, session_request.get("tenant"))
