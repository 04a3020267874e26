"""Support for test_events.py and test_webhooks.py (no tests here): the real server on loopback for the event and webhook tests (an SSE stream cannot be
read through httpx's in-process ASGI transport, which waits for the whole body), an SSE
reader, and a webhook receiver on loopback."""

from __future__ import annotations

import json
import queue
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from dockyard.api.app import create_app
from dockyard.api.events import Probe
from dockyard.api.events_settings import EventSettings, networks
from dockyard.api.store import KeyStore
from dockyard.sessions import Sessions, driver
from dockyard.sessions.settings import paths
from tests.api.conftest import state_env


@dataclass
class Server:
    url: str
    store: KeyStore
    sessions: Sessions
    host_log: Path

    @property
    def audit_log(self) -> Path:
        return self.sessions.where.audit_log

    def key(self, tenant: str | None = None, admin: bool = False) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.store.create(tenant, admin).key}"}


def fast_settings(sessions_log: Path, host_log: Path, probe: Probe | None = None) -> EventSettings:
    """Fast polls and retries, and the admin's allowance for the loopback receiver."""
    return EventSettings(
        ready_probe=probe,
        streams_per_key=4,
        ready_poll_s=0.05,
        audit_logs=((sessions_log, "sessions"), (host_log, "host")),
        poll_s=0.02,
        store_poll_s=0.2,
        keepalive_s=1.0,
        webhook_allow_networks=networks("127.0.0.0/8"),
        webhook_attempts=3,
        webhook_backoff_s=0.2,
        webhook_timeout_s=5.0,
    )


@contextmanager
def running_server(
    base: Path,
    store: KeyStore,
    probe: Probe | None = None,
    driver_name: str = "dockyard.sessions.driver:PulumiDriver",
    settings: dict[str, Any] | None = None,
) -> Iterator[Server]:
    env = state_env(base)
    if settings is not None:
        Path(env["DOCKYARD_CONFIG"]).write_text(json.dumps(settings))
    where = paths(env)
    sessions = Sessions(where, driver.load(where, driver_name))
    host_log = base / "host-log" / "audit.jsonl"
    app = create_app(sessions, store, None, fast_settings(where.audit_log, host_log, probe))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=1, lifespan="on")
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the API server did not start")
        time.sleep(0.01)
    try:
        yield Server(f"http://127.0.0.1:{sock.getsockname()[1]}", store, sessions, host_log)
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()
        assert not thread.is_alive(), "the API server did not stop"


@dataclass
class SseEvent:
    id: int
    type: str
    data: dict[str, Any]
    received: float


class SseReader:
    """Reads ``GET /api/events`` in a thread; :meth:`next` hands events over in order.
    ``raw`` keeps every line received, for framing checks."""

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        self.url, self.headers = url, headers
        self.events: queue.Queue[SseEvent] = queue.Queue()
        self.raw: list[str] = []
        self.connected = threading.Event()
        self.status: int | None = None
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)

    def __enter__(self) -> SseReader:
        self._thread.start()
        if not self.connected.wait(30):
            raise AssertionError(f"no stream from {self.url}: {self.status} {self.error}")
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _read(self) -> None:
        fields: dict[str, str] = {}
        try:
            client = httpx.Client(timeout=httpx.Timeout(5.0, read=30.0))
            with client, client.stream("GET", self.url, headers=self.headers) as answer:
                self.status = answer.status_code
                if answer.status_code != 200:
                    answer.read()
                    self.raw.append(answer.text)
                    self.connected.set()
                    return
                for line in answer.iter_lines():
                    self.raw.append(line)
                    self.connected.set()
                    if self._stop.is_set():
                        return
                    if line == "":
                        if "id" in fields:
                            self.events.put(
                                SseEvent(
                                    int(fields["id"]),
                                    fields.get("event", "message"),
                                    json.loads(fields.get("data", "null")),
                                    time.monotonic(),
                                )
                            )
                        fields = {}
                    elif not line.startswith(":"):
                        name, _, value = line.partition(":")
                        fields[name] = value.removeprefix(" ")
        except BaseException as exc:  # reported by the test that reads
            self.error = exc
            self.connected.set()

    def next(self, timeout: float = 30.0) -> SseEvent:
        try:
            return self.events.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no event within {timeout} s (error: {self.error})") from None

    def take(self, count: int, timeout: float = 30.0) -> list[SseEvent]:
        return [self.next(timeout) for _ in range(count)]

    def quiet(self, seconds: float) -> list[SseEvent]:
        """Whatever arrives within ``seconds`` (expected: nothing)."""
        time.sleep(seconds)
        found = []
        while not self.events.empty():
            found.append(self.events.get_nowait())
        return found


@dataclass
class Receiver:
    """A webhook receiver on loopback: answers each request with the next of ``answers``
    (then 200) and keeps what it got."""

    answers: list[int] = field(default_factory=list)
    got: list[tuple[dict[str, str], bytes, int]] = field(default_factory=list)
    url: str = ""

    def wait_for(self, count: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.got) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(self.got)} requests received, {count} expected")
            time.sleep(0.02)


@contextmanager
def receiver(
    answers: list[int] | None = None, hold: threading.Event | None = None
) -> Iterator[Receiver]:
    """``hold``: each request is answered only once it is set (a slow receiver)."""
    kept = Receiver(list(answers or []))
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with lock:
                code = kept.answers.pop(0) if kept.answers else 200
                kept.got.append(({k.lower(): v for k, v in self.headers.items()}, body, code))
            if hold is not None:
                hold.wait(30)
            self.send_response(code)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    kept.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield kept
    finally:
        if hold is not None:
            hold.set()
        server.shutdown()
        server.server_close()
        thread.join(5)
