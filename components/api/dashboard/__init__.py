"""The dashboard: server-rendered pages over the same service calls the API's handlers make.

``dockyard serve`` answers it at ``/``. An operator logs in with an API key (a form): the
server keeps the login in its memory and hands the browser a random token in an
HttpOnly, ``SameSite=Strict`` cookie (never the key). Every state-changing form carries
the login's CSRF token and is refused without it (the login form its own, double-submit).
A tenant's key sees only its tenant's sessions (another's answers "not found", as over
the API); an admin key sees all, with a tenant filter. Pages use no CDN and no build
chain: Jinja2 templates and one small script (polling for live rows and the log tail).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import hmac
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape

from ...errors import DockyardError, InvalidInput
from ...sessions import audit, backups, host_view
from ...sessions import pause as pausing
from ...sessions.status import container_logs, engine_state, engine_states
from ..context import Context
from ..errors import RateLimited
from ..principal import Principal, mark
from ..sessions import _split_secrets

router = APIRouter(include_in_schema=False)

COOKIE = "dockyard_session"
LOGIN_COOKIE = "dockyard_login"
LOGIN_TTL = 8 * 3600
"""Seconds a login lasts (the key is checked for revocation on every request too)."""
MAX_LOGINS = 10_000
LOG_LINES = 200
AUDIT_LINES = 30
"""The detail page's audit history: the session's newest lines (page views left out)."""
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
DONE = {
    "refreshed": "refreshed",
    "paused": "paused",
    "resumed": "resumed",
    "backed-up": "backed up",
}
"""What a detail page's notice may say after an action (``?done=``; nothing else is shown)."""
SORTS = ("session", "tenant", "status", "backend", "age")
STATIC = {"dashboard.css": "text/css", "dashboard.js": "text/javascript"}
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

_templates = Environment(
    loader=FileSystemLoader(str(resources.files(__package__) / "templates")),
    autoescape=select_autoescape(default=True, default_for_string=True),
    trim_blocks=True,
    lstrip_blocks=True,
)


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass
class Login:
    key_id: str
    tenant: str | None
    admin: bool
    csrf: str
    expires: float


@dataclass
class Logins:
    """Logins in this server's memory, by the digest of their cookie token (a restart
    logs everyone out; several replicas would each need their own login)."""

    _by_digest: dict[str, Login] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def open(self, key_id: str, tenant: str | None, admin: bool) -> str:
        token = secrets.token_urlsafe(32)
        now = time.monotonic()
        with self._lock:
            if len(self._by_digest) >= MAX_LOGINS:
                for digest in [d for d, v in self._by_digest.items() if v.expires <= now]:
                    del self._by_digest[digest]
            if len(self._by_digest) >= MAX_LOGINS:  # the oldest goes
                oldest = min(self._by_digest, key=lambda d: self._by_digest[d].expires)
                del self._by_digest[oldest]
            self._by_digest[_digest(token)] = Login(
                key_id, tenant, admin, secrets.token_urlsafe(32), now + LOGIN_TTL
            )
        return token

    def get(self, token: str) -> Login | None:
        with self._lock:
            login = self._by_digest.get(_digest(token))
            if login is not None and login.expires <= time.monotonic():
                del self._by_digest[_digest(token)]
                return None
            return login

    def close(self, token: str) -> None:
        with self._lock:
            self._by_digest.pop(_digest(token), None)


def _logins(request: Request) -> Logins:
    state = request.app.state
    if getattr(state, "dashboard_logins", None) is None:
        state.dashboard_logins = Logins()
    return state.dashboard_logins  # type: ignore[no-any-return]


def _ctx(request: Request) -> Context:
    return request.app.state.context  # type: ignore[no-any-return]


@dataclass(frozen=True)
class Viewer:
    principal: Principal
    csrf: str
    token: str


def _live(ctx: Context, login: Login) -> bool:
    """The login's key is still there and not revoked."""
    return any(
        info.id == login.key_id and info.revoked_at is None
        for info in ctx.store.list(None if login.admin else login.tenant)
    )


