"""The data plane's HTTP face in-process with a fake engine: tenant scoping (404 as for a
missing session on every route), paths refused before any engine call, the upload limit
(413, nothing written), the body limit for everything else, and the exec stream's
encoding of hostile output (it can never forge an event). The real engine:
tests/api/test_exec_files_on_engine.py."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any, ClassVar

import pytest

from dockyard.api.context import Limits
from dockyard.errors import Conflict
from dockyard.sessions import dataplane
from tests.api.conftest import Api
from tests.api.test_app import _record

pytestmark = pytest.mark.anyio
HOSTILE = b'\n\nevent: exit\ndata: {"code": 0}\n\n\xff\xfe'


class Engine:
    """Fails the test if anything reaches it: the request should have been refused."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the engine was called ({name}) for a request to refuse")


class Fake(dataplane.Workspace):
    """A workspace whose container is a dict of files and whose commands say HOSTILE."""

    files: ClassVar[dict[tuple[str, ...], bytes]] = {}

    def exec(self, request: dataplane.ExecRequest) -> Iterator[dataplane.Event]:
        self.ran = request.checked(self.limits)
        yield dataplane.Started("e1")
        yield dataplane.Output("stdout", HOSTILE[:3])
        yield dataplane.Output("stdout", HOSTILE[3:])
        if request.command == ("fail",):
            raise Conflict("exec", ["the container stopped"])
        yield dataplane.Exit(0, False, False, 1)

    def write(
        self, path: str, chunks: Iterable[bytes], parents: bool = False, mode: int = 0o644
    ) -> dict[str, Any]:
        parts = dataplane.workspace_path(path, allow_root=False)
        data = b"".join(chunks)  # as the helper: nothing lands before the upload ends
        self.files[parts] = data
        return {"path": dataplane.shown(parts), "size": len(data)}


@pytest.fixture
def limits() -> Limits:
    return Limits(upload_bytes=1000, body_bytes=500, rate=1000, burst=1000)


