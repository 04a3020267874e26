"""``dockyard.client``: the HTTP API of ``dockyard serve`` (docs/api.md) from Python.

Two clients with the same methods, :class:`Client` (blocking) and :class:`AsyncClient`:
sessions (create, list, get, refresh, destroy) and the reference app's Modal plan. Every
answer is the server's JSON as a typed dict. Every failure is a :mod:`dockyard.errors`
kind carrying the server's problem lines unchanged (the lines the CLI prints):

======================  ==============================  =========
server answer            raised                          exit code
======================  ==============================  =========
422 ``invalid``          :class:`InvalidInput`           2
413 ``too-large``        :class:`TooLarge` (invalid)     2
404 ``not-found``        :class:`NotFound`               4
429 ``quota``            :class:`QuotaExceeded`          3
429 ``rate-limited``     :class:`RateLimited` (quota)    1
409 ``conflict``         :class:`Conflict`               1
401 ``unauthorized``     :class:`Unauthorized` (failed)  1
anything else, no answer :class:`Failed`                 1
======================  ==============================  =========

Each raised error also has ``status`` (the HTTP status, 0 when no answer came) and
``request_id`` (the server's ``X-Request-Id``, to find its log and audit lines).

The server and key come from the arguments, else ``$DOCKYARD_SERVER`` and
``$DOCKYARD_API_KEY``. The key is sent only as ``Authorization: Bearer`` and never
appears in an error.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypedDict, TypeVar, cast
from urllib.parse import urlsplit

import httpx

from .errors import (
    FAILED,
    Conflict,
    DockyardError,
    Failed,
    InvalidInput,
    NotFound,
    QuotaExceeded,
    shown,
)

if TYPE_CHECKING:
    from .manifest import Manifest
else:
    Manifest = dict

SERVER_VARIABLE = "DOCKYARD_SERVER"
KEY_VARIABLE = "DOCKYARD_API_KEY"
DEFAULT_TIMEOUT = 600.0
"""Seconds a call may take: a create or refresh waits for the engine (and a pull-free
image start), so the default is generous; pass ``timeout`` for less."""
PAGE_SIZE = 100

# --- Errors ---------------------------------------------------------------------------------


class Unauthorized(Failed, kind="unauthorized"):
    """No key, or one the server does not know or has revoked (401)."""

    http_status = 401


class RateLimited(QuotaExceeded, code=FAILED, kind="rate-limited"):
    """The key passed its request rate (429 that is not the sessions quota): a request
    quota, so ``except QuotaExceeded`` catches it, with the server's exit code 1 and
    ``retry_after`` seconds from its ``Retry-After``."""

    retry_after: float = 1.0


class TooLarge(InvalidInput, kind="too-large"):
    """The request body passed the server's limit (413)."""

    http_status = 413


_KINDS: dict[str, type[DockyardError]] = {
    "invalid": InvalidInput,
    "too-large": TooLarge,
    "not-found": NotFound,
    "quota": QuotaExceeded,
    "rate-limited": RateLimited,
    "conflict": Conflict,
    "unauthorized": Unauthorized,
}
_STATUSES: dict[int, type[DockyardError]] = {
    401: Unauthorized,
    404: NotFound,
    409: Conflict,
    413: TooLarge,
    422: InvalidInput,
    429: RateLimited,
}


def _attach(error: DockyardError, status: int, request_id: str | None) -> DockyardError:
    error.status = status  # type: ignore[attr-defined]
    error.request_id = request_id  # type: ignore[attr-defined]
    return error


def error_of(response: httpx.Response) -> DockyardError:
    """The :mod:`dockyard.errors` kind for a failed answer, with the server's lines.

    The server's error object (``{"error": {"code", "kind", "problems", "requestId"}}``)
    picks the kind by its ``kind``, else by the status; an answer that is not one (a
    proxy's page, a wrong URL) is a kind by status whose one line names the call, the
    status and what to check — never the body, which could hold anything."""
    request_id = response.headers.get("x-request-id")
    where = f"{response.request.method} {_safe_url(response.request.url)}"
    try:
        document = response.json()
    except ValueError:
        document = None
    found = document.get("error") if isinstance(document, dict) else None
    problems = found.get("problems") if isinstance(found, dict) else None
    if isinstance(found, dict) and isinstance(problems, list) and problems:
        lines = [str(line) for line in problems]
        kind = found.get("kind")
        cls = _KINDS.get(kind) if isinstance(kind, str) else None
        cls = cls or _STATUSES.get(response.status_code, Failed)
        request_id = str(found.get("requestId") or request_id or "") or None
    else:
        cls = _STATUSES.get(response.status_code, Failed)
        lines = [
            f"{where}: HTTP {response.status_code} {response.reason_phrase} without a dockyard "
            "error object (check that the server URL points at `dockyard serve`)"
        ]
    error = cls(lines[0], lines)
    if isinstance(error, RateLimited):
        try:
            error.retry_after = float(response.headers.get("retry-after", "1"))
        except ValueError:
            error.retry_after = 1.0
    return _attach(error, response.status_code, request_id)


