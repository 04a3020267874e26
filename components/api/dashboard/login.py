"""Login, the viewer and CSRF: an API key posted once buys an HttpOnly, ``SameSite=Strict``
cookie holding a random token (never the key); the login (its key, tenant, admin flag and
CSRF token) stays in this server's memory. Every state-changing form carries the login's
CSRF token; the login form has its own (double-submit)."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass, field

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from ..context import Context
from ..errors import RateLimited
from ..principal import Principal
from .pages import SECURITY_HEADERS, Viewer, ctx_of, form_of, page, refused, secure, to_login

router = APIRouter(include_in_schema=False)

COOKIE = "dockyard_session"
LOGIN_COOKIE = "dockyard_login"
LOGIN_TTL = 8 * 3600
"""Seconds a login lasts (the key is checked for revocation on every request too)."""
MAX_LOGINS = 10_000


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


def logins_of(request: Request) -> Logins:
    state = request.app.state
    if getattr(state, "dashboard_logins", None) is None:
        state.dashboard_logins = Logins()
    return state.dashboard_logins  # type: ignore[no-any-return]


def _live(ctx: Context, login: Login) -> bool:
    """The login's key is still there and not revoked."""
    return any(
        info.id == login.key_id and info.revoked_at is None
        for info in ctx.store.list(None if login.admin else login.tenant)
    )


async def viewer_of(request: Request) -> Viewer | None:
    """The logged-in key (charged against its rate, named in the audit line), or None."""
    token = request.cookies.get(COOKIE, "")
    login = logins_of(request).get(token) if token else None
    if login is None:
        return None
    ctx = ctx_of(request)
    if not await ctx.call(_live, ctx, login):
        logins_of(request).close(token)
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


async def still_logged_in(request: Request, token: str) -> bool:
    """The login of cookie ``token`` is still open and its key live (a long stream asks
    now and then)."""
    login = logins_of(request).get(token) if token else None
    if login is None:
        return False
    ctx = ctx_of(request)
    return bool(await ctx.call(_live, ctx, login))


def csrf_ok(form: dict[str, str], expected: str) -> bool:
    return bool(expected) and hmac.compare_digest(form.get("csrf", "").encode(), expected.encode())


async def posted_form(request: Request) -> tuple[Viewer, dict[str, str]] | Response:
    """A logged-in viewer's posted form whose CSRF token matches, or the response that
    refuses it (the login page; 403)."""
    viewer = await viewer_of(request)
    if viewer is None:
        return to_login()
    form = await form_of(request)
    if not csrf_ok(form, viewer.csrf):
        return refused(request, viewer)
    return viewer, form


def _login_form(request: Request, status: int = 200, problems: list[str] | None = None) -> Response:
    """The login page with a fresh CSRF token, also set as the login form's cookie."""
    token = secrets.token_urlsafe(32)
    response = page(request, "login.html", status, login_csrf=token, problems=problems or [])
    response.set_cookie(
        LOGIN_COOKIE,
        token,
        max_age=600,
        httponly=True,
        samesite="strict",
        secure=secure(request),
        path="/login",
    )
    return response


@router.get("/login")
async def login_page(request: Request) -> Response:
    return _login_form(request)


@router.post("/login")
async def login(request: Request) -> Response:
    form = await form_of(request)
    if not csrf_ok(form, request.cookies.get(LOGIN_COOKIE, "")):
        return refused(request, None)
    ctx = ctx_of(request)
    info = await ctx.call(ctx.store.authenticate, form.get("key", "").strip())
    if info is None:
        return _login_form(
            request,
            401,
            ["key: the API key is unknown or revoked (allowed: a key from `dockyard keys create`)"],
        )
    request.scope.setdefault("dockyard", {})["actor"] = f"key:{info.id}"
    token = logins_of(request).open(info.id, info.tenant, info.admin)
    redirect = RedirectResponse("/", status_code=303, headers=SECURITY_HEADERS)
    redirect.set_cookie(
        COOKIE,
        token,
        max_age=LOGIN_TTL,
        httponly=True,
        samesite="strict",
        secure=secure(request),
        path="/",
    )
    redirect.delete_cookie(LOGIN_COOKIE, path="/login")
    return redirect


@router.post("/logout")
async def logout(request: Request) -> Response:
    posted = await posted_form(request)
    if isinstance(posted, Response):
        return posted
    viewer, _ = posted
    logins_of(request).close(viewer.token)
    response = to_login()
    response.delete_cookie(COOKIE, path="/")
    return response
