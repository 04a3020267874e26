"""`dockyard serve`'s HTTP protocol (dockyard.api.header_timeout, review5 R1/R10): a
connection that sends bytes but no complete request head within the header timeout is
closed — also between requests (bare CRLFs) — and an oversized head is refused before it
ends; keep-alive, pipelining, a body the app left unread after answering, and WebSockets
are not cut. No engine: uvicorn in a thread on loopback with a small ASGI app. No timed
asserts: every wait is a generous bound, and the pauses that must outlast the timeout can
only make a broken protocol pass, never a working one fail."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any, BinaryIO

import pytest
import uvicorn
from websockets.exceptions import ConnectionClosedError
from websockets.sync.client import ClientConnection, connect

from dockyard.api.commands import WEBSOCKET_MESSAGE_BYTES, server_config
from dockyard.api.header_timeout import HEAD_BYTES, header_timeout_protocol

TIMEOUT_S = 1.0
BOUND_S = 30.0


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "websocket":
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept"})
        while (message := await receive())["type"] == "websocket.receive":
            await send({"type": "websocket.send", "text": message.get("text") or ""})
        return
    if scope["type"] != "http":
        return
    if scope["path"] == "/early":
        # Answers without reading the body (as the body limit's 413 does).
        status, body = 413, b"too large"
    else:
        status, body = 200, b"ok"
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


def serving(timeout_s: float) -> Iterator[int]:
    config = uvicorn.Config(
        app,
        log_level="warning",
        http=header_timeout_protocol(timeout_s),
        timeout_keep_alive=60,
    )
    yield from serving_with(config)


def serving_with(config: uvicorn.Config) -> Iterator[int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + BOUND_S
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, f"uvicorn did not start within {BOUND_S:g} s"
    try:
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(BOUND_S)
        sock.close()


@pytest.fixture
def port() -> Iterator[int]:
    yield from serving(TIMEOUT_S)


@pytest.fixture
def patient_port() -> Iterator[int]:
    """A 60 s header timeout: what bounds the head there is its size, not the time."""
    yield from serving(60.0)


def closed_while_sending(sock: socket.socket, piece: bytes, every_s: float, bound_s: float) -> bool:
    """Send ``piece`` every ``every_s``; True once the server closed the connection."""
    sock.settimeout(every_s)
    deadline = time.monotonic() + bound_s
    while time.monotonic() < deadline:
        try:
            sock.sendall(piece)
            if sock.recv(65536) == b"":
                return True
        except TimeoutError:
            continue
        except OSError:
            return True
    return False


def answer(reader: BinaryIO) -> bytes:
    """One whole answer from ``reader`` (the socket's buffered reader: answers that come
    together stay apart): its status line and its body of Content-Length bytes."""
    status = reader.readline()
    assert status, "closed before an answer"
    length = 0
    while (line := reader.readline()) not in (b"\r\n", b""):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return status.rstrip(b"\r\n") + b" " + reader.read(length)


def connected(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.settimeout(BOUND_S)
    return sock


def test_bytes_between_requests_do_not_keep_a_connection(port: int) -> None:
    with connected(port) as sock, sock.makefile("rb") as reader:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert answer(reader) == b"HTTP/1.1 200 OK ok"
        # bare CRLFs (skipped by the parser, no request begins): must not hold it open
        assert closed_while_sending(sock, b"\r\n", 0.3, BOUND_S), "kept open by CRLFs for 30 s"


def test_trickled_headers_are_closed(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
        assert closed_while_sending(sock, b"X-Pad: a\r\n", 0.2, BOUND_S), "trickle kept"


def test_an_oversized_head_is_refused_before_it_ends(patient_port: int) -> None:
    with socket.create_connection(("127.0.0.1", patient_port)) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: ")
        sent = 0
        try:
            while sent < 64 * 1024 * 1024:
                sock.sendall(b"a" * 65536)
                sent += 65536
        except OSError:
            pass
        assert sent < 16 * 1024 * 1024, f"the server read {sent} bytes of one header"


def test_keep_alive_pipelining_and_an_unread_body_are_not_cut(port: int) -> None:
    with connected(port) as sock, sock.makefile("rb") as reader:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert answer(reader) == b"HTTP/1.1 200 OK ok"
        time.sleep(TIMEOUT_S * 2)  # idle past the header timeout: keep-alive's to close
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 2)
        assert [answer(reader), answer(reader)] == [b"HTTP/1.1 200 OK ok"] * 2
        # Answered before its body is read; the body (far over HEAD_BYTES) is sent whole
        # before the client reads, then the connection serves the next request.
        big = 16 * HEAD_BYTES
        sock.sendall(b"POST /early HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % big)
        sock.sendall(b"x" * big)
        assert answer(reader) == b"HTTP/1.1 413 Request Entity Too Large too large"
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert answer(reader) == b"HTTP/1.1 200 OK ok"


def test_a_websocket_outlives_the_header_timeout(port: int) -> None:
    with connect(f"ws://127.0.0.1:{port}/ws", open_timeout=BOUND_S) as ws:
        ws.send("one")
        assert ws.recv(timeout=BOUND_S) == "one"
        time.sleep(TIMEOUT_S * 2)
        ws.send("two")
        assert ws.recv(timeout=BOUND_S) == "two"


def echoed(ws: ClientConnection, text: str) -> Any:
    ws.send(text)
    return ws.recv(timeout=BOUND_S)


def test_serve_closes_a_websocket_whose_client_sends_an_oversized_message() -> None:
    """serve's own uvicorn config (review5 R9): a message up to WEBSOCKET_MESSAGE_BYTES
    passes, a larger one closes the socket with 1009; no compression is offered."""
    config = server_config(app, 60.0, None)
    assert (config.ws_max_queue, config.ws_per_message_deflate) == (4, False)
    served = contextlib.contextmanager(serving_with)
    with (
        served(config) as port,
        connect(f"ws://127.0.0.1:{port}/ws", open_timeout=BOUND_S, max_size=None) as ws,
    ):
        assert ws.response is not None
        assert "sec-websocket-extensions" not in ws.response.headers
        fits = "a" * WEBSOCKET_MESSAGE_BYTES
        assert echoed(ws, fits) == fits
        # The server refuses it by its frame's header: the close may come while the client
        # still sends (send raises) or after (recv raises); the socket may be reset before
        # the close frame is read, but whenever a close frame came it says 1009.
        with pytest.raises(ConnectionClosedError) as closed:
            echoed(ws, "b" * (WEBSOCKET_MESSAGE_BYTES + 1))
        assert closed.value.rcvd is None or closed.value.rcvd.code == 1009, closed.value