def _safe_url(url: httpx.URL) -> str:
    """The URL without credentials or query (a query can carry anything)."""
    return str(url.copy_with(userinfo=b"", query=None))


def _unreachable(url: str, exc: httpx.HTTPError) -> DockyardError:
    reason = type(exc).__name__
    return _attach(
        Failed(
            f"the dockyard server at {url} did not answer ({reason}): check the URL "
            f"(--server or ${SERVER_VARIABLE}), that `dockyard serve` runs there, and the "
            "network between"
        ),
        0,
        None,
    )


# --- Answers --------------------------------------------------------------------------------


class Session(TypedDict):
    """``GET /api/sessions/{id}``: the manifest, the container's state and health."""

    manifest: Manifest
    status: str | None
    health: str | None


class _ListedSession(TypedDict):
    """The keys every row of ``GET /api/sessions`` has (the API's ``SessionRow``)."""

    sessionId: str
    tenant: str | None
    stack: str
    host: str
    cwd: str
    createdAt: str


class SessionRow(_ListedSession, total=False):
    """A row of ``GET /api/sessions``: the keys above, and these where the server has them
    (two classes: ``NotRequired`` is lost at run time under postponed annotations on
    Python 3.11)."""

    labels: dict[str, str]
    container: str | None
    ports: list[dict[str, Any]]


class SessionPage(TypedDict):
    items: list[SessionRow]
    total: int
    offset: int
    next: int | None


class Destroyed(TypedDict):
    sessionId: str
    destroyed: bool


class ModalPlan(TypedDict):
    sessionId: str
    cwd: str
    plan: str


# --- Calls (one description, two transports) ------------------------------------------------

T = TypeVar("T")


@dataclass(frozen=True)
class _Call(Generic[T]):
    method: str
    path: str
    params: list[tuple[str, str]] = field(default_factory=list)
    body: Any = None

    @property
    def request(self) -> dict[str, Any]:
        """The call as httpx's ``request`` arguments (either client)."""
        return {"method": self.method, "url": self.path, "params": self.params, "json": self.body}

    def parse(self, response: httpx.Response) -> T:
        if response.is_success:
            return cast(T, response.json())
        raise error_of(response)


def _query(**given: Any) -> list[tuple[str, str]]:
    params: list[tuple[str, str]] = []
    for name, value in given.items():
        if value is None:
            continue
        values = value if isinstance(value, list | tuple) else [value]
        for item in values:
            text = ("true" if item else "false") if isinstance(item, bool) else str(item)
            params.append((name, text))
    return params


def _segment(session: str) -> str:
    """A session id as one path segment: a value that is not one is refused here, so no
    id can address another endpoint (``../keys``)."""
    if not session or session in {".", ".."} or any(c in session for c in "/?#%\\"):
        raise _attach(
            InvalidInput(
                "session",
                [
                    f"session: {shown(session)} is not a session id (allowed: a session id; no / ? # % \\, not . or ..)"
                ],
            ),
            0,
            None,
        )
    return session