async def _viewer(request: Request) -> Viewer | None:
    """The logged-in key (charged against its rate, named in the audit line), or None."""
    token = request.cookies.get(COOKIE, "")
    login = _logins(request).get(token) if token else None
    if login is None:
        return None
    ctx = _ctx(request)
    if not await ctx.call(_live, ctx, login):
        _logins(request).close(token)
        return None
    request.scope.setdefault("dockyard", {})["actor"] = f"key:{login.key_id}"
    wait = request.app.state.buckets.take(login.key_id)
    if wait:
        raise RateLimited(
            f"key {login.key_id} passed its rate ({ctx.limits.rate:g} requests/s): "
            f"retry in {wait:.1f} s",
            wait,
        )
    return Viewer(Principal(login.key_id, login.tenant, login.admin), login.csrf, token)


def _page(
    request: Request,
    template: str,
    status: int = 200,
    viewer: Viewer | None = None,
    **values: Any,
) -> HTMLResponse:
    html = _templates.get_template(template).render(
        viewer=viewer.principal if viewer else None,
        csrf=viewer.csrf if viewer else "",
        path=request.url.path,
        **values,
    )
    return HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS)


def _to_login() -> RedirectResponse:
    return RedirectResponse("/login", status_code=303, headers=SECURITY_HEADERS)


async def _form(request: Request) -> dict[str, str]:
    """The posted form (urlencoded; the body size is bounded by the middleware)."""
    if request.headers.get("content-type", "").split(";")[0].strip() != (
        "application/x-www-form-urlencoded"
    ):
        return {}
    parsed = parse_qs((await request.body()).decode("utf-8", "replace"), keep_blank_values=True)
    return {k: v[-1] for k, v in parsed.items()}


def _csrf_ok(form: dict[str, str], expected: str) -> bool:
    return bool(expected) and hmac.compare_digest(form.get("csrf", "").encode(), expected.encode())


