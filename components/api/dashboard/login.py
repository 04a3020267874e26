"""Login, the viewer and CSRF: an API key posted once buys an HttpOnly, ``SameSite=Strict``
cookie holding a random token (never the key); the login (its key, tenant, admin flag and
CSRF token, by the SHA-256 of the token) is kept in the API's store (``dashboard_logins``,
SQLite or PostgreSQL like the keys), so a restart or another replica keeps it. Every
state-changing form carries the login's CSRF token; the login form has its own
(double-submit)."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy import Engine, delete, func, select

from ..principal import Principal, charge
from ..store.models import ApiKey, DashboardLogin
from ..store.transactions import Transactional
from .pages import (
    SECURITY_HEADERS,
    Answered,
    Viewer,
    ctx_of,
    form_of,
    page,
    refused,
    secure,
    to_login,
)

router = APIRouter(include_in_schema=False)

COOKIE = "dockyard_session"
LOGIN_COOKIE = "dockyard_login"
LOGIN_TTL = 8 * 3600
"""Seconds a login lasts (the key is checked for revocation on every request too)."""
LOGINS_PER_KEY = 100
"""Open logins one key may hold; a new one beyond replaces that key's oldest (so no key
can crowd out another's)."""


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _now() -> datetime:
    return datetime.now(UTC)


def _aware(moment: datetime) -> datetime:
    # SQLite hands timezone-aware columns back naive; they were written in UTC.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Login:
    key_id: str
    tenant: str | None
    admin: bool
    csrf: str
    expires: datetime


class Logins(Transactional):
    """The dashboard's logins in the API store, by the digest of their cookie token (the
    token itself is stored nowhere). Expired logins are removed when a login opens and
    when one is read; a revoked key's logins when they are read."""

    def __init__(self, engine: Engine, ttl: float = LOGIN_TTL) -> None:
        super().__init__(engine)
        self.ttl = timedelta(seconds=ttl)

    def open(self, key_id: str, tenant: str | None, admin: bool) -> str:
        """A new login of ``key_id``; the cookie's token (returned once)."""
        token, now = secrets.token_urlsafe(32), _now()
        with self._session() as session:
            session.execute(delete(DashboardLogin).where(DashboardLogin.expires_at <= now))
            mine = select(DashboardLogin.token_sha256).where(DashboardLogin.key_id == key_id)
            held = session.scalar(select(func.count()).select_from(mine.subquery())) or 0
            if held >= LOGINS_PER_KEY:
                oldest = mine.order_by(DashboardLogin.created_at).limit(held - LOGINS_PER_KEY + 1)
                session.execute(
                    delete(DashboardLogin).where(
                        DashboardLogin.token_sha256.in_(list(session.scalars(oldest)))
                    )
                )
            session.add(
                DashboardLogin(
                    token_sha256=_digest(token),
                    key_id=key_id,
                    tenant=tenant,
                    admin=admin,
                    csrf=secrets.token_urlsafe(32),
                    created_at=now,
                    expires_at=now + self.ttl,
                )
            )
        return token

    def get(self, token: str) -> Login | None:
        """The open login of ``token`` whose key is still there and not revoked, or None
        (an expired or revoked one is removed)."""
        query = (
            select(DashboardLogin, ApiKey.id, ApiKey.revoked_at)
            .outerjoin(ApiKey, ApiKey.id == DashboardLogin.key_id)
            .where(DashboardLogin.token_sha256 == _digest(token))
        )
        with self._session() as session:
            found = session.execute(query).first()
            if found is None:
                return None
            row, key_id, revoked = found
            if key_id is None or revoked is not None or _aware(row.expires_at) <= _now():
                session.delete(row)
                return None
            return Login(row.key_id, row.tenant, row.admin, row.csrf, _aware(row.expires_at))

    def close(self, token: str) -> None:
        with self._session() as session:
            session.execute(
                delete(DashboardLogin).where(DashboardLogin.token_sha256 == _digest(token))
            )


def logins_of(request: Request) -> Logins:
    state = request.app.state
    if getattr(state, "dashboard_logins", None) is None:
        state.dashboard_logins = Logins(ctx_of(request).store.engine)
    return state.dashboard_logins  # type: ignore[no-any-return]


async def viewer_of(request: Request) -> Viewer | None:
    """The logged-in key (charged against its rate, named in the audit line), or None."""
    token = request.cookies.get(COOKIE, "")[:100]
    login = await ctx_of(request).call(logins_of(request).get, token) if token else None
    if login is None:
        return None
    charge(request, login.key_id)
    return Viewer(Principal(login.key_id, login.tenant, login.admin), login.csrf, token)


async def still_logged_in(request: Request, token: str) -> bool:
    """The login of cookie ``token`` is still open and its key live (a long stream asks
    now and then)."""
    ctx = ctx_of(request)
    return bool(token) and await ctx.call(logins_of(request).get, token) is not None


def csrf_ok(form: dict[str, str], expected: str) -> bool:
    return bool(expected) and hmac.compare_digest(form.get("csrf", "").encode(), expected.encode())


async def posted_form(request: Request) -> tuple[Viewer, dict[str, str]]:
    """A logged-in viewer's posted form whose CSRF token matches; else :class:`Answered`
    with the response that refuses it (the login page; 403)."""
    viewer = await viewer_of(request)
    if viewer is None:
        raise Answered(to_login())
    form = await form_of(request)
    if not csrf_ok(form, viewer.csrf):
        raise Answered(refused(request, viewer))
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
    token = await ctx.call(logins_of(request).open, info.id, info.tenant, info.admin)
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
    viewer, _ = await posted_form(request)
    await ctx_of(request).call(logins_of(request).close, viewer.token)
    response = to_login()
    response.delete_cookie(COOKIE, path="/")
    return response
