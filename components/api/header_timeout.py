"""uvicorn's httptools protocol with a timeout and a size bound on request heads
(slowloris, memory), for `dockyard serve`."""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

HEAD_BYTES = 64 * 1024
"""Bytes a request's line and headers may take (h11 refused an incomplete head over
16 KiB); bytes that come between requests count too. Over it: 431 and the connection is
closed (httptools itself bounds neither: a head would grow in memory until the timeout)."""

LINGER_S = 30.0
"""At least this long a body the app left unread (answered before it, e.g. 413) may keep
coming before the connection is closed: its bytes are dropped, not kept, and the client
that sends a whole body before it reads gets its answer."""

_TOO_LARGE = f"request line and headers over {HEAD_BYTES} bytes (allowed: at most {HEAD_BYTES})"
TOO_LARGE_ANSWER = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
    b"content-type: text/plain; charset=utf-8\r\nconnection: close\r\n"
    + f"content-length: {len(_TOO_LARGE)}\r\n\r\n{_TOO_LARGE}".encode()
)


def header_timeout_protocol(seconds: float) -> type[asyncio.Protocol]:
    """uvicorn's httptools protocol (the C parser: a fraction of h11's cost per request)
    with a timeout on request *heads*: whenever no request is in flight — its line and
    headers are still coming, or none began yet (after the connection opened, or bytes such
    as bare CRLFs came between requests) — the connection is closed ``seconds`` after it
    opened or after those bytes began to come (an idle connection between requests is
    closed by uvicorn's keep-alive timeout, which any byte cancels). A body the app left
    unread after answering is dropped for at most ``max(seconds, LINGER_S)``. A head (and
    what comes between requests) over ``HEAD_BYTES`` is answered 431 and closed. Nothing
    of this applies to a request in flight (its body has the app's own read timeout) or
    to a connection upgraded to a WebSocket. uvicorn times out nothing before a request
    is parsed, so without this a client trickling its headers would hold its connection
    for ever."""

    class HeaderTimeoutHttpTools(HttpToolsProtocol):
        _header_timer: asyncio.TimerHandle | None = None
        _headers_pending = True
        """From the connection's start or a request's first byte until its headers end."""
        _in_body = False
        """From a request's headers' end until its body's end."""
        _head_bytes = 0

        def _upgraded(self) -> bool:
            return self.transport.get_protocol() is not self

        def _waiting(self) -> bool:
            """No request in flight: its head is still coming, or none began (between
            requests), or its answer is complete and its body is left unread."""
            if self._upgraded():
                return False
            return self._headers_pending or self.cycle is None or self.cycle.response_complete

        def _arm(self) -> None:
            if self._header_timer is None:
                delay = max(seconds, LINGER_S) if self._in_body else seconds
                self._header_timer = self.loop.call_later(delay, self._headers_too_slow)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_too_slow(self) -> None:
            self._header_timer = None
            if self._waiting() and not self.transport.is_closing():
                self.transport.close()

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def on_message_begin(self) -> None:
            self._headers_pending = True
            super().on_message_begin()

        def on_headers_complete(self) -> None:
            self._headers_pending = False
            self._in_body = True
            self._head_bytes = 0
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self._in_body = False
            super().on_message_complete()

        def data_received(self, data: bytes) -> None:
            # Bytes of a head or between requests count; a body's never do (a chunk
            # that ends a head resets the count, so at most one chunk goes uncounted).
            if not self._in_body and not self._upgraded():
                self._head_bytes += len(data)
            super().data_received(data)
            if self.transport.is_closing():
                return
            if not self._waiting():
                self._disarm()
                return
            if self._head_bytes > HEAD_BYTES and not self._in_body:
                self.transport.write(TOO_LARGE_ANSWER)
                self.transport.close()
                return
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

    return HeaderTimeoutHttpTools