@pytest.fixture
def owned(api: Api, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Session s1 of tenant acme, its workspace the fake; acme's key and globex's."""
    _record(api, "s1", "acme")
    Fake.files = {}
    monkeypatch.setattr(api.sessions, "get", lambda *_: {"container": {"id": "c1"}})
    monkeypatch.setattr(
        dataplane.Workspace,
        "open",
        classmethod(
            lambda cls, record, manifest, limits=None, **_: Fake(
                record, manifest, Engine(), limits or dataplane.Limits()
            )
        ),
    )
    return {"acme": api.key("acme")["Authorization"], "globex": api.key("globex")["Authorization"]}


ROUTES: list[tuple[str, str, dict[str, Any]]] = [
    ("POST", "/api/sessions/{}/exec", {"json": {"command": ["true"]}}),
    ("POST", "/api/sessions/{}/exec/e1/signal", {"json": {"signal": "TERM"}}),
    ("GET", "/api/sessions/{}/files", {"params": {"path": "a"}}),
    ("PUT", "/api/sessions/{}/files", {"params": {"path": "a"}, "content": b"x"}),
    ("DELETE", "/api/sessions/{}/files", {"params": {"path": "a"}}),
    ("GET", "/api/sessions/{}/files/list", {"params": {"path": "."}}),
    ("GET", "/api/sessions/{}/files/stat", {"params": {"path": "a"}}),
    ("GET", "/api/sessions/{}/stats", {}),
    ("GET", "/api/sessions/{}/logs", {}),
    ("GET", "/api/sessions/{}/ports", {}),
]


async def test_another_tenant_gets_404_like_a_missing_session(
    api: Api, owned: dict[str, str]
) -> None:
    for method, path, kwargs in ROUTES:
        headers = {"Authorization": owned["globex"]}
        seen = await api.client.request(method, path.format("s1"), headers=headers, **kwargs)
        missing = await api.client.request(method, path.format("s9"), headers=headers, **kwargs)
        assert seen.status_code == missing.status_code == 404, (method, path, seen.text)
        assert seen.json()["error"]["problems"] == [
            p.replace("s9", "s1") for p in missing.json()["error"]["problems"]
        ]
    assert Fake.files == {}
    entries = [e for e in audit_lines(api) if e["session"] == "s1"]
    assert len(entries) == len(ROUTES)
    assert {e["result"] for e in entries} == {"error"}


def audit_lines(api: Api) -> list[dict[str, Any]]:
    log = api.state / "audit.jsonl"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


@pytest.mark.parametrize("path", ["../etc/passwd", "/etc/passwd", "a/../../x", "a\x00b"])
async def test_paths_out_of_the_workspace_are_422_before_the_engine(
    api: Api, owned: dict[str, str], path: str
) -> None:
    headers = {"Authorization": owned["acme"]}
    for method, route, kwargs in ROUTES[2:7]:
        kwargs = {**kwargs, "params": {"path": path}}
        response = await api.client.request(method, route.format("s1"), headers=headers, **kwargs)
        assert response.status_code == 422, (method, route, response.text)
        assert response.json()["error"]["problems"][0].startswith("path: ")


async def test_an_upload_over_the_limit_is_413_and_writes_nothing(
    api: Api, owned: dict[str, str]
) -> None:
    headers = {"Authorization": owned["acme"]}
    route = "/api/sessions/s1/files"
    fits = await api.client.put(route, params={"path": "a"}, headers=headers, content=b"x" * 1000)
    assert fits.status_code == 200, fits.text
    assert fits.json() == {"path": "/workspace/a", "size": 1000}

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it arrives
        for _ in range(4):
            yield b"y" * 300

    for content in (b"x" * 1001, chunks()):
        over = await api.client.put(route, params={"path": "b"}, headers=headers, content=content)
        assert over.status_code == 413, over.text
        assert over.json()["error"]["problems"] == [
            "request: the body is over 1000 bytes (allowed: at most 1000)"
        ]
    assert list(Fake.files) == [("a",)]
    # Everything else keeps the small body limit.
    big = await api.client.post(
        "/api/sessions/s1/exec", headers=headers, json={"command": ["cat"], "stdin": "x" * 600}
    )
    assert big.status_code == 413
    bad_mode = await api.client.put(
        route, params={"path": "c", "mode": "999"}, headers=headers, content=b"x"
    )
    assert bad_mode.status_code == 422
    assert "mode: '999' (allowed: octal 0 to 777" in bad_mode.json()["error"]["problems"][0]


def events(text: str) -> list[tuple[str, dict[str, Any]]]:
    found = []
    for block in text.split("\n\n"):
        lines = [line for line in block.split("\n") if line and not line.startswith(":")]
        if not lines:
            continue
        assert lines[0].startswith("event: "), block
        assert lines[1].startswith("data: "), block
        assert len(lines) == 2, block
        found.append((lines[0][7:], json.loads(lines[1][6:])))
    return found


async def test_hostile_output_never_forges_an_event(api: Api, owned: dict[str, str]) -> None:
    headers = {"Authorization": owned["acme"]}
    answer = await api.client.post(
        "/api/sessions/s1/exec", headers=headers, json={"command": ["x"], "cwd": "src"}
    )
    assert answer.status_code == 200
    got = events(answer.text)
    assert [name for name, _ in got] == ["start", "stdout", "stdout", "exit"]
    text = "".join(data["data"] for name, data in got if name == "stdout")
    assert text == HOSTILE.decode("utf-8", "replace")
    raw = await api.client.post(
        "/api/sessions/s1/exec", headers=headers, json={"command": ["x"], "encoding": "base64"}
    )
    out = b"".join(base64.b64decode(d["b64"]) for n, d in events(raw.text) if n == "stdout")
    assert out == HOSTILE
    failed = events(
        (
            await api.client.post(
                "/api/sessions/s1/exec", headers=headers, json={"command": ["fail"]}
            )
        ).text
    )
    assert failed[-1][0] == "error"
    assert failed[-1][1]["error"]["problems"] == ["the container stopped"]


async def test_exec_requests_are_checked_with_every_problem_at_once(
    api: Api, owned: dict[str, str]
) -> None:
    headers = {"Authorization": owned["acme"]}
    answer = await api.client.post(
        "/api/sessions/s1/exec",
        headers=headers,
        json={"command": ["ls"], "cwd": "/etc", "env": {"A-B": "x"}, "timeout": -1},
    )
    assert answer.status_code == 422
    assert answer.json()["error"]["problems"] == [
        "env: 'A-B' is not a variable name (allowed: [A-Za-z_][A-Za-z0-9_]*)",
        "cwd: '/etc' is outside /workspace (allowed: a path relative to /workspace, or "
        "absolute under it, without '..')",
        "timeout: -1 s (allowed: more than 0, at most 86400)",
    ]
    both = await api.client.post(
        "/api/sessions/s1/exec",
        headers=headers,
        json={"command": ["cat"], "stdin": "a", "stdinBase64": "YQ=="},
    )
    assert both.status_code == 422
    signal = await api.client.post(
        "/api/sessions/s1/exec/e1/signal", headers=headers, json={"signal": "SEGV"}
    )
    assert signal.status_code == 422
