"""The E2B-compatible face (issue 30): the public ``e2b`` SDKs, unchanged, against
``dockyard serve``.

Control plane: the routes the SDKs call (``POST /v2/sandboxes``, ``GET /v2/sandboxes``,
``GET|DELETE /sandboxes/{id}``, ``POST /sandboxes/{id}/timeout|pause|resume|connect``,
``POST /v2/sandboxes/{id}/connect``, ``GET /sandboxes/{id}/metrics``,
``GET /sandboxes/metrics``), authenticated by dockyard's API keys sent as the SDKs send
theirs (``X-API-Key``), each a thin handler over :mod:`dockyard.sessions.e2b`.
Errors answer the SDKs' shape ``{"code": <http status>, "message": …}`` plus dockyard's
error object. What dockyard does not serve (building templates, volumes, snapshots…)
answers 501 with a message naming docs/e2b.md.

Routing into sandboxes (``E2b-Sandbox-Id``/``Port`` headers, ``<port>-<id>.<domain>``
host names) and the sandboxes' deadline loop: :mod:`dockyard.api.e2b_routing`, which
:func:`install` adds as the outermost middleware.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Coroutine
from typing import Annotated, Any
from urllib.parse import parse_qsl, unquote

from fastapi import APIRouter, Body, FastAPI, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field

from ..errors import DockyardError, InvalidInput
from ..sessions import e2b as sandboxes
from .context import Context
from .e2b_errors import e2b_error
from .e2b_routing import DOMAIN_VARIABLE, Routing
from .errors import Unauthorized, validation_problems
from .principal import Principal, authenticated, mark

DOCS = "docs/e2b.md"


# --- errors in the SDKs' shape ----------------------------------------------------------------


class E2BRoute(APIRoute):
    """Every failure of a handler (and of its parsing) in the SDKs' error shape."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def answer(request: Request) -> Response:
            try:
                return await handler(request)
            except DockyardError as error:
                return e2b_error(error, request.scope)
            except RequestValidationError as exc:
                return e2b_error(InvalidInput("request", validation_problems(exc)), request.scope)

        return answer


class Unsupported(DockyardError):
    http_status = 501
    kind = "not-supported"


router = APIRouter(tags=["e2b"], route_class=E2BRoute)


async def e2b_caller(request: Request) -> Principal:
    """The caller, from its dockyard key sent the SDKs' way (``X-API-Key``)."""
    presented = request.headers.get("x-api-key", "").strip()
    if not presented:
        raise Unauthorized("no API key: send X-API-Key: <dockyard key> (E2B_API_KEY)")
    return await authenticated(request, presented)


def domain_of(request: Request) -> str:
    return os.environ.get(DOMAIN_VARIABLE) or request.headers.get("host") or "localhost"


def context(request: Request) -> Context:
    return request.app.state.context  # type: ignore[no-any-return]


async def acting(request: Request, sandbox_id: str | None) -> tuple[Context, str | None]:
    caller = await e2b_caller(request)
    scope = caller.scope(None)
    mark(request, sandbox_id, scope)
    return context(request), scope


# --- bodies ------------------------------------------------------------------------------------


class NewSandbox(BaseModel):
    """What the SDKs post to create (fields dockyard does not serve are refused only when
    set to something other than their default)."""

    model_config = ConfigDict(extra="allow")
    templateID: str = Field(description="A template id of the table in docs/e2b.md.")
    timeout: int | None = Field(default=None, description="Seconds until it is killed.")
    metadata: dict[str, str] | None = None
    envVars: dict[str, str] | None = Field(
        default=None, description="Delivered as the session's secrets (never plain env)."
    )
    autoPause: bool | None = Field(
        default=None, description='onTimeout "pause": paused at the deadline, not killed.'
    )
    autoResume: dict[str, bool] | None = Field(
        default=None,
        description='{"enabled": true}: a routed call wakes it while paused through E2B '
        "(only with autoPause: true; default false, as E2B).",
    )


class SandboxAnswer(BaseModel):
    sandboxID: str
    templateID: str
    clientID: str
    envdVersion: str
    envdAccessToken: str
    domain: str | None


class SandboxDetail(SandboxAnswer):
    alias: str
    startedAt: str
    endAt: str
    cpuCount: int
    memoryMB: int
    diskSizeMB: int
    state: str
    metadata: dict[str, str]


class Timeout(BaseModel):
    timeout: int = Field(description="Seconds from now until the sandbox is killed.")


class Connect(BaseModel):
    model_config = ConfigDict(extra="allow")
    timeout: int | None = None


class SandboxMetric(BaseModel):
    timestamp: str
    timestampUnix: int
    cpuCount: int
    cpuUsedPct: float
    memUsed: int
    memTotal: int
    memCache: int
    diskUsed: int
    diskTotal: int


class SandboxesWithMetrics(BaseModel):
    sandboxes: dict[str, SandboxMetric]


