"""Abuse over HTTP against the real server on loopback (issue 27 item 7): oversized bodies
and uploads answered 413, slow clients answered 408 and let go, creates past the quota
refused (quota or rate limit) leaving nothing on the engine or in the session index, and
one key's flood never limits another key, clients that never finish their headers are
disconnected. Meanwhile other clients keep being answered.

One ``dockyard serve`` for the module (harness driver on the real engine), with small
limits so the abuse is cheap: bodies 64 kB, uploads 1 MB, 2 s for headers and for the next part of a body."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import docker
import httpx
import pytest

from tests.api.test_abuse_server import Running, on_engine, running_server, tenant_names

pytestmark = [pytest.mark.docker, pytest.mark.slow]

BODY_LIMIT = 64 * 1024
UPLOAD_LIMIT = 1024 * 1024
BODY_TIMEOUT = 2
RATE, BURST = 20, 30


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory,
    core_image: str,
    docker_client: docker.DockerClient,
) -> Iterator[Running]:
    tenants = tenant_names("ab", "tenant", "quota")
    keys: dict[str, str | None] = {
        "tenant": tenants["tenant"],
        "reader": tenants["tenant"],
        "flood": tenants["tenant"],
        "calm": tenants["tenant"],
        "quota": tenants["quota"],
    }
    with running_server(
        tmp_path_factory.mktemp("abuse"),
        core_image,
        docker_client,
        *("--body-limit", str(BODY_LIMIT), "--upload-limit", str(UPLOAD_LIMIT)),
        *("--body-timeout", str(BODY_TIMEOUT), "--rate", str(RATE), "--burst", str(BURST)),
        keys=keys,
        tag="abuse",
    ) as running:
        running.tenants = (tenants["tenant"], tenants["quota"])
        yield running


@pytest.fixture(scope="module")
def session(server: Running) -> Iterator[str]:
    """One real session for the uploads and the slow clients' neighbours."""
    with server.client("tenant") as client:
        made = client.post("/api/sessions/create", json=server.request("ab0"))
        assert made.status_code == 201, made.text
        yield "ab0"
        assert client.delete("/api/sessions/ab0").status_code == 200


class Neighbour:
    """Another client (its own key) asking the server something every 50 ms, in a thread,
    while a test abuses it: every answer must be 200."""

    def __init__(self, server: Running, path: str) -> None:
        self.server, self.path = server, path
        self.answers: list[int] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with self.server.client("reader", timeout=30) as client:
            while not self._stop.wait(0.05):
                try:
                    self.answers.append(client.get(self.path).status_code)
                except httpx.HTTPError as exc:
                    self.failures.append(repr(exc))

    def __enter__(self) -> Neighbour:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60)

    def check(self, at_least: int) -> None:
        assert self.failures == []
        assert len(self.answers) >= at_least, self.answers
        assert set(self.answers) == {200}, self.answers


def _error(response: httpx.Response) -> dict[str, Any]:
    error: dict[str, Any] = response.json()["error"]
    return error


def _chunks(total: int, size: int = 64 * 1024) -> Iterator[bytes]:
    sent = 0
    while sent < total:
        step = min(size, total - sent)
        sent += step
        yield b"x" * step


