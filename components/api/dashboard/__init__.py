"""The dashboard: server-rendered pages over the same service calls the API's handlers make.

``dockyard serve`` answers it at ``/``. An operator logs in with an API key (a form): the
server keeps the login in the API's store (a restart or another replica keeps it) and
hands the browser a random token in an HttpOnly, ``SameSite=Strict`` cookie (never the
key). Every state-changing form carries
the login's CSRF token and is refused without it (the login form its own, double-submit).
A tenant's key sees only its tenant's sessions (another's answers "not found", as over
the API); an admin key sees all, with a tenant filter. Pages use no CDN and no build
chain: Jinja2 templates and one small script (rows and the detail's state follow the event
stream; the log tail follows the container's output, :mod:`.logtail`).

One module per job: :mod:`.pages` (templates, shared responses), :mod:`.login` (login,
viewer, CSRF), :mod:`.table` (the sessions table), :mod:`.create` (the create form),
:mod:`.detail` (one session and its actions), :mod:`.logtail` (its live log tail),
:mod:`.fork` (a new session from a snapshot), :mod:`.host` (the host view), :mod:`.live`
(the pages' event stream); :mod:`.on_session` is what every request on one session does
first (the viewer, its tenant, the service call, the refusals).
"""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import Response

from . import create, detail, fork, host, live, login, logtail, table
from .pages import SECURITY_HEADERS, Answered

STATIC = {"dashboard.css": "text/css", "dashboard.js": "text/javascript"}

router = APIRouter(include_in_schema=False)
# Order matters: /sessions/new before /sessions/{session_id}.
for part in (login, table, create, logtail, fork, detail, host, live):
    router.include_router(part.router)


def install(app: FastAPI) -> None:
    """The dashboard's routes on ``app``, and the answer of a request a shared step has
    answered already (:class:`.pages.Answered`)."""

    async def answered(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, Answered)
        return exc.response

    app.add_exception_handler(Answered, answered)
    app.include_router(router)


@router.get("/static/{name}")
async def static(name: str) -> Response:
    if name not in STATIC:
        return Response("not found", status_code=404, headers=SECURITY_HEADERS)
    data = (resources.files(__package__) / "static" / name).read_bytes()
    return Response(
        data, media_type=STATIC[name], headers={**SECURITY_HEADERS, "Cache-Control": "max-age=300"}
    )