# Options of the hosted product that change what a sandbox is: refused when asked for,
# rather than silently ignored.
UNSERVED = ("network", "mcp", "iam", "volumeMounts")


@router.post("/v2/sandboxes", status_code=201, summary="E2B: create a sandbox")
@router.post("/sandboxes", status_code=201, summary="E2B: create a sandbox (v1)")
async def create(given: NewSandbox, request: Request) -> SandboxAnswer:
    ctx, scope = await acting(request, None)
    extra = given.model_extra or {}
    asked = [k for k in UNSERVED if extra.get(k) not in (None, {}, [])]
    if extra.get("autoPauseMemory") is False:
        asked.append("autoPauseMemory")  # a filesystem-only pause: dockyard keeps memory
    if extra.get("allow_internet_access") is False:
        asked.append("allow_internet_access")
    if asked:
        raise Unsupported(
            "sandbox",
            [
                f"{k}: not supported by dockyard's E2B-compatible API (allowed: leave it "
                f"out; see {DOCS})"
                for k in asked
            ],
        )
    sandbox = await ctx.call(sandboxes.create, ctx.sessions, given.model_dump(), scope)
    mark(request, sandbox.sandboxId, scope)
    return SandboxAnswer(**sandbox.answer(domain_of(request)))


StateQuery = Annotated[str | None, Query(description="running,paused (comma-separated)")]


def _metadata_query(text: str | None) -> dict[str, str]:
    """The SDKs' metadata filter: url-encoded ``k=v&k2=v2`` (each part quoted once more)."""
    return {unquote(k): unquote(v) for k, v in parse_qsl(text or "", keep_blank_values=True)}


def _states(text: str | None) -> list[str] | None:
    if not text:
        return None
    states = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in states if s not in ("running", "paused")]
    if bad:
        raise InvalidInput(
            "state", [f"state: {bad[0]!r} is not a state (allowed: running, paused)"]
        )
    return states


@router.get("/v2/sandboxes", summary="E2B: list sandboxes")
async def list_v2(
    request: Request,
    response: Response,
    metadata: str | None = None,
    state: StateQuery = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 1000,
    nextToken: str | None = None,
) -> list[SandboxDetail]:
    ctx, scope = await acting(request, None)
    offset = int(nextToken) if nextToken and nextToken.isdigit() else 0
    rows, more = await ctx.call(
        sandboxes.page,
        ctx.sessions,
        scope,
        domain_of(request),
        _metadata_query(metadata),
        _states(state),
        offset,
        limit,
    )
    if more:
        response.headers["x-next-token"] = str(offset + limit)  # the SDKs' paginator reads it
    return [SandboxDetail(**r) for r in rows]


@router.get("/sandboxes", summary="E2B: list running sandboxes (v1)")
async def list_v1(request: Request, metadata: str | None = None) -> list[SandboxDetail]:
    ctx, scope = await acting(request, None)
    rows, _ = await ctx.call(
        sandboxes.page,
        ctx.sessions,
        scope,
        domain_of(request),
        _metadata_query(metadata),
        ["running"],
    )
    return [SandboxDetail(**r) for r in rows]


@router.get("/sandboxes/metrics", summary="E2B: metrics of many sandboxes (now)")
async def metrics_of_many(
    request: Request,
    sandbox_ids: Annotated[
        list[str],
        Query(description="Sandbox ids, comma-separated or the parameter repeated (at most 100)."),
    ],
) -> SandboxesWithMetrics:
    """One sample taken now of each running sandbox of the caller among ``sandbox_ids``;
    others (paused, gone, another tenant's) are left out, as E2B does."""
    ctx, scope = await acting(request, None)
    ids = [part for value in sandbox_ids for part in value.split(",")]
    found = await ctx.call(sandboxes.metrics_of_many, ctx.sessions, ids, scope)
    return SandboxesWithMetrics(sandboxes={k: SandboxMetric(**v) for k, v in found.items()})


@router.get("/sandboxes/{sandbox_id}", summary="E2B: a sandbox")
async def get(sandbox_id: str, request: Request) -> SandboxDetail:
    ctx, scope = await acting(request, sandbox_id)
    row = await ctx.call(sandboxes.detail, ctx.sessions, sandbox_id, scope, domain_of(request))
    return SandboxDetail(**row)


@router.delete("/sandboxes/{sandbox_id}", status_code=204, summary="E2B: kill a sandbox")
async def kill(sandbox_id: str, request: Request) -> Response:
    ctx, scope = await acting(request, sandbox_id)
    await ctx.call(sandboxes.kill, ctx.sessions, sandbox_id, scope)
    return Response(status_code=204)


@router.post("/sandboxes/{sandbox_id}/timeout", status_code=204, summary="E2B: set the timeout")
async def set_timeout(sandbox_id: str, given: Timeout, request: Request) -> Response:
    ctx, scope = await acting(request, sandbox_id)
    await ctx.call(sandboxes.set_timeout, ctx.sessions, sandbox_id, scope, given.timeout)
    return Response(status_code=204)


