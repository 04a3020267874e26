"""Forwarding one HTTP request routed into a sandbox to its port, streamed both ways
(issue 30; the checks before it are :mod:`dockyard.api.e2b_routing`'s).

The body goes up as it comes, bounded by the server's upload limit and body timeout; the
answer comes back chunk by chunk with the sandbox's headers filtered
(:func:`.e2b_upstream.answered_headers`) until it ends or the client goes away. A call to
the daemon's port of a new sandbox waits a few seconds for it to listen.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
from starlette.types import Receive, Scope, Send

from ..errors import DockyardError
from ..sessions import e2b as sandboxes
from .context import Context
from .e2b_upstream import DAEMON_WAIT_S, BadGateway, answered_headers, forwarded_headers
from .errors import REQUEST_ID_HEADER
from .middleware import SlowBody

log = logging.getLogger(__package__)


class HttpProxy:
    """The upstream client (one per server, opened on first use) and the forwarding."""

    def __init__(self, context: Context) -> None:
        self.context = context
        self._client: httpx.AsyncClient | None = None

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()

    async def forward(
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
                # No pool-wide bound for one caller to exhaust: the routing's caps bound it.
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
                    raise SlowBody(
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
            headers=forwarded_headers(scope.get("headers", []), port, scope),
            content=request_body() if has_body else None,
        )
        if (outgoing.url.host, outgoing.url.port) != (url.host, url.port):
            raise BadGateway(f"refused: the request left the sandbox's address ({url.host})")
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


class _TooLarge(DockyardError, status=413, kind="too-large"):
    """A routed request's body over the server's upload limit."""
