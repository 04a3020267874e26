"""What every request gets, in one place: an id (``X-Request-Id`` on every answer), the
body size limit (413) and read timeout (408: a client that stops sending its body is let
go), a line in the audit trail (actor ``key:<id>``, or ``anonymous`` before a key is
known; the method, path, status and request id as its detail — never a body, header or
query value), and a catch-all that answers 500 with the request id and no traceback (the
traceback goes to the server's log)."""

from __future__ import annotations

import json
import logging
import os
import random
import time
from typing import Any

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import FAILED, DockyardError, Failed
from ..sessions import audit
from .context import Context
from .errors import REQUEST_ID_HEADER, TooLarge, body

log = logging.getLogger(__package__)


_ids = random.Random()  # noqa: S311 - an id, not a secret
# `dockyard serve --workers N` forks its servers after the app is built: each draws anew.
os.register_at_fork(after_in_child=_ids.seed)


def request_id() -> str:
    """32 random hex digits, as uuid4 gave, from a generator seeded once per process (no
    random source read per request: uuid4 was 2 % of a list request's CPU). An id is no
    secret; it says nothing of how many requests came before it."""
    return f"{_ids.getrandbits(128):032x}"


async def audit_request(
    context: Context, scope: Scope, *, ok: bool, detail: str, started: float
) -> None:
    """A request's audit line (the key id as actor; HTTP requests and WebSockets alike):
    ``detail`` says what was asked (cut in its middle to at most
    :data:`~dockyard.sessions.audit.DETAIL_MAX` characters: a long path cannot make a huge
    line), the request id is added. A line that cannot be written is logged, never the
    request's error."""
    state = scope["dockyard"]
    if len(detail) > audit.DETAIL_MAX:
        detail = detail[: audit.DETAIL_MAX - 9] + "…" + detail[-8:]  # the status stays
    entry = {
        "time": audit.now(),
        "actor": state.get("actor", "anonymous"),
        "action": "api",
        "session": state.get("session"),
        "tenant": state.get("tenant"),
        "result": "ok" if ok else "error",
        "duration_ms": round((time.monotonic() - started) * 1000),
        "detail": f"{detail} request {state['request_id']}",
    }
    try:
        # Grouped with the other requests' lines (one lock, write and fsync per group, no
        # thread hop per request); returns once this line is on disk, as append did.
        await audit.appended(context.sessions.where.audit_log, entry)
    except Exception:  # a file error, or a value the line cannot hold: this line's alone
        log.exception("the audit line of request %s could not be written", state["request_id"])


class SlowBody(DockyardError):
    """The client stopped sending its body: nothing came for the read timeout."""

    exit_code = FAILED
    http_status = 408
    kind = "request-timeout"


class RequestMiddleware:
    def __init__(self, app: ASGIApp, context: Context) -> None:
        self.app = app
        self.context = context

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = request_id()
        state: dict[str, Any] = scope.setdefault("dockyard", {})
        state.update(request_id=rid, actor="anonymous")
        started = time.monotonic()
        status: dict[str, Any] = {"code": 500, "sent": False, "refused": None}
        limit = self.context.limits.body_limit(scope["method"], scope["path"])

        declared = dict(scope.get("headers") or []).get(b"content-length")
        too_large = TooLarge(
            "request", [f"request: the body is over {limit} bytes (allowed: at most {limit})"]
        )

        received = 0
        timeout = self.context.limits.body_timeout_s
        slow = SlowBody(
            f"request: no body bytes came for {timeout:g} s (allowed: at most {timeout:g} s "
            "between two parts of a body; send the body at once)"
        )
        body_done = False

        async def limited_receive() -> Message:
            nonlocal received, body_done
            if body_done:
                # After the body only a disconnect can come (a stream waits for it).
                return await receive()
            # A client that stops sending its body (slowloris) is answered 408 and let go,
            # instead of holding a worker's request open for ever.
            with anyio.move_on_after(timeout) as waited:
                message = await receive()
            if waited.cancelled_caught:
                status["refused"] = slow
                raise slow
            if message["type"] == "http.request":
                body_done = not message.get("more_body", False)
                received += len(message.get("body", b""))
                if received > limit:
                    # The framework turns an error while it reads the body into its own
                    # 400; app_send answers 413 in its place.
                    status["refused"] = too_large
                    raise too_large
            else:
                body_done = True
            return message

        async def tagged_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                status["sent"] = True
                headers = [
                    (k, v)
                    for k, v in message.get("headers", [])
                    if k.lower() != REQUEST_ID_HEADER.lower().encode()
                ]
                headers.append((REQUEST_ID_HEADER.lower().encode(), rid.encode()))
                message = {**message, "headers": headers}
            await send(message)

        async def app_send(message: Message) -> None:
            refused = status["refused"]
            if refused is None:
                await tagged_send(message)
            elif message["type"] == "http.response.start" and not status["sent"]:
                await self._answer(refused.http_status, body(refused, scope), tagged_send)

        try:
            if declared is not None and (not declared.isdigit() or int(declared) > limit):
                await self._answer(too_large.http_status, body(too_large, scope), tagged_send)
            else:
                await self.app(scope, limited_receive, app_send)
        except (TooLarge, SlowBody) as error:
            if not status["sent"]:
                await self._answer(error.http_status, body(error, scope), tagged_send)
        except Exception:
            log.exception("request %s failed", rid)
            if not status["sent"]:
                failure = Failed(
                    f"internal error (request {rid}); the server's log has the details"
                )
                await self._answer(500, body(failure, scope), tagged_send)
        finally:
            code = status["code"]
            detail = f"{scope['method']} {scope['path']} {code}"
            await audit_request(self.context, scope, ok=code < 400, detail=detail, started=started)

    @staticmethod
    async def _answer(code: int, payload: dict[str, Any], send: Send) -> None:
        data = json.dumps(payload).encode()
        await send(
            {
                "type": "http.response.start",
                "status": code,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(data)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": data})