def _refused(request: Request, viewer: Viewer | None) -> HTMLResponse:
    return _page(
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


async def _posted(request: Request) -> tuple[Viewer, dict[str, str]] | Response:
    """A logged-in viewer's posted form whose CSRF token matches, or the response that
    refuses it (the login page; 403)."""
    viewer = await _viewer(request)
    if viewer is None:
        return _to_login()
    form = await _form(request)
    if not _csrf_ok(form, viewer.csrf):
        return _refused(request, viewer)
    return viewer, form


def _error(request: Request, viewer: Viewer, error: DockyardError) -> HTMLResponse:
    return _page(
        request,
        "error.html",
        error.http_status,
        viewer,
        title={404: "Not found", 422: "Invalid", 429: "Refused"}.get(error.http_status, "Failed"),
        problems=error.problems,
    )


def _secure(request: Request) -> bool:
    return request.url.scheme == "https"


# --- login -------------------------------------------------------------------------------


def _login_form(request: Request, status: int = 200, problems: list[str] | None = None) -> Response:
    """The login page with a fresh CSRF token, also set as the login form's cookie."""
    token = secrets.token_urlsafe(32)
    response = _page(request, "login.html", status, login_csrf=token, problems=problems or [])
    response.set_cookie(
        LOGIN_COOKIE,
        token,
        max_age=600,
        httponly=True,
        samesite="strict",
        secure=_secure(request),
        path="/login",
    )
    return response


@router.get("/login")
async def login_page(request: Request) -> Response:
    return _login_form(request)


@router.post("/login")
async def login(request: Request) -> Response:
    form = await _form(request)
    if not _csrf_ok(form, request.cookies.get(LOGIN_COOKIE, "")):
        return _refused(request, None)
    ctx = _ctx(request)
    info = await ctx.call(ctx.store.authenticate, form.get("key", "").strip())
    if info is None:
        return _login_form(
            request,
            401,
            ["key: the API key is unknown or revoked (allowed: a key from `dockyard keys create`)"],
        )
    request.scope.setdefault("dockyard", {})["actor"] = f"key:{info.id}"
    token = _logins(request).open(info.id, info.tenant, info.admin)
    redirect = RedirectResponse("/", status_code=303, headers=SECURITY_HEADERS)
    redirect.set_cookie(
        COOKIE,
        token,
        max_age=LOGIN_TTL,
        httponly=True,
        samesite="strict",
        secure=_secure(request),
        path="/",
    )
    redirect.delete_cookie(LOGIN_COOKIE, path="/login")
    return redirect


@router.post("/logout")
async def logout(request: Request) -> Response:
    posted = await _posted(request)
    if isinstance(posted, Response):
        return posted
    viewer, _ = posted
    _logins(request).close(viewer.token)
    response = _to_login()
    response.delete_cookie(COOKIE, path="/")
    return response


# --- sessions ----------------------------------------------------------------------------


def _age(created: str, now: datetime) -> tuple[str, float]:
    try:
        seconds = (now - datetime.fromisoformat(created.replace("Z", "+00:00"))).total_seconds()
    except ValueError:
        return "?", 0.0
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{int(seconds)} s", seconds
    if seconds < 7200:
        return f"{int(seconds // 60)} min", seconds
    if seconds < 172800:
        return f"{int(seconds // 3600)} h", seconds
    return f"{int(seconds // 86400)} d", seconds


def _port_host(record_host: str, request: Request) -> str:
    """Where a session's published ports are reached: the engine's host."""
    if record_host == "local":
        return request.url.hostname or "127.0.0.1"
    return urlsplit(record_host).hostname or record_host


def _rows(ctx: Context, scope: str | None) -> list[dict[str, Any]]:
    """The table's rows from the service layer (the calls GET /api/sessions makes), with
    each container's state on its engine (one list call per engine host)."""
    records = {r.stack_name: r for r in ctx.sessions.registry.all(scope)}
    now = datetime.now(UTC)
    engines: dict[str, dict[str, dict[str, Any]] | None] = {}
    rows = []
    # mypy reads Sessions.list's `list[...]` as the method itself (sessions' own report).
    for row in ctx.sessions.list(scope):  # type: ignore[attr-defined]
        record = records.get(row["stack"])
        asked = record.request if record else {}
        if row["host"] not in engines:
            engines[row["host"]] = engine_states(row["host"])
        listed = engines[row["host"]]
        if listed is None:
            state = {"status": "unknown", "health": None}
        elif "container" not in row:  # its manifest cannot be read
            state = {"status": "missing", "health": None}
        else:
            state = listed.get(row["container"], {"status": "missing", "health": None})
        age, seconds = _age(row["createdAt"], now)
        rows.append(
            {
                "session": row["sessionId"],
                "tenant": row["tenant"],
                "host": row["host"],
                "status": state["status"] or "unknown",
                "health": state["health"] or "",
                "backend": asked.get("backend") or "",
                "variant": asked.get("variant") or asked.get("profile") or "default",
                "age": age,
                "seconds": seconds,
                "ports": row.get("ports") or [],
            }
        )
    return rows


def _sorted(rows: list[dict[str, Any]], sort: str, descending: bool) -> list[dict[str, Any]]:
    key = {
        "session": lambda r: r["session"],
        "tenant": lambda r: (r["tenant"] or "", r["session"]),
        "status": lambda r: (r["status"], r["health"], r["session"]),
        "backend": lambda r: (r["backend"], r["session"]),
        "age": lambda r: (r["seconds"], r["session"]),
    }[sort]
    return sorted(rows, key=key, reverse=descending)


def _view(request: Request, viewer: Viewer) -> dict[str, Any]:
    """The table's filter and sort from the query string (unknown values: the default)."""
    q = request.query_params
    sort = q.get("sort", "session")
    return {
        "q": q.get("q", "").strip()[:100],
        "status": q.get("status", "").strip()[:32],
        "tenant": (q.get("tenant", "").strip()[:32] or None) if viewer.principal.admin else None,
        "sort": sort if sort in SORTS else "session",
        "order": "desc" if q.get("order") == "desc" else "asc",
    }


async def _table(request: Request, viewer: Viewer) -> dict[str, Any]:
    view = _view(request, viewer)
    ctx = _ctx(request)
    rows = await ctx.call(_rows, ctx, viewer.principal.scope(view["tenant"]))
    everything = len(rows)
    if view["q"]:
        rows = [r for r in rows if view["q"].lower() in r["session"].lower()]
    if view["status"]:
        rows = [r for r in rows if view["status"] in (r["status"], r["health"])]
    rows = _sorted(rows, view["sort"], view["order"] == "desc")
    for row in rows:
        row["host_name"] = _port_host(row["host"], request)
        row["link"] = f"/sessions/{row['session']}" + (
            "?" + urlencode({"tenant": row["tenant"]})
            if viewer.principal.admin and row["tenant"]
            else ""
        )
    query = {k: v for k, v in view.items() if v}
    return {
        "rows": rows,
        "view": view,
        "everything": everything,
        "query": urlencode(query),
        "sort_link": lambda name: (
            "?"
            + urlencode(
                {
                    **query,
                    "sort": name,
                    "order": "desc" if view["sort"] == name and view["order"] == "asc" else "asc",
                }
            )
        ),
        "updated": datetime.now(UTC).strftime("%H:%M:%S UTC"),
    }


@router.get("/")
async def sessions_page(request: Request) -> Response:
    viewer = await _viewer(request)
    if viewer is None:
        return _to_login()
    return _page(
        request,
        "sessions.html",
        viewer=viewer,
        request_destroyed=request.query_params.get("destroyed", "")[:63],
        **await _table(request, viewer),
    )


@router.get("/rows")
async def rows_fragment(request: Request) -> Response:
    """The table's body alone (the page's script polls it for live rows)."""
    viewer = await _viewer(request)
    if viewer is None:
        return Response(status_code=401, headers=SECURITY_HEADERS)
    return _page(request, "rows.html", viewer=viewer, **await _table(request, viewer))


# --- create ------------------------------------------------------------------------------


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
    viewer = await _viewer(request)
    if viewer is None:
        return _to_login()
    form = {"backend": "claude", "ports": "3000"}
    return _page(request, "new.html", viewer=viewer, form=form, placed={}, general=[])


@router.post("/sessions/new")
async def create(request: Request) -> Response:
    posted = await _posted(request)
    if isinstance(posted, Response):
        return posted
    viewer, form = posted
    body, problems = _request_of(form)
    ctx = _ctx(request)
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
        return _page(request, "new.html", 422, viewer, form=form, placed=placed, general=general)
    except DockyardError as error:
        return _page(
            request,
            "new.html",
            error.http_status,
            viewer,
            form=form,
            placed={},
            general=error.problems,
        )
    tenant = session_request.get("tenant")
    where = f"/sessions/{manifest['sessionId']}"
    if viewer.principal.admin and tenant:
        where += "?" + urlencode({"tenant": tenant})
    return RedirectResponse(where, status_code=303, headers=SECURITY_HEADERS)


# --- one session -------------------------------------------------------------------------


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


def _size(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(count) < 1024:
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TiB"


def _bar(used: Any, total: Any) -> dict[str, Any] | None:
    """A meter's values: ``used`` of ``total`` bytes, written out too."""
    if not isinstance(used, int) or not isinstance(total, int) or total <= 0:
        return None
    used = max(0, used)
    return {
        "value": used,
        "max": total,
        "percent": round(100.0 * used / total, 1),
        "text": f"{_size(used)} of {_size(total)} ({100.0 * used / total:.0f}%)",
    }


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
        "memory_bar": _bar(memory.get("used"), memory.get("limit")),
        "disk_bar": _bar(disk.get("used"), disk.get("total")),
    }


def _scope_of(request: Request, viewer: Viewer) -> str | None:
    return viewer.principal.scope(request.query_params.get("tenant") or None)


def _suffix(viewer: Viewer, scope: str | None) -> str:
    return "?" + urlencode({"tenant": scope}) if viewer.principal.admin and scope else ""


@router.get("/sessions/{session_id}")
async def detail_page(session_id: str, request: Request) -> Response:
    viewer = await _viewer(request)
    if viewer is None:
        return _to_login()
    scope = _scope_of(request, viewer)
    mark(request, session_id, scope)
    ctx = _ctx(request)
    try:
        found = await ctx.call(_detail, ctx, session_id, scope)
    except DockyardError as error:
        return _error(request, viewer, error)
    try:
        logs = await ctx.call(_logs, ctx, session_id, scope)
    except DockyardError as error:  # the page still shows what the service layer knows
        logs = "(no logs: " + "; ".join(error.problems) + ")"
    # The engine takes about 2 s to sample a container's stats: the page's script loads
    # them from /stats after the page; ?stats=now renders them in it (without the script).
    stats: dict[str, Any] = {"stats": None, "stats_problem": "", "stats_later": True}
    if request.query_params.get("stats") == "now":
        stats = await _stats_of(ctx, session_id, scope, found["state"]["status"])
    record = found["record"]
    ssh = f"dockyard ssh {session_id}" + (f" --tenant {record.tenant}" if record.tenant else "")
    return _page(
        request,
        "detail.html",
        viewer=viewer,
        session=session_id,
        suffix=_suffix(viewer, scope),
        record=record,
        manifest=found["manifest"],
        manifest_json=json.dumps(found["manifest"], indent=2, sort_keys=True),
        state=found["state"],
        host_name=_port_host(record.host, request),
        ssh=ssh,
        ssh_enabled=bool(record.request.get("ssh")),
        logs=logs,
        **stats,
        stats_now=f"/sessions/{session_id}?"
        + urlencode(
            {**({"tenant": scope} if viewer.principal.admin and scope else {}), "stats": "now"}
        ),
        can_pause=found["can_pause"],
        can_resume=found["can_resume"],
        backup_on=found["backup_on"],
        history=found["history"],
        done=DONE.get(request.query_params.get("done", ""), ""),
    )


async def _stats_of(
    ctx: Context, session: str, scope: str | None, status: str | None
) -> dict[str, Any]:
    """The stats part's values: the stats, or why there are none."""
    if status not in (pausing.RUNNING, pausing.PAUSED):
        return {"stats": None, "stats_problem": f"the container is {status}, not running"}
    try:
        return {"stats": await ctx.call(_stats, ctx, session, scope), "stats_problem": ""}
    except DockyardError as error:
        return {"stats": None, "stats_problem": "; ".join(error.problems)}


@router.get("/sessions/{session_id}/stats")
async def stats_fragment(session_id: str, request: Request) -> Response:
    """The detail page's stats part alone (its script loads it after the page, then
    every 15 s)."""
    viewer = await _viewer(request)
    if viewer is None:
        return Response(status_code=401, headers=SECURITY_HEADERS)
    scope = _scope_of(request, viewer)
    mark(request, session_id, scope)
    ctx = _ctx(request)
    try:
        found = await ctx.call(_state, ctx, session_id, scope)
    except DockyardError as error:
        return Response(
            "\n".join(error.problems), status_code=error.http_status, headers=SECURITY_HEADERS
        )
    values = await _stats_of(ctx, session_id, scope, found["status"])
    return _page(request, "stats.html", viewer=viewer, session=session_id, **values)


def _state(ctx: Context, session: str, scope: str | None) -> dict[str, Any]:
    manifest = ctx.sessions.get(session, scope)
    record = ctx.sessions.registry.find(session, scope)
    return engine_state(manifest["container"]["id"], record.host)


@router.get("/sessions/{session_id}/logs")
async def logs_fragment(session_id: str, request: Request) -> Response:
    viewer = await _viewer(request)
    if viewer is None:
        return Response(status_code=401, headers=SECURITY_HEADERS)
    ctx = _ctx(request)
    try:
        text = await ctx.call(_logs, ctx, session_id, _scope_of(request, viewer))
    except DockyardError as error:
        return Response(
            "\n".join(error.problems), status_code=error.http_status, headers=SECURITY_HEADERS
        )
    return Response(text, media_type="text/plain; charset=utf-8", headers=SECURITY_HEADERS)


def _backup(ctx: Context, session: str, scope: str | None) -> Any:
    """``dockyard backup SESSION``: the service layer's backup of the session's workspace,
    for a session of the viewer's tenant only (the verb's target would otherwise name a
    destroyed session's repository: another tenant's answers "not found" here)."""
    ctx.sessions.registry.find(session, scope)
    return backups.run_backup(ctx.sessions, backups.target(ctx.sessions, session, scope))


def _verbs(ctx: Context) -> dict[str, tuple[Any, str]]:
    """The detail page's actions: each a service-layer call and the notice it leaves."""
    return {
        "refresh": (ctx.sessions.refresh, "refreshed"),
        "pause": (ctx.sessions.pause, "paused"),
        "resume": (ctx.sessions.resume, "resumed"),
        "backup": (functools.partial(_backup, ctx), "backed-up"),
    }


async def _act(session_id: str, verb: str, request: Request) -> Response:
    """A detail page's action, posted with the login's CSRF token, in the viewer's tenant."""
    posted = await _posted(request)
    if isinstance(posted, Response):
        return posted
    viewer, _ = posted
    scope = _scope_of(request, viewer)
    mark(request, session_id, scope)
    ctx = _ctx(request)
    call, done = _verbs(ctx)[verb]
    try:
        await ctx.call(call, session_id, scope)
    except DockyardError as error:
        return _error(request, viewer, error)
    where = f"/sessions/{session_id}" + _suffix(viewer, scope)
    where += ("&" if "?" in where else "?") + f"done={done}"
    return RedirectResponse(where, status_code=303, headers=SECURITY_HEADERS)


@router.post("/sessions/{session_id}/refresh")
async def refresh(session_id: str, request: Request) -> Response:
    return await _act(session_id, "refresh", request)


@router.post("/sessions/{session_id}/pause")
async def pause(session_id: str, request: Request) -> Response:
    return await _act(session_id, "pause", request)


@router.post("/sessions/{session_id}/resume")
async def resume(session_id: str, request: Request) -> Response:
    return await _act(session_id, "resume", request)


@router.post("/sessions/{session_id}/backup")
async def backup(session_id: str, request: Request) -> Response:
    return await _act(session_id, "backup", request)


@router.get("/sessions/{session_id}/destroy")
async def destroy_page(session_id: str, request: Request) -> Response:
    """The confirmation: it names the session (and its tenant) before anything goes."""
    viewer = await _viewer(request)
    if viewer is None:
        return _to_login()
    scope = _scope_of(request, viewer)
    ctx = _ctx(request)
    try:
        record = await ctx.call(ctx.sessions.registry.find, session_id, scope)
    except DockyardError as error:
        return _error(request, viewer, error)
    return _page(
        request,
        "confirm.html",
        viewer=viewer,
        session=session_id,
        record=record,
        suffix=_suffix(viewer, scope),
    )


@router.post("/sessions/{session_id}/destroy")
async def destroy(session_id: str, request: Request) -> Response:
    posted = await _posted(request)
    if isinstance(posted, Response):
        return posted
    viewer, form = posted
    scope = _scope_of(request, viewer)
    mark(request, session_id, scope)
    if form.get("confirm") != session_id:
        return _page(
            request,
            "error.html",
            422,
            viewer,
            title="Not confirmed",
            problems=[
                f"confirm: not the session's name (allowed: {session_id!r}, from the "
                "confirmation page)"
            ],
        )
    ctx = _ctx(request)
    try:
        await ctx.call(ctx.sessions.destroy, session_id, scope)
    except DockyardError as error:
        return _error(request, viewer, error)
    return RedirectResponse(
        "/?" + urlencode({"destroyed": session_id}), status_code=303, headers=SECURITY_HEADERS
    )


# --- the hosts ---------------------------------------------------------------------------


def _hosts(ctx: Context) -> dict[str, Any]:
    """Each host's engine, quota use against its caps and images in use, and the health
    report's last run (:mod:`dockyard.sessions.host_view`)."""
    return {
        "hosts": host_view.host_views(ctx.sessions),
        "health": host_view.health_report(),
    }


@router.get("/host")
async def host_page(request: Request) -> Response:
    """Admin keys only: a host's use and caps span every tenant (a tenant's key gets the
    page of an address that does not exist)."""
    viewer = await _viewer(request)
    if viewer is None:
        return _to_login()
    if not viewer.principal.admin:
        return _page(
            request,
            "error.html",
            404,
            viewer,
            title="Not found",
            problems=["no such page: /host"],
        )
    ctx = _ctx(request)
    return _page(request, "host.html", viewer=viewer, **await ctx.call(_hosts, ctx))


# --- static ------------------------------------------------------------------------------


@router.get("/static/{name}")
async def static(name: str) -> Response:
    if name not in STATIC:
        return Response("not found", status_code=404, headers=SECURITY_HEADERS)
    data = (resources.files(__package__) / "static" / name).read_bytes()
    return Response(
        data, media_type=STATIC[name], headers={**SECURITY_HEADERS, "Cache-Control": "max-age=300"}
    )
