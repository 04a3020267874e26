"""Bridging one routed WebSocket to a sandbox's port (issue 30; the checks before it are
:mod:`dockyard.api.e2b_routing`'s).

The upstream handshake carries the client's headers as the HTTP routing filters them
(:func:`.e2b_upstream.websocket_headers`) and its subprotocols; the client is accepted
with the subprotocol the sandbox chose, then messages pass both ways until either side
closes, the sandbox's close code passed on. What one socket holds in the server's memory
is bounded (:data:`WEBSOCKET_MESSAGE_BYTES`, :data:`WEBSOCKET_QUEUE`).
"""

from __future__ import annotations

import anyio
import httpx
from starlette.types import Receive, Scope, Send
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from .e2b_upstream import DAEMON_WAIT_S, BadGateway, websocket_headers

WEBSOCKET_MESSAGE_BYTES = 4 * 1024 * 1024
"""The largest WebSocket message a sandbox may send through the routing (a larger one
closes the socket, 1009). With :data:`WEBSOCKET_QUEUE` it bounds what one routed socket
holds in the server's memory when its client reads slower than its sandbox writes."""
WEBSOCKET_QUEUE = 2
"""Messages from the sandbox held per socket before reading from it pauses."""


async def bridge(
    scope: Scope,
    receive: Receive,
    send: Send,
    url: httpx.URL,
    headers: dict[str, str],
    status: dict[str, int],
) -> None:
    """Open the sandbox's side at ``url`` (a refusal: :class:`.e2b_upstream.BadGateway`),
    accept the client's with the sandbox's subprotocol (``status`` becomes 101), and
    :func:`pump` until either side closes."""
    port = int(url.port or 0)
    uri = f"ws://{url.host}:{port}{url.raw_path.decode('ascii')}"
    try:
        upstream = await connect(
            uri,
            additional_headers=websocket_headers(scope.get("headers", []), port, scope),
            user_agent_header=headers.get("user-agent"),
            subprotocols=scope.get("subprotocols") or None,
            compression=None,
            proxy=None,
            open_timeout=DAEMON_WAIT_S,
            max_size=WEBSOCKET_MESSAGE_BYTES,
            max_queue=WEBSOCKET_QUEUE,
        )
    except InvalidStatus as exc:
        code = exc.response.status_code
        raise BadGateway(f"the sandbox's port {port} refused the WebSocket ({code})") from None
    except (OSError, WebSocketException, TimeoutError) as exc:
        raise BadGateway(
            f"the sandbox's port {port} did not take the WebSocket: {exc!s}"[:300]
        ) from None
    try:
        await send({"type": "websocket.accept", "subprotocol": upstream.subprotocol})
        status["code"] = 101
        await pump(receive, send, upstream)
    finally:
        await upstream.close()


async def pump(receive: Receive, send: Send, upstream: ClientConnection) -> None:
    """Messages both ways until one side closes: the client's disconnect closes the
    sandbox's socket; the sandbox's close (its code) closes the client's."""
    async with anyio.create_task_group() as group:

        async def inward() -> None:
            while True:
                message = await receive()
                if message["type"] == "websocket.disconnect":
                    group.cancel_scope.cancel()
                    return
                if message["type"] != "websocket.receive":
                    continue
                data = message.get("bytes")
                if data is None:
                    data = message.get("text") or ""
                try:
                    await upstream.send(data)
                except ConnectionClosed:
                    return  # outward sees the close and ends both

        async def outward() -> None:
            try:
                code: int | None = None
                try:
                    async for data in upstream:
                        key = "bytes" if isinstance(data, bytes) else "text"
                        await send({"type": "websocket.send", key: data})
                    code = upstream.close_code
                except ConnectionClosed as closed:  # an error: 1009 (too big), a cut...
                    frame = closed.rcvd or closed.sent
                    code = frame.code if frame is not None else None
                # 1005 (closed without a code) and 1006 (cut) may not be sent in a frame.
                code = 1000 if code == 1005 else 1011 if code in (None, 1006) else code
                await send({"type": "websocket.close", "code": code})
            except OSError:
                pass  # the client went away meanwhile (uvicorn's ClientDisconnected)
            group.cancel_scope.cancel()

        group.start_soon(inward)
        group.start_soon(outward)
