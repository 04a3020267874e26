"""uvicorn's httptools protocol with a timeout on request headers (slowloris), for
`dockyard serve`."""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


def header_timeout_protocol(seconds: float) -> type[asyncio.Protocol]:
    """uvicorn's httptools protocol (the C parser: a fraction of h11's cost per request)
    with a timeout on request *headers*: a connection whose request line and headers are
    not complete ``seconds`` after it opened (or after the first bytes of its next request)
    is closed; between requests uvicorn's keep-alive timeout closes it. uvicorn times out
    nothing before a request is parsed, so a client trickling its headers (slowloris)
    would hold its connection for ever."""

    class HeaderTimeoutHttpTools(HttpToolsProtocol):
        _header_timer: asyncio.TimerHandle | None = None
        _headers_pending = True
        """From the connection's start or a request's first byte until its headers end."""

        def _arm(self) -> None:
            if self._header_timer is None:
                self._header_timer = self.loop.call_later(seconds, self._headers_too_slow)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_too_slow(self) -> None:
            self._header_timer = None
            if self._headers_pending and not self.transport.is_closing():
                self.transport.close()

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def on_message_begin(self) -> None:
            self._headers_pending = True
            super().on_message_begin()

        def on_headers_complete(self) -> None:
            self._headers_pending = False
            super().on_headers_complete()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self._headers_pending:
                self._arm()
            else:
                self._disarm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

    return HeaderTimeoutHttpTools
