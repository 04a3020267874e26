"""A local S3 server for backup tests and the backup benchmark: moto's server mode on
loopback, started by the caller and removed with everything it stored, and a gate in
front of it that can refuse connections and accept them again on the same port (storage
"unreachable" without losing what the server holds).

restic reaches it as ``s3:http://127.0.0.1:<port>/<bucket>/…``; set ``NO_PROXY`` for
127.0.0.1 so a proxy in the environment is not asked for it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

MOTO_SERVER = Path(sys.executable).with_name("moto_server")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _answers(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        return True
    return False


class MotoServer:
    """``moto_server -H 127.0.0.1 -p PORT``. Objects spill to files in a private temporary
    directory (not memory: a benchmark stores gigabytes), removed on :meth:`stop`."""

    def __init__(self, key_id: str, secret: str) -> None:
        self.key_id = key_id
        self.secret = secret
        self.port = free_port()
        self.scratch = Path(tempfile.mkdtemp(prefix="dockyard-moto-"))
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60) -> MotoServer:
        if not MOTO_SERVER.is_file():
            raise RuntimeError(f"{MOTO_SERVER} is missing: install the test extra (moto[server])")
        env = {
            **os.environ,
            "TMPDIR": str(self.scratch),
            # Objects above this many bytes go to a temporary file instead of memory.
            "MOTO_S3_DEFAULT_KEY_BUFFER_SIZE": "65536",
        }
        log = (self.scratch / "moto.log").open("wb")
        self.process = subprocess.Popen(
            [str(MOTO_SERVER), "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        deadline = time.monotonic() + timeout
        while not _answers(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"moto_server did not start on port {self.port}")
            time.sleep(0.2)
        return self

    def client(self):  # type: ignore[no-untyped-def]
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=f"http://127.0.0.1:{self.port}",
            region_name="us-east-1",
            aws_access_key_id=self.key_id,
            aws_secret_access_key=self.secret,
        )

    def create_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)

    def stored_bytes(self, bucket: str, prefix: str = "") -> int:
        """Bytes of every object under ``prefix``: what the storage holds."""
        total = 0
        for page in (
            self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        ):
            total += sum(int(item["Size"]) for item in page.get("Contents", []))
        return total

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.scratch, ignore_errors=True)


class Gate:
    """A TCP forwarder on its own port to ``target_port``: :meth:`down` closes the port
    (connections are refused, open ones cut), :meth:`up` listens on it again."""

    def __init__(self, target_port: int) -> None:
        self.target = ("127.0.0.1", target_port)
        self.port = free_port()
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self._stop = threading.Event()
        self.up()

    def up(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(128)
        listener.settimeout(0.2)
        self._stop = threading.Event()
        self._listener = listener
        self._thread = threading.Thread(
            target=self._accept, args=(listener, self._stop), daemon=True
        )
        self._thread.start()

    def down(self) -> None:
        self._stop.set()
        if self._listener is not None:
            # A thread in accept() keeps the socket listening until it returns: wait for it.
            self._thread.join(timeout=5)
            self._listener.close()
            self._listener = None
        with self._lock:
            for sock in self._open:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self._open.clear()

    def _accept(self, listener: socket.socket, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=10)
            except OSError:
                client.close()
                continue
            client.settimeout(None)
            upstream.settimeout(None)
            with self._lock:
                self._open.update((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            # Half-close: the other direction may still be sending.
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)
            with self._lock:
                self._open.discard(source)
            source.close()


@contextlib.contextmanager
def s3_server(key_id: str, secret: str, bucket: str) -> Iterator[tuple[MotoServer, Gate]]:
    """A started server with ``bucket``, and a gate in front of it; all gone afterwards."""
    server = MotoServer(key_id, secret).start()
    gate: Gate | None = None
    try:
        server.create_bucket(bucket)
        gate = Gate(server.port)
        yield server, gate
    finally:
        if gate is not None:
            gate.down()
        server.stop()