class _Calls:
    """What each method sends; the clients only add the transport."""

    @staticmethod
    def create(
        request: Mapping[str, Any],
        secrets: Mapping[str, str] | None,
        reference: bool,
    ) -> _Call[Manifest]:
        body = dict(request)
        if secrets:
            body["secretValues"] = dict(secrets)
        path = "/api/sessions/create" if reference else "/api/sessions"
        return _Call("POST", path, body=body)

    @staticmethod
    def list(
        tenant: str | None, labels: Mapping[str, str | None] | None, limit: int, offset: int
    ) -> _Call[SessionPage]:
        wanted = [k if v is None else f"{k}={v}" for k, v in (labels or {}).items()]
        return _Call(
            "GET",
            "/api/sessions",
            _query(tenant=tenant, label=wanted or None, limit=limit, offset=offset),
        )

    @staticmethod
    def get(session: str, tenant: str | None) -> _Call[Session]:
        return _Call("GET", f"/api/sessions/{_segment(session)}", _query(tenant=tenant))

    @staticmethod
    def refresh(
        session: str, tenant: str | None, secrets: Mapping[str, str] | None
    ) -> _Call[Manifest]:
        body = {"secretValues": dict(secrets)} if secrets else None
        return _Call(
            "POST", f"/api/sessions/{_segment(session)}/refresh", _query(tenant=tenant), body
        )

    @staticmethod
    def destroy(session: str, tenant: str | None, final_backup: bool) -> _Call[Destroyed]:
        return _Call(
            "DELETE",
            f"/api/sessions/{_segment(session)}",
            _query(tenant=tenant, finalBackup=final_backup),
        )

    @staticmethod
    def modal_plan(session: str, cwd: str, tenant: str | None) -> _Call[ModalPlan]:
        return _Call(
            "GET",
            "/api/cloud/providers/modal/plan",
            _query(cwd=cwd, sessionId=session, tenant=tenant),
        )


def _settings(server: str | None, key: str | None) -> tuple[str, str | None]:
    url = server or os.environ.get(SERVER_VARIABLE) or ""
    problems = []
    parts = urlsplit(url)
    if not url:
        problems.append(
            f"server: missing (allowed: an http(s) URL of `dockyard serve`, e.g. --server "
            f"https://dockyard.example.org, or ${SERVER_VARIABLE})"
        )
    elif parts.scheme not in {"http", "https"} or not parts.hostname:
        problems.append(
            f"server: {shown(url)} is not allowed (allowed: an http:// or https:// URL)"
        )
    elif parts.username or parts.password:
        problems.append(
            "server: the URL holds credentials (allowed: a URL without user:password@; the "
            f"key goes in --api-key or ${KEY_VARIABLE})"
        )
    given_key = key if key is not None else os.environ.get(KEY_VARIABLE)
    if given_key is not None and (not given_key.strip() or any(c.isspace() for c in given_key)):
        # Never the value: it is a key.
        problems.append(
            "api key: empty or with spaces (allowed: the key `dockyard keys create` printed)"
        )
    if problems:
        raise _attach(InvalidInput("server", problems), 0, None)
    return url.rstrip("/"), given_key


