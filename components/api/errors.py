"""One exception handler for the error root, and the HTTP layer's own failures in the
same shape: ``{"error": {"code", "kind", "problems", "requestId"}}`` — the object
``dockyard … --json`` prints (``code`` is the CLI's exit code) plus the request id.
No problem line echoes a value that could be a secret: the service layer's messages never
do, and the HTTP layer's name only key paths and what is allowed."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from ..errors import FAILED, INVALID, NOT_FOUND, DockyardError, InvalidInput

log = logging.getLogger(__package__)

REQUEST_ID_HEADER = "X-Request-Id"


class Unauthorized(DockyardError):
    """No API key, or one that is unknown or revoked (the answer never says which)."""

    exit_code = FAILED
    http_status = 401
    kind = "unauthorized"


class RateLimited(DockyardError):
    """The key sent more requests than its rate allows; retry after ``retry_after`` s."""

    exit_code = FAILED
    http_status = 429
    kind = "rate-limited"

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class TooLarge(DockyardError):
    exit_code = INVALID
    http_status = 413
    kind = "too-large"


def request_id(scope: Any) -> str:
    return str(scope.get("dockyard", {}).get("request_id", "-"))


def body(error: DockyardError, scope: Any) -> dict[str, Any]:
    return {"error": {**error.as_dict(), "requestId": request_id(scope)}}


def respond(error: DockyardError, scope: Any) -> JSONResponse:
    headers = {REQUEST_ID_HEADER: request_id(scope)}
    if isinstance(error, RateLimited):
        headers["Retry-After"] = str(max(1, round(error.retry_after)))
    if isinstance(error, Unauthorized):
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse(body(error, scope), status_code=error.http_status, headers=headers)


def _key_path(loc: Sequence[int | str]) -> str:
    """``("body", "container", "ports", 1)`` -> ``request.container.ports[1]``."""
    where, *rest = loc or ("request",)
    path = "request" if where == "body" else str(where)
    for part in rest:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


def validation_problems(exc: RequestValidationError) -> list[str]:
    """Every problem of the HTTP layer at once, by key path; the input is never echoed."""
    problems = []
    for error in exc.errors():
        message = str(error.get("msg", "invalid"))
        problems.append(f"{_key_path(error.get('loc', ()))}: {message}")
    return problems or ["request: invalid"]


def install(app: FastAPI) -> None:
    @app.exception_handler(DockyardError)
    async def dockyard_error(request: Request, error: DockyardError) -> JSONResponse:
        return respond(error, request.scope)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return respond(InvalidInput("request", validation_problems(exc)), request.scope)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        error: DockyardError
        if exc.status_code == 404:
            error = _NotFound(f"no such endpoint: {request.method} {request.url.path}")
        else:
            error = _Http(exc.status_code, str(exc.detail))
        return respond(error, request.scope)


class _NotFound(DockyardError):
    exit_code = NOT_FOUND
    http_status = 404
    kind = "not-found"


class _Http(DockyardError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.http_status = status  # type: ignore[misc]
        self.kind = "http"  # type: ignore[misc]