def test_oversized_bodies_and_uploads_answer_413_while_others_are_served(
    server: Running, session: str
) -> None:
    files = f"/api/sessions/{session}/files"
    with Neighbour(server, f"/api/sessions/{session}") as neighbour, server.client("tenant") as c:
        declared = c.post(
            "/api/sessions/create",
            content=b"{" + b" " * BODY_LIMIT + b"}",
            headers={"content-type": "application/json"},
        )
        streamed = c.post(
            "/api/sessions/create",
            content=_chunks(4 * BODY_LIMIT),
            headers={"content-type": "application/json"},
        )
        upload_declared = c.put(
            files, params={"path": "big.bin"}, content=b"x" * (UPLOAD_LIMIT + 1)
        )
        # Chunked (no Content-Length): refused once the limit is passed, mid-stream.
        uploads = [
            c.put(files, params={"path": "big.bin"}, content=_chunks(8 * UPLOAD_LIMIT))
            for _ in range(5)
        ]
        fits = c.put(files, params={"path": "small.bin"}, content=b"x" * UPLOAD_LIMIT)
    for response, limit in (
        (declared, BODY_LIMIT),
        (streamed, BODY_LIMIT),
        (upload_declared, UPLOAD_LIMIT),
        *((u, UPLOAD_LIMIT) for u in uploads),
    ):
        assert response.status_code == 413, response.text
        assert _error(response)["kind"] == "too-large"
        assert _error(response)["problems"] == [
            f"request: the body is over {limit} bytes (allowed: at most {limit})"
        ]
        assert response.headers["x-request-id"] == _error(response)["requestId"]
    assert fits.status_code == 200, fits.text
    neighbour.check(at_least=3)
    with server.client("tenant") as client:
        # Nothing half-written: the refused file does not exist, the one that fit is whole.
        assert client.get(f"{files}/stat", params={"path": "big.bin"}).status_code == 404
        small = client.get(f"{files}/stat", params={"path": "small.bin"})
        assert small.status_code == 200, small.text
        assert small.json()["size"] == UPLOAD_LIMIT
        listed = client.get("/api/sessions").json()
        assert [row["sessionId"] for row in listed["items"]] == [session]


def _slow_request(server: Running, path: str, method: str = "POST", key: str = "") -> socket.socket:
    """A request whose body stops after 10 of its announced 1,000 bytes."""
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=BODY_TIMEOUT * 15)
    auth = f"Authorization: Bearer {key}\r\n" if key else ""
    sock.sendall(
        f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n{auth}Content-Type: application/json\r\n"
        f'Content-Length: 1000\r\n\r\n{{"session'.encode()
    )
    return sock


def _answer(sock: socket.socket) -> tuple[int, dict[str, Any]]:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    head, _, payload = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(payload)


def test_slow_clients_are_let_go_with_408_and_do_not_block_others(
    server: Running, session: str
) -> None:
    slow = [_slow_request(server, "/api/sessions/create") for _ in range(40)]
    slow += [
        _slow_request(
            server,
            f"/api/sessions/{session}/files?path=slow.bin",
            method="PUT",
            key=server.keys["tenant"],
        )
        for _ in range(5)
    ]
    try:
        with Neighbour(server, f"/api/sessions/{session}") as neighbour:
            answers = [_answer(sock) for sock in slow]
        neighbour.check(at_least=5)
    finally:
        for sock in slow:
            sock.close()
    for code, payload in answers:
        assert code == 408, payload
        assert payload["error"]["kind"] == "request-timeout"
        assert payload["error"]["problems"] == [
            f"request: no body bytes came for {BODY_TIMEOUT} s (allowed: at most "
            f"{BODY_TIMEOUT} s between two parts of a body; send the body at once)"
        ]
    with server.client("tenant") as client:
        stat = client.get(f"/api/sessions/{session}/files/stat", params={"path": "slow.bin"})
        assert stat.status_code == 404, stat.text


def _closed_by_server(sock: socket.socket, trickle: bytes) -> bool:
    """Send ``trickle`` a byte every 0.2 s; True once the server has closed the connection
    (at most 15 timeouts' worth of bytes are sent)."""
    sock.settimeout(0.2)
    for byte in trickle[: int(BODY_TIMEOUT * 15 / 0.2)]:
        try:
            sock.sendall(bytes([byte]))
            if sock.recv(1) == b"":
                return True
        except TimeoutError:
            continue
        except OSError:
            return True
    return False


def test_slow_headers_are_let_go_and_do_not_block_others(server: Running, session: str) -> None:
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    trickle = f"GET /api/sessions HTTP/1.1\r\nHost: {host}\r\n".encode() + b"X-Pad: a\r\n" * 400
    silent = [socket.create_connection((host, int(port))) for _ in range(20)]
    trickling = socket.create_connection((host, int(port)))
    try:
        with Neighbour(server, f"/api/sessions/{session}") as neighbour:
            assert _closed_by_server(trickling, trickle), "a client trickling headers was kept"
            for sock in silent:
                sock.settimeout(BODY_TIMEOUT * 15)
                assert sock.recv(1) == b"", "a client sending nothing was kept"
        neighbour.check(at_least=5)
    finally:
        for sock in (*silent, trickling):
            sock.close()


