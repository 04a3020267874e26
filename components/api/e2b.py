"""The E2B-compatible face (issue 30): the public ``e2b`` SDKs, unchanged, against
``dockyard serve``.

Control plane: the routes the SDKs call (``POST /v2/sandboxes``, ``GET /v2/sandboxes``,
``GET|DELETE /sandboxes/{id}``, ``POST /sandboxes/{id}/timeout|pause|resume|connect``,
``POST /v2/sandboxes/{id}/connect``), authenticated by dockyard's API keys sent as the SDKs
send theirs (``X-API-Key``), each a thin handler over :mod:`dockyard.sessions.e2b`.
Errors answer the SDKs' shape ``{"code": <http status>, "message": …}`` plus dockyard's
error object. What dockyard does not serve (building templates, volumes, snapshots…)
answers 501 with a message naming docs/e2b.md.

Routing: a request carrying ``E2b-Sandbox-Id`` (+ ``E2b-Sandbox-Port``; the SDKs send
them when ``E2B_SANDBOX_URL`` points here), or addressed to ``<port>-<sandboxId>.<domain>``,
is forwarded, streamed both ways, to that port of the sandbox's container on its own
network — after the caller proved it may: a dockyard key of the sandbox's tenant in
``X-API-Key``, or the sandbox's access token (``X-Access-Token``, which the SDKs send, or
``e2b-traffic-access-token``). dockyard's credentials never reach the sandbox.

The sandboxes' deadlines are enforced by a loop this module runs for the server's
lifetime (:func:`dockyard.sessions.e2b.expire` every few seconds).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from typing import Annotated, Any
from urllib.parse import parse_qsl, unquote

import anyio
import httpx
from fastapi import APIRouter, Body, FastAPI, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import DockyardError, InvalidInput, NotFound
from ..sessions import e2b as sandboxes
from .context import Context
from .errors import REQUEST_ID_HEADER, RateLimited, Unauthorized, body, validation_problems
from .middleware import audit_request
from .principal import Principal, authenticated, mark
from .store import KEY_PREFIX

log = logging.getLogger(__package__)

DOMAIN_VARIABLE = "DOCKYARD_E2B_DOMAIN"
"""The domain the SDKs build ``<port>-<id>.<domain>`` host names on (default: the host
name the SDK reached the server by)."""
REAP_VARIABLE = "DOCKYARD_E2B_REAP_INTERVAL_S"
REAP_INTERVAL_S = 5.0
DOCS = "docs/e2b.md"
DAEMON_WAIT_S = 10.0
"""How long a call to the daemon's port waits for it to listen (a new sandbox's)."""
PER_SANDBOX = 64
"""Routed requests one sandbox may have in flight (long command streams included)."""
PER_TENANT = 256
"""Routed requests one tenant's sandboxes may have in flight together. With
:data:`PER_SANDBOX` these are the bound on upstream connections: one caller (or one
agent with its own token) never holds what other tenants' calls need."""


# --- errors in the SDKs' shape ----------------------------------------------------------------


def e2b_error(error: DockyardError, scope: Any) -> JSONResponse:
    """``{"code": status, "message": …}`` (what the SDKs read) + dockyard's error object."""
    status = int(error.http_status)
    message = "; ".join(error.problems) if error.problems else str(error)
    headers = {REQUEST_ID_HEADER: str(scope.get("dockyard", {}).get("request_id", "-"))}
    if isinstance(error, RateLimited):
        headers["Retry-After"] = str(max(1, round(error.retry_after)))
    return JSONResponse(
        {"code": status, "message": message, **body(error, scope)},
        status_code=status,
        headers=headers,
    )


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
    autoPause: bool | None = None


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


# Options of the hosted product that change what a sandbox is: refused when asked for,
# rather than silently ignored.
UNSERVED = ("network", "mcp", "iam", "volumeMounts", "autoResume")


