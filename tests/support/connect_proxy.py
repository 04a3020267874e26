"""A forward proxy for tests (HTTP ``CONNECT`` only) that stands in for wildcard DNS:
names under a given domain are connected to 127.0.0.1, at the port the client asked for;
any other name is refused. TLS stays end to end (the proxy only copies bytes), so the
client still checks the server's certificate for the name it asked for. A client set
to use it (the e2b SDK's ``proxy`` option) needs no other change."""

from __future__ import annotations

import contextlib
import select
import socket
import socketserver
import threading
from collections.abc import Iterator


class _Handler(socketserver.StreamRequestHandler):
    domain = ""

    def handle(self) -> None:
        head = self.rfile.readline(8192).decode("latin-1").split()
        while self.rfile.readline(8192) not in (b"\r\n", b"\n", b""):
            pass
        if len(head) != 3 or head[0] != "CONNECT" or ":" not in head[1]:
            self.wfile.write(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
            return
        name, port = head[1].rsplit(":", 1)
        if not (name == self.domain or name.endswith("." + self.domain)) or not port.isdigit():
            self.wfile.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
            return
        with socket.create_connection(("127.0.0.1", int(port)), timeout=30) as upstream:
            self.wfile.write(b"HTTP/1.1 200 Connection Established\r\n\r\n")
            self.wfile.flush()
            _pipe(self.connection, upstream)


def _pipe(one: socket.socket, other: socket.socket) -> None:
    peers = {one: other, other: one}
    while True:
        ready, _, _ = select.select(list(peers), [], [], 120)
        if not ready:
            return
        for source in ready:
            data = source.recv(65536)
            if not data:
                return
            peers[source].sendall(data)


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


@contextlib.contextmanager
def wildcard_proxy(domain: str) -> Iterator[str]:
    """A running proxy mapping ``domain`` and its subdomains to loopback: its URL."""
    handler = type("Handler", (_Handler,), {"domain": domain})
    server = _Server(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
