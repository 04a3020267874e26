"""A stand-in upstream API behind TLS, and what an agent's CLI does against a broker:
for the credential broker's tests (images/broker, credentials: brokered)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from docker.models.containers import Container

# Records each request as a JSON line on stdout. A CLI (anything but urllib) gets an
# error it does not retry (a 400), so its call ends at once; urllib gets a 200.
UPSTREAM = """
import http.server, json, ssl
class Handler(http.server.BaseHTTPRequestHandler):
    def _record(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode(errors="replace")
        print(json.dumps({"method": self.command, "path": self.path,
                          "headers": dict(self.headers), "body": body}), flush=True)
        cli = not self.headers.get("User-Agent", "").startswith("Python-urllib")
        self.send_response(400 if cli else 200)
        self.send_header("Content-Type", "application/json"); self.end_headers()
        self.wfile.write(b'{"type": "error", "error": {"type": "invalid_request_error",'
                         b' "message": "stand-in"}}' if cli else b'{"upstream": "stand-in"}')
    do_GET = do_POST = _record
    def log_message(self, *args): pass
server = http.server.ThreadingHTTPServer(("0.0.0.0", 8443), Handler)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain("/tls/upstream.pem", "/tls/upstream.key")
server.socket = context.wrap_socket(server.socket, server_side=True)
server.serve_forever()
"""

# What a CLI does: `CALL KIND PATH [KEY]` posts to $KIND_BASE_URL + PATH with the key as
# the CLI sends it — KEY, else $KIND_API_KEY, else the environment's secret file. Exit 3:
# an HTTP error (printed), 4: the broker unreachable (named on stderr).
CALL = """
import os, sys, urllib.request, urllib.error
kind, path = sys.argv[1], sys.argv[2]
base = os.environ[kind + "_BASE_URL"]
key = (sys.argv[3] if len(sys.argv) > 3 else os.environ.get(kind + "_API_KEY")
       or open("/run/secrets/" + kind + "_API_KEY").read())
headers = {"x-api-key": key} if kind == "ANTHROPIC" else {"Authorization": "Bearer " + key}
request = urllib.request.Request(base + path, data=b'{"model": "m"}', headers=headers)
try:
    with urllib.request.urlopen(request, timeout=10) as response:
        print(response.status, response.read().decode())
except urllib.error.HTTPError as error:
    print(error.code, error.read().decode()); sys.exit(3)
except OSError as error:
    print(f"broker at {base} unreachable: {error}", file=sys.stderr); sys.exit(4)
"""


def call(container: Container, kind: str, path: str, *key: str, user: str = "") -> tuple[int, str]:
    """Run :data:`CALL` in ``container``: (exit code, output)."""
    result = container.exec_run(["python3", "-c", CALL, kind, path, *key], user=user)
    return result.exit_code, (result.output or b"").decode(errors="replace")


# `CONNECT HOST PORT`: a plain TCP connect (no DNS when HOST is an address). Exit 0: it
# connected; 5: it did not (the error printed).
CONNECT = """
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3).close()
except OSError as error:
    print(f"{type(error).__name__}: {error}"); sys.exit(5)
print("connected")
"""


def connect(container: Container, host: str, port: int, user: str = "1000") -> tuple[int, str]:
    """A TCP connect from inside ``container`` to ``host:port``: (exit code, output)."""
    result = container.exec_run(["python3", "-c", CONNECT, host, str(port)], user=user)
    return result.exit_code, (result.output or b"").decode(errors="replace")


def addresses(container: Container) -> dict[str, str]:
    """Network name -> the container's IPv4 address on it."""
    container.reload()
    networks = container.attrs["NetworkSettings"]["Networks"]
    return {name: net["IPAddress"] for name, net in networks.items() if net.get("IPAddress")}


def received(upstream: Container) -> list[dict[str, Any]]:
    """Every request the stand-in recorded, oldest first."""
    return [
        json.loads(line)
        for line in upstream.logs(stderr=False).decode().splitlines()
        if line.startswith("{")
    ]


def make_ca_and_server_cert(
    directory: Path, host: str, *names: str, addresses: tuple[str, ...] = ()
) -> None:
    """``ca.pem`` and ``<host>``'s ``upstream.pem``/``upstream.key`` (SAN ``DNS:<host>``,
    any further DNS ``names`` — wildcards allowed — and IP ``addresses``; valid one day)
    in ``directory``, readable by any container user."""

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
        "-days", "1", "-subj", "/CN=dockyard-test-ca")  # fmt: skip
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "upstream.key", "-out", "up.csr",
        "-subj", f"/CN={host}")  # fmt: skip
    alternatives = [f"DNS:{n}" for n in (host, *names)] + [f"IP:{a}" for a in addresses]
    (directory / "san.ext").write_text(f"subjectAltName={','.join(alternatives)}\n")
    run("x509", "-req", "-in", "up.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "upstream.pem", "-days", "1", "-extfile", "san.ext")  # fmt: skip
    for name in ("ca.pem", "upstream.pem", "upstream.key"):
        (directory / name).chmod(0o644)
    directory.chmod(0o755)