def _flood(
    server: Running, who: str, count: int, call: Callable[[httpx.Client], httpx.Response]
) -> list[httpx.Response]:
    with server.client(who) as client, ThreadPoolExecutor(16) as pool:
        return list(pool.map(lambda _: call(client), range(count)))


def _past_the_rate_limit(call: Callable[[], httpx.Response]) -> httpx.Response:
    """``call`` again after each 429 of the rate limiter (waiting its Retry-After) until the
    flood's key has budget again: a test's own cleanup must not be one of the refused."""
    deadline = time.monotonic() + 60
    while True:
        response = call()
        if response.status_code != 429 or time.monotonic() > deadline:
            return response
        if _error(response)["kind"] != "rate-limited":
            return response
        time.sleep(int(response.headers["retry-after"]))


def test_a_thousand_creates_past_the_quota_are_refused_and_leave_nothing(
    server: Running, docker_client: docker.DockerClient
) -> None:
    quota_tenant = server.tenants[1]
    server.settings_with(quotas={"tenants": {quota_tenant: {"environments": 1}}})
    try:
        with server.client("quota") as client:
            first = client.post("/api/sessions/create", json=server.request("qa0"))
            assert first.status_code == 201, first.text
            held = sorted(on_engine(docker_client, quota_tenant))
            assert held, "the first session made nothing on the engine"
        names = iter(range(1, 1001))
        lock = threading.Lock()

        def create(client: httpx.Client) -> httpx.Response:
            with lock:
                n = next(names)
            return client.post("/api/sessions/create", json=server.request(f"qa{n}"))

        with Neighbour(server, "/api/sessions") as neighbour:
            refused = _flood(server, "quota", 1000, create)
        neighbour.check(at_least=3)
        kinds: dict[str, int] = {}
        for response in refused:
            assert response.status_code == 429, response.text
            kind = _error(response)["kind"]
            kinds[kind] = kinds.get(kind, 0) + 1
        assert set(kinds) == {"quota", "rate-limited"}, kinds
        assert kinds["quota"] >= BURST - 1, kinds
        assert sorted(on_engine(docker_client, quota_tenant)) == held
        with server.client("quota") as client:
            listed = client.get("/api/sessions").json()
        assert [row["sessionId"] for row in listed["items"]] == ["qa0"]
        index = sorted(p.name for p in (server.state / "sessions").glob("*.json"))
        assert len(index) == 1 + 1, index  # qa0 and the module's session ab0
        # No create is left holding a quota reservation.
        assert list((server.state / "reservations").glob("*.json")) == []
    finally:
        server.settings_with()
        with server.client("quota") as client:
            gone = _past_the_rate_limit(lambda: client.delete("/api/sessions/qa0"))
        assert gone.status_code == 200, gone.text
    assert on_engine(docker_client, quota_tenant) == []


def test_one_keys_flood_never_limits_another_key(server: Running) -> None:
    results: dict[str, list[int]] = {}

    def calm() -> None:
        with server.client("calm") as client:
            results["calm"] = []
            for _ in range(BURST):
                results["calm"].append(client.get("/api/sessions").status_code)

    other = threading.Thread(target=calm)
    other.start()
    flood = _flood(server, "flood", 10 * BURST, lambda c: c.get("/api/sessions"))
    other.join(120)
    codes = [r.status_code for r in flood]
    assert set(codes) == {200, 429}, codes
    assert codes.count(200) >= BURST
    limited = next(r for r in flood if r.status_code == 429)
    assert _error(limited)["kind"] == "rate-limited"
    assert int(limited.headers["retry-after"]) >= 1
    assert results["calm"] == [200] * BURST
