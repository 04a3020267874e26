"""The E2B SDKs' error shape, shared by the E2B-compatible routes
(:mod:`dockyard.api.e2b`) and the routing into sandboxes (:mod:`dockyard.api.e2b_routing`)."""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse

from ..errors import DockyardError
from .errors import REQUEST_ID_HEADER, RateLimited, body


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