@router.post("/sandboxes/{sandbox_id}/refreshes", status_code=204, summary="E2B: keep alive")
async def refresh(
    sandbox_id: str,
    request: Request,
    given: Annotated[dict[str, Any] | None, Body()] = None,
) -> Response:
    """Extend the sandbox's life by ``duration`` seconds from now (never shortens it)."""
    ctx, scope = await acting(request, sandbox_id)
    duration = (given or {}).get("duration")
    await ctx.call(sandboxes.connect_to, ctx.sessions, sandbox_id, scope, duration)
    return Response(status_code=204)


@router.post("/sandboxes/{sandbox_id}/pause", status_code=204, summary="E2B: pause a sandbox")
async def pause(sandbox_id: str, request: Request) -> Response:
    ctx, scope = await acting(request, sandbox_id)
    changed = await ctx.call(sandboxes.pause, ctx.sessions, sandbox_id, scope)
    if not changed:
        # The SDKs read 409 as "already paused".
        return e2b_error(_AlreadyPaused(f"sandbox {sandbox_id!r} is already paused"), request.scope)
    return Response(status_code=204)


class _AlreadyPaused(DockyardError):
    http_status = 409
    kind = "conflict"


@router.post("/v2/sandboxes/{sandbox_id}/connect", summary="E2B: connect (resumes if paused)")
@router.post("/sandboxes/{sandbox_id}/connect", summary="E2B: connect (v1)")
@router.post("/sandboxes/{sandbox_id}/resume", status_code=201, summary="E2B: resume")
async def connect(
    sandbox_id: str,
    request: Request,
    given: Annotated[Connect | None, Body()] = None,
) -> SandboxAnswer:
    ctx, scope = await acting(request, sandbox_id)
    timeout = given.timeout if given is not None else None
    sandbox = await ctx.call(sandboxes.connect_to, ctx.sessions, sandbox_id, scope, timeout)
    return SandboxAnswer(**sandbox.answer(domain_of(request)))


UnixSeconds = Annotated[int | None, Query(ge=0, description="Unix time, seconds.")]


@router.get("/sandboxes/{sandbox_id}/metrics", summary="E2B: a sandbox's metrics (now)")
async def metrics(
    sandbox_id: str, request: Request, start: UnixSeconds = None, end: UnixSeconds = None
) -> list[SandboxMetric]:
    """One sample taken now (dockyard keeps no history) when now is in ``[start, end]``."""
    ctx, scope = await acting(request, sandbox_id)
    rows = await ctx.call(sandboxes.metrics, ctx.sessions, sandbox_id, scope, start, end)
    return [SandboxMetric(**r) for r in rows]


UNSUPPORTED = (
    ("/templates", "building and managing templates (use the template table, docs/e2b.md)"),
    ("/v2/templates", "building and managing templates"),
    ("/v3/templates", "building and managing templates"),
    ("/sandboxes/{sandbox_id}/snapshots", "E2B snapshots (dockyard's own: /api/sessions/…)"),
    ("/snapshots", "E2B snapshots"),
    ("/sandboxes/{sandbox_id}/fork", "E2B forks (dockyard's own: POST /api/sessions/{id}/fork)"),
    ("/sandboxes/{sandbox_id}/logs", "sandbox logs (dockyard's: /api/sessions/{id}/logs)"),
    ("/v2/sandboxes/{sandbox_id}/logs", "sandbox logs"),
    ("/sandboxes/{sandbox_id}/network", "changing a sandbox's network"),
    ("/volumes", "E2B volumes"),
    ("/secrets", "E2B secrets (pass values in envVars; they become session secrets)"),
)


def _unsupported(what: str) -> Callable[[Request], Coroutine[Any, Any, Response]]:
    async def answer(request: Request) -> Response:
        return e2b_error(
            Unsupported(
                "e2b",
                [
                    f"{request.method} {request.url.path}: {what} is not supported by "
                    f"dockyard's E2B-compatible API (see {DOCS})"
                ],
            ),
            request.scope,
        )

    return answer


for _path, _what in UNSUPPORTED:
    for _suffix in ("", "/{rest:path}"):
        for _method in ("GET", "POST", "PUT", "PATCH", "DELETE"):
            _slug = re.sub(r"[^a-z0-9]+", "_", f"{_path}{_suffix}".lower()).strip("_")
            router.add_api_route(
                _path + _suffix,
                _unsupported(_what),
                methods=[_method],
                operation_id=f"e2b_unsupported_{_method.lower()}_{_slug}",
                summary=f"E2B: not supported ({_what})",
                include_in_schema=not _suffix and _method in ("GET", "POST"),
            )


def install(app: FastAPI) -> None:
    """The E2B-compatible surface on ``app``: its routes, and the routing middleware
    (outermost: call this after the app's other middleware is added)."""
    app.include_router(router)
    app.add_middleware(Routing, context=app.state.context)