@router.post("/v2/sandboxes", status_code=201, summary="E2B: create a sandbox")
@router.post("/sandboxes", status_code=201, summary="E2B: create a sandbox (v1)")
async def create(given: NewSandbox, request: Request) -> SandboxAnswer:
    ctx, scope = await acting(request, None)
    extra = given.model_extra or {}
    asked = [k for k in UNSERVED if extra.get(k) not in (None, {}, [])]
    if given.autoPause:
        asked.append("autoPause")
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
    rows = await ctx.call(
        sandboxes.listing,
        ctx.sessions,
        scope,
        domain_of(request),
        _metadata_query(metadata),
        ["running"],
    )
    return [SandboxDetail(**r) for r in rows]


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


UNSUPPORTED = (
    ("/templates", "building and managing templates (use the template table, docs/e2b.md)"),
    ("/v2/templates", "building and managing templates"),
    ("/v3/templates", "building and managing templates"),
    ("/sandboxes/{sandbox_id}/snapshots", "E2B snapshots (dockyard's own: /api/sessions/…)"),
    ("/snapshots", "E2B snapshots"),
    ("/sandboxes/{sandbox_id}/fork", "E2B forks (dockyard's own: POST /api/sessions/{id}/fork)"),
    ("/sandboxes/{sandbox_id}/metrics", "sandbox metrics (dockyard's: /api/sessions/{id}/stats)"),
    ("/sandboxes/metrics", "sandbox metrics"),
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


# --- routing into a sandbox ----------------------------------------------------------------------

HOST_FORM = re.compile(r"([0-9]{1,5})-([a-z0-9]{1,63})\.([^:]+)(?::[0-9]+)?", re.ASCII)
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
    }
)
DOCKYARD_CREDENTIALS = frozenset(
    {"x-api-key", "e2b-sandbox-id", "e2b-sandbox-port", "e2b-traffic-access-token"}
)
ACCESS_TOKEN = "x-access-token"  # noqa: S105 - a header name
TRAFFIC_TOKEN = "e2b-traffic-access-token"  # noqa: S105 - a header name


def target(headers: dict[str, str]) -> tuple[str, str] | None:
    """(sandbox id, port text) when the request is for a sandbox's port, else None."""
    sandbox = headers.get("e2b-sandbox-id")
    if sandbox is not None:
        return sandbox, headers.get("e2b-sandbox-port", str(sandboxes.ENVD_PORT))
    matched = HOST_FORM.fullmatch(headers.get("host", "").lower())
    if matched is None:
        return None
    wanted = os.environ.get(DOMAIN_VARIABLE)
    if wanted and matched.group(3) != wanted.split(":", 1)[0].lower():
        return None
    return matched.group(2), matched.group(1)


def forwarded_headers(headers: list[tuple[bytes, bytes]], port: int) -> list[tuple[str, str]]:
    """The request's headers without hop-by-hop ones and without dockyard's credentials
    (its API key in any header, its dashboard cookies, the traffic token; the sandbox's
    own access token only reaches its daemon's port)."""
    kept = []
    for raw_name, raw_value in headers:
        name = raw_name.decode("latin-1").lower()
        value = raw_value.decode("latin-1")
        if name in HOP_BY_HOP or name in DOCKYARD_CREDENTIALS:
            continue
        if name == ACCESS_TOKEN and port != sandboxes.ENVD_PORT:
            continue
        if KEY_PREFIX in value and name in ("authorization", "x-api-key"):
            continue
        if name == "cookie":
            pairs = [p.strip() for p in value.split(";") if not dockyards(p.split("=", 1)[0])]
            pairs = [p for p in pairs if p]
            if not pairs:
                continue
            value = "; ".join(pairs)
        kept.append((name, value))
    return kept


def dockyards(cookie_name: str) -> bool:
    """Whether ``cookie_name`` is one of dockyard's (``dockyard_*``, any case, with or
    without a ``__Host-``/``__Secure-`` prefix)."""
    name = cookie_name.strip().lower()
    for prefix in ("__host-", "__secure-"):
        name = name.removeprefix(prefix)
    return name.startswith("dockyard_")