def _headers(key: str | None) -> dict[str, str]:
    headers = {"Accept": "application/json", "User-Agent": "dockyard-client"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    return headers


def _http_options(
    server: str | None, key: str | None, timeout: float, transport: Any, verify: bool | str
) -> tuple[str, dict[str, Any]]:
    """The checked server URL and the httpx client's options (the same for the blocking
    and the asyncio client)."""
    url, key = _settings(server, key)
    return url, {
        "base_url": url,
        "headers": _headers(key),
        "timeout": timeout,
        "transport": transport,
        "verify": verify,
        "follow_redirects": False,
    }


TransportT = TypeVar("TransportT")
HttpT = TypeVar("HttpT")


class _Connection(Generic[TransportT, HttpT]):
    """What both clients hold: the checked server URL and their httpx client (``_open``:
    ``httpx.Client`` or ``httpx.AsyncClient``, with the same options)."""

    _open: Callable[..., HttpT]

    def __init__(
        self,
        server: str | None = None,
        key: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        transport: TransportT | None = None,
        verify: bool | str = True,
    ) -> None:
        self.server, options = _http_options(server, key, timeout, transport, verify)
        self._http: HttpT = self._open(**options)


@contextlib.contextmanager
def _reaching(url: str) -> Iterator[None]:
    """No answer from the server (connection, TLS, timeout) as :func:`_unreachable`."""
    try:
        yield
    except httpx.HTTPError as exc:
        raise _unreachable(url, exc) from None


class Client(_Connection[httpx.BaseTransport, httpx.Client]):
    """The API, blocking. ``server``/``key`` default to $DOCKYARD_SERVER/$DOCKYARD_API_KEY;
    ``transport`` replaces the network (tests, a Unix socket). Use as a context manager or
    call :meth:`close`."""

    _open = httpx.Client

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(self, call: _Call[T]) -> T:
        with _reaching(self.server):
            response = self._http.request(**call.request)
        return call.parse(response)

    def create(
        self,
        request: Mapping[str, Any],
        secrets: Mapping[str, str] | None = None,
        *,
        reference: bool = True,
    ) -> Manifest:
        """Create the session (or converge it) and return its manifest. ``request`` is the
        reference request; ``secrets`` the values of names in ``request["secrets"]``
        (sent in the body, never logged by the server). ``reference`` picks
        ``POST /api/sessions/create`` (the reference app's path) over ``/api/sessions``."""
        return self._send(_Calls.create(request, secrets, reference))

    def list_page(
        self,
        tenant: str | None = None,
        labels: Mapping[str, str | None] | None = None,
        *,
        limit: int = PAGE_SIZE,
        offset: int = 0,
    ) -> SessionPage:
        """One page of sessions; ``labels`` all match (a None value: the key is set)."""
        return self._send(_Calls.list(tenant, labels, limit, offset))

    def list(
        self,
        tenant: str | None = None,
        labels: Mapping[str, str | None] | None = None,
        *,
        page_size: int = PAGE_SIZE,
    ) -> Iterator[SessionRow]:
        """Every session the key may see, page after page (``tenant``: admin keys only)."""
        offset: int | None = 0
        while offset is not None:
            page = self.list_page(tenant, labels, limit=page_size, offset=offset)
            yield from page["items"]
            offset = page["next"]

    def get(self, session: str, tenant: str | None = None) -> Session:
        return self._send(_Calls.get(session, tenant))

    def refresh(
        self, session: str, tenant: str | None = None, secrets: Mapping[str, str] | None = None
    ) -> Manifest:
        """Recreate the container (keeping the workspace); the new manifest."""
        return self._send(_Calls.refresh(session, tenant, secrets))

    def destroy(
        self, session: str, tenant: str | None = None, *, final_backup: bool = True
    ) -> Destroyed:
        return self._send(_Calls.destroy(session, tenant, final_backup))

    def modal_plan(self, session: str, cwd: str, tenant: str | None = None) -> ModalPlan:
        """The reference app's Modal preview of the session (creates nothing)."""
        return self._send(_Calls.modal_plan(session, cwd, tenant))


class AsyncClient(_Connection[httpx.AsyncBaseTransport, httpx.AsyncClient]):
    """The API for asyncio: the same methods as :class:`Client`, awaited."""

    _open = httpx.AsyncClient

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._http.aclose()

    async def _send(self, call: _Call[T]) -> T:
        with _reaching(self.server):
            response = await self._http.request(**call.request)
        return call.parse(response)

    async def create(
        self,
        request: Mapping[str, Any],
        secrets: Mapping[str, str] | None = None,
        *,
        reference: bool = True,
    ) -> Manifest:
        return await self._send(_Calls.create(request, secrets, reference))

    async def list_page(
        self,
        tenant: str | None = None,
        labels: Mapping[str, str | None] | None = None,
        *,
        limit: int = PAGE_SIZE,
        offset: int = 0,
    ) -> SessionPage:
        return await self._send(_Calls.list(tenant, labels, limit, offset))

    async def list(
        self,
        tenant: str | None = None,
        labels: Mapping[str, str | None] | None = None,
        *,
        page_size: int = PAGE_SIZE,
    ) -> AsyncIterator[SessionRow]:
        offset: int | None = 0
        while offset is not None:
            page = await self.list_page(tenant, labels, limit=page_size, offset=offset)
            for row in page["items"]:
                yield row
            offset = page["next"]

    async def get(self, session: str, tenant: str | None = None) -> Session:
        return await self._send(_Calls.get(session, tenant))

    async def refresh(
        self, session: str, tenant: str | None = None, secrets: Mapping[str, str] | None = None
    ) -> Manifest:
        return await self._send(_Calls.refresh(session, tenant, secrets))

    async def destroy(
        self, session: str, tenant: str | None = None, *, final_backup: bool = True
    ) -> Destroyed:
        return await self._send(_Calls.destroy(session, tenant, final_backup))

    async def modal_plan(self, session: str, cwd: str, tenant: str | None = None) -> ModalPlan:
        return await self._send(_Calls.modal_plan(session, cwd, tenant))


__all__ = [
    "KEY_VARIABLE",
    "SERVER_VARIABLE",
    "AsyncClient",
    "Client",
    "Destroyed",
    "ModalPlan",
    "RateLimited",
    "Session",
    "SessionPage",
    "SessionRow",
    "TooLarge",
    "Unauthorized",
    "error_of",
]