def harmless_cookie(set_cookie: str) -> bool:
    """A sandbox's ``Set-Cookie`` the caller may get: a cookie with a name (a nameless one,
    ``=dockyard_session=…`` or a bare value, comes back from a browser as whatever its value
    says), not named like dockyard's, and with no Domain attribute (it stays on the
    sandbox's own host name, never on the parent domain the dashboard is served from)."""
    pair, *attributes = set_cookie.split(";")
    name = pair.split("=", 1)[0].strip() if "=" in pair else ""
    if not name or dockyards(name):
        return False
    return not any(a.split("=", 1)[0].strip().lower() == "domain" for a in attributes)


def answered_headers(headers: list[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    """The sandbox's answer headers the caller gets: no hop-by-hop ones, no request id of
    its own, and no cookie named like dockyard's (a sandbox on ``<port>-<id>.<domain>``
    must not plant the dashboard's login or session cookie on the parent domain)."""
    kept = []
    for name, value in headers:
        lowered = name.lower()
        if lowered in HOP_BY_HOP or lowered == REQUEST_ID_HEADER.lower():
            continue
        if lowered == "set-cookie" and not harmless_cookie(value):
            continue
        kept.append((lowered.encode("latin-1"), value.encode("latin-1")))
    return kept


def upstream_url(scope: Scope, ip: str, port: int) -> httpx.URL:
    """The sandbox's URL for this request, built from parts: the request target is only
    ever a path (+ query) on ``ip:port``. Anything else uvicorn's h11 hands through as
    the target (``@host:port/x``, ``http://host/x``, ``host:port``, ``*``) is refused, so no
    caller makes the server connect anywhere but the sandbox it proved it may reach."""
    path = scope.get("raw_path") or scope["path"].encode()
    shown = path.decode("latin-1")[:100]
    refused = _BadTarget(
        "request-target",
        [f"request-target: {shown!r} is not a path (allowed: a path starting with /)"],
    )
    if not path.startswith(b"/"):
        raise refused
    query = scope.get("query_string", b"")
    raw = path + (b"?" + query if query else b"")
    try:
        url = httpx.URL(scheme="http", host=ip, port=port, raw_path=raw)
    except httpx.InvalidURL as exc:
        raise refused from exc
    if url.host != ip or url.port != port or url.userinfo:
        raise refused
    return url


class Routing:
    """ASGI middleware (outermost): sandbox-port requests are forwarded, everything else
    goes to the app; the reaper loop runs for the app's lifetime."""

    def __init__(self, app: ASGIApp, context: Context) -> None:
        self.app = app
        self.context = context
        self._client: httpx.AsyncClient | None = None
        self._held: dict[tuple[str, str], int] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(scope, receive, send)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {
            k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])
        }
        wanted = target(headers)
        if wanted is None:
            await self.app(scope, receive, send)
            return
        await self._route(scope, receive, send, headers, *wanted)

    # The deadlines: expire() in the pool every few seconds while the server runs.
    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        task: asyncio.Task[None] | None = None

        async def watched() -> Message:
            nonlocal task
            message = await receive()
            if message["type"] == "lifespan.startup" and task is None:
                task = asyncio.create_task(self._reap())
            elif message["type"] == "lifespan.shutdown" and task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                if self._client is not None:
                    await self._client.aclose()
            return message

        await self.app(scope, watched, send)

    async def _reap(self) -> None:
        interval = float(os.environ.get(REAP_VARIABLE) or REAP_INTERVAL_S)
        while True:
            await asyncio.sleep(interval)
            try:
                gone = await self.context.call(sandboxes.expire, self.context.sessions)
                if gone:
                    log.info("sandboxes past their timeout destroyed: %s", ", ".join(gone))
            except Exception:
                log.exception("the sandbox timeout sweep failed (next round tries again)")

    @contextlib.contextmanager
    def _slot(self, sandbox_id: str, tenant: str | None) -> Iterator[None]:
        """One routed request in flight for the sandbox and its tenant, refused 429 over
        :data:`PER_SANDBOX` / :data:`PER_TENANT` (before any upstream connection)."""
        keys = (("sandbox", sandbox_id, PER_SANDBOX), ("tenant", tenant or "-", PER_TENANT))
        for what, name, cap in keys:
            held = self._held.get((what, name), 0)
            if held >= cap:
                raise RateLimited(
                    f"{what} {name!r} has {held} requests in flight (allowed: at most {cap} "
                    f"per {what}; end a stream or retry when one ends)",
                    1.0,
                )
        for what, name, _ in keys:
            self._held[(what, name)] = self._held.get((what, name), 0) + 1
        try:
            yield
        finally:
            for what, name, _ in keys:
                left = self._held[(what, name)] - 1
                if left:
                    self._held[(what, name)] = left
                else:
                    del self._held[(what, name)]

    async def _who(self, scope: Scope, headers: dict[str, str], sandbox_id: str) -> Any:
        """The sandbox's record once the caller proved it may reach it (else an error)."""
        sessions = self.context.sessions
        key = headers.get("x-api-key", "").strip()
        if key:
            request = Request(scope)
            caller = await authenticated(request, key)
            tenant = caller.scope(None)
            scope["dockyard"].update(session=sandbox_id, tenant=tenant)
            return await self.context.call(sandboxes.record_of, sessions, sandbox_id, tenant)
        token = headers.get(ACCESS_TOKEN) or headers.get(TRAFFIC_TOKEN)
        if token:
            # Charged like a key, before any lookup (the sandbox id is the bucket).
            limits = self.context.limits
            wait = Request(scope).app.state.buckets.take(f"sandbox-token:{sandbox_id}")
            if wait:
                raise RateLimited(
                    f"sandbox {sandbox_id!r}: its access token passed the rate "
                    f"({limits.rate:g} requests/s, burst {limits.burst}): retry in {wait:.1f} s",
                    wait,
                )
            record = await self.context.call(sandboxes.by_token, sessions, sandbox_id, token)
            if record is None:
                raise NotFound(f"no sandbox {sandbox_id!r} on this host")
            scope["dockyard"].update(
                actor=f"sandbox-token:{sandbox_id}", session=sandbox_id, tenant=record.tenant
            )
            return record
        raise Unauthorized(
            "no credentials for the sandbox: send X-API-Key (a dockyard key of its tenant) "
            "or X-Access-Token (the sandbox's envdAccessToken)"
        )

    async def _route(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        headers: dict[str, str],
        sandbox_id: str,
        port_text: str,
    ) -> None:
        rid = uuid.uuid4().hex
        scope.setdefault("dockyard", {}).update(request_id=rid, actor="anonymous")
        started = time.monotonic()
        status = {"code": 500}

        async def answer(error: DockyardError) -> None:
            response = e2b_error(error, scope)
            status["code"] = response.status_code
            await response(scope, receive, send)

        try:
            if not port_text.isdigit() or not 0 < int(port_text) < 65536:
                raise InvalidInput(
                    "E2b-Sandbox-Port",
                    ["E2b-Sandbox-Port: not a port (allowed: a whole number 1-65535)"],
                )
            port = int(port_text)
            record = await self._who(scope, headers, sandbox_id)
            with self._slot(sandbox_id, record.tenant):
                ip = await self.context.call(sandboxes.address, record)
                url = upstream_url(scope, ip, port)
                await self._forward(scope, receive, send, url, rid, status)
        except DockyardError as error:
            await answer(error)
        except httpx.HTTPError as exc:
            await answer(_BadGateway(f"sandbox {sandbox_id!r} port {port_text}: {exc!s}"[:300]))
        finally:
            detail = f"e2b-route {port_text} {scope['method']} {scope['path']} {status['code']}"
            await audit_request(
                self.context, scope, ok=status["code"] < 400, detail=detail, started=started
            )

    async def _forward(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        url: httpx.URL,
        rid: str,
        status: dict[str, int],
    ) -> None:
        if self._client is None:
            self._client = httpx.AsyncClient(
                trust_env=False,
                timeout=httpx.Timeout(connect=10.0, read=None, write=60.0, pool=10.0),
                # No pool-wide bound for one caller to exhaust: _slot's caps bound it.
                limits=httpx.Limits(max_connections=None, max_keepalive_connections=64),
            )
        limit = self.context.limits.upload_bytes
        timeout = self.context.limits.body_timeout_s
        body_read = anyio.Event()

        started: list[bool] = []

        async def request_body() -> AsyncIterator[bytes]:
            started.append(True)
            received = 0
            while True:
                # A body that stops coming is let go (408), as RequestMiddleware does.
                with anyio.move_on_after(timeout) as waited:
                    message = await receive()
                if waited.cancelled_caught:
                    raise _SlowBody(
                        f"request: no body bytes came for {timeout:g} s (allowed: at most "
                        f"{timeout:g} s between two parts of a body; send the body at once)"
                    )
                if message["type"] == "http.disconnect":
                    return
                chunk = message.get("body", b"")
                received += len(chunk)
                if received > limit:
                    raise _TooLarge(f"the body is over {limit} bytes (allowed: at most {limit})")
                if chunk:
                    yield chunk
                if not message.get("more_body", False):
                    body_read.set()
                    return

        port = int(url.port or 0)
        has_body = scope["method"] not in ("GET", "HEAD") or "content-length" in {
            k.decode("latin-1").lower(): v for k, v in scope.get("headers", [])
        }
        outgoing = self._client.build_request(
            scope["method"],
            url,
            headers=forwarded_headers(scope.get("headers", []), port),
            content=request_body() if has_body else None,
        )
        if (outgoing.url.host, outgoing.url.port) != (url.host, url.port):
            raise _BadGateway(f"refused: the request left the sandbox's address ({url.host})")
        if not has_body:
            body_read.set()
        upstream = await self._send(outgoing, port, started)
        try:
            status["code"] = upstream.status_code
            response_headers = answered_headers(upstream.headers.multi_items())
            response_headers.append((REQUEST_ID_HEADER.lower().encode(), rid.encode()))
            await send(
                {
                    "type": "http.response.start",
                    "status": upstream.status_code,
                    "headers": response_headers,
                }
            )
            async with anyio.create_task_group() as group:

                async def watch() -> None:
                    # The client went away: stop reading the sandbox (long streams end).
                    await body_read.wait()
                    while True:
                        message = await receive()
                        if message["type"] == "http.disconnect":
                            group.cancel_scope.cancel()
                            return

                group.start_soon(watch)
                try:
                    async for chunk in upstream.aiter_raw():
                        await send({"type": "http.response.body", "body": chunk, "more_body": True})
                except httpx.HTTPError as exc:
                    # The sandbox broke its answer off (the agent controls it): one line,
                    # no traceback; the caller's answer stays cut (never completed as if
                    # whole) and the audit says 502.
                    status["code"] = 502
                    log.warning(
                        "sandbox %s port %s broke its answer off: %s (request %s)",
                        scope["dockyard"].get("session"),
                        port,
                        type(exc).__name__,
                        rid,
                    )
                else:
                    await send({"type": "http.response.body", "body": b""})
                group.cancel_scope.cancel()
        finally:
            await upstream.aclose()

    async def _send(self, outgoing: httpx.Request, port: int, started: list[bool]) -> Any:
        """Send; while the sandbox's daemon is not listening yet (it starts right after
        the ready marker) a refused connection is tried again for a few seconds, as the
        hosted product's proxy waits for it. Never once the body began to flow."""
        assert self._client is not None
        waited = 0.0
        while True:
            try:
                return await self._client.send(outgoing, stream=True)
            except httpx.ConnectError:
                if port != sandboxes.ENVD_PORT or started or waited >= DAEMON_WAIT_S:
                    raise
            await asyncio.sleep(0.05)
            waited += 0.05


class _BadTarget(DockyardError):
    """A request target that is not a path (HTTP's 400: the request line itself is bad)."""

    http_status = 400
    kind = "invalid-input"


class _BadGateway(DockyardError):
    http_status = 502
    kind = "bad-gateway"


class _SlowBody(DockyardError):
    http_status = 408
    kind = "request-timeout"


class _TooLarge(DockyardError):
    http_status = 413
    kind = "too-large"


def install(app: FastAPI) -> None:
    """The E2B-compatible surface on ``app``: its routes, and the routing middleware
    (outermost: call this after the app's other middleware is added)."""
    app.include_router(router)
    app.add_middleware(Routing, context=app.state.context)
