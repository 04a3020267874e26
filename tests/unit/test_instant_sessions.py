"""Pause, resume, snapshot and fork logic with fakes (the engine proof is in
tests/integration/test_pause_on_engine.py and test_fork_on_engine.py), and their HTTP face
(components/api/instant.py) over a fake service layer."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from dockyard.api.app import create_app
from dockyard.api.store import KeyStore, default_url
from dockyard.errors import Conflict, Failed, InvalidInput, NotFound
from dockyard.sessions import Sessions, pause, registry, snapshots
from dockyard.sessions.settings import paths
from tests.support.fake_service import registered_sessions


class FakeContainer:
    def __init__(self, status: str, session: str = "s1") -> None:
        self.status = status
        self.attrs = {
            "Config": {"Labels": {"dockyard.session": session, "dockyard.managed": "true"}}
        }
        self.calls: list[str] = []

    def pause(self) -> None:
        self.calls.append("pause")
        self.status = "paused"

    def unpause(self) -> None:
        self.calls.append("unpause")
        self.status = "running"


class FakeClient:
    def __init__(self, containers: dict[str, FakeContainer]) -> None:
        self.containers = SimpleNamespace(get=self._get)
        self._held = containers

    def _get(self, name: str) -> FakeContainer:
        import docker.errors

        if name not in self._held:
            raise docker.errors.NotFound(name)
        return self._held[name]

    def close(self) -> None:
        return None


@pytest.fixture
def api(tmp_path: Path) -> Sessions:
    return registered_sessions(tmp_path, ("acme", "other"))


def _engine(monkeypatch: pytest.MonkeyPatch, **containers: FakeContainer) -> None:
    monkeypatch.setattr(pause, "connect", lambda host: FakeClient(containers))
    monkeypatch.setattr(pause, "_CLIENTS", {})


def test_pause_and_resume_move_a_session_once_and_are_no_ops_after(
    api: Sessions, monkeypatch: pytest.MonkeyPatch
) -> None:
    container = FakeContainer("running")
    _engine(monkeypatch, **{"dockyard-t.acme.s1": container})
    assert api.pause("s1", "acme") == pause.State("s1", "paused", True)
    assert api.pause("s1", "acme") == pause.State("s1", "paused", False)
    assert api.resume("s1", "acme") == pause.State("s1", "running", True)
    assert api.resume("s1", "acme") == pause.State("s1", "running", False)
    assert container.calls == ["pause", "unpause"]
    lines = [json.loads(x) for x in api.where.audit_log.read_text().splitlines()]
    assert [(x["action"], x["tenant"], x.get("detail")) for x in lines] == [
        ("pause", "acme", None),
        ("pause", "acme", "already paused"),
        ("resume", "acme", None),
        ("resume", "acme", "already running"),
    ]


def test_a_stopped_a_missing_and_a_foreign_container_are_refused(
    api: Sessions, monkeypatch: pytest.MonkeyPatch
) -> None:
    _engine(monkeypatch, **{"dockyard-t.acme.s1": FakeContainer("exited")})
    with pytest.raises(Conflict, match="its container is exited, not running"):
        api.pause("s1", "acme")
    with pytest.raises(Conflict, match="its container is exited, not paused"):
        api.resume("s1", "acme")
    _engine(monkeypatch)
    with pytest.raises(Conflict, match="is not on its engine"):
        api.pause("s1", "acme")
    _engine(monkeypatch, **{"dockyard-t.acme.s1": FakeContainer("running", session="s2")})
    with pytest.raises(Conflict, match="not labelled as this session's"):
        api.pause("s1", "acme")
    with pytest.raises(NotFound, match="no session 'nope' of tenant acme"):
        api.pause("nope", "acme")


def test_kubernetes_sessions_are_refused_naming_the_backend() -> None:
    planned: Any = SimpleNamespace(session_id="s1", config=SimpleNamespace(backend="kubernetes"))
    with pytest.raises(Conflict, match="pause is not supported with backend kubernetes"):
        pause.require_docker(planned, "pause")
    with pytest.raises(Conflict, match="fork is not supported with backend kubernetes"):
        snapshots.refuse_unsupported(planned, "fork")


def test_refresh_and_destroy_resume_a_paused_session_first(
    api: Sessions, monkeypatch: pytest.MonkeyPatch
) -> None:
    container = FakeContainer("paused")
    _engine(monkeypatch, **{"dockyard-t.acme.s1": container})
    seen: list[str] = []

    def destroy(plan: Any, progress: Any) -> None:
        seen.append(container.status)

    api.engine = SimpleNamespace(destroy=destroy)  # type: ignore[assignment]
    api.destroy("s1", "acme")
    assert seen == ["running"]
    assert container.calls == ["unpause"]

    container.status = "paused"
    _engine(monkeypatch, **{"dockyard-t.other.s1": container})

    def recreate(plan: Any, secrets: Any, progress: Any) -> dict[str, Any]:
        seen.append(container.status)
        raise RuntimeError("stop here: the manifest is not the point")

    api.engine = SimpleNamespace(recreate=recreate)  # type: ignore[assignment]
    with pytest.raises(Exception, match="stop here"):
        api.refresh("s1", "other")
    assert seen == ["running", "running"]


@pytest.mark.parametrize(
    "name",
    ["", "../etc", "a/b", "x" * 64, "-x", ".x", "s-broker", "a-vol-b", "a b", "é", 7, None],
)
def test_hostile_snapshot_names_are_refused(name: Any) -> None:
    with pytest.raises(InvalidInput) as refused:
        snapshots.validate_name(name)
    assert refused.value.problems[0].startswith("snapshot: ")
    assert "(allowed: " in refused.value.problems[0]


def test_names_map_into_the_tenant_namespace() -> None:
    assert snapshots.validate_name("base.v1_2") == "base.v1_2"
    assert snapshots.image_tag("acme", "base") == "dockyard-snapshot/acme:base"
    assert snapshots.image_tag(None, "base") == "dockyard-snapshot/sessions:base"
    assert snapshots.snapshot_dir("acme", "base") == "/var/lib/dockyard/snapshots/acme/base"


def test_a_fork_request_is_the_parents_with_its_own_id_and_the_snapshot_image(
    api: Sessions,
) -> None:
    record = api.registry.find("s1", "acme")
    record.request["container"] = {"ports": [3000], "image": "mine:1"}
    record.request["variant"] = "python"
    request = snapshots.fork_request(record, "child", "dockyard-snapshot/acme:child")
    assert request["sessionId"] == "child"
    assert request["container"] == {"ports": [3000], "image": "dockyard-snapshot/acme:child"}
    assert request["variant"] == "core"
    assert record.request["sessionId"] == "s1", "the parent's request is left as it was"


def test_sessions_with_volumes_of_their_own_are_refused(api: Sessions) -> None:
    record = api.registry.find("s1", "acme")
    request = {**record.request, "container": {"volumes": ["data:/data"]}}
    planned, _ = api.plan(request, {})
    with pytest.raises(InvalidInput) as refused:
        snapshots.refuse_unsupported(planned, "fork")
    assert refused.value.problems[0].startswith("request.container.volumes: ")


def test_fork_to_an_existing_session_is_a_conflict(api: Sessions) -> None:
    api.registry.save(
        registry.Record(**{**api.registry.find("s1", "acme").__dict__, "session_id": "s2",
                           "stack_name": "acme.s2"})
    )  # fmt: skip
    with pytest.raises(Conflict, match="session 's2' exists"):
        api.fork("s1", "s2", "acme")
    with pytest.raises(NotFound):
        api.fork("s1", "s3", "nobody")


# --- the HTTP face ---------------------------------------------------------------------------


class FakeSessions(Sessions):
    calls: list[tuple[Any, ...]]

    def pause(self, session: str, tenant: str | None = None) -> pause.State:
        self.calls.append(("pause", session, tenant))
        if tenant != "acme":
            raise NotFound(f"no session {session!r} of tenant {tenant}")
        return pause.State(session, "paused", True)

    def resume(self, session: str, tenant: str | None = None) -> pause.State:
        self.calls.append(("resume", session, tenant))
        return pause.State(session, "running", False)

    def fork(self, session: str, as_: str, tenant: str | None = None, snapshot: str | None = None,
             secrets: Any = None, progress: Any = None) -> Any:  # fmt: skip
        self.calls.append(("fork", session, as_, tenant, snapshot, secrets))
        return {"sessionId": as_}

    def snapshot(self, session: str, name: str, tenant: str | None = None) -> Any:
        self.calls.append(("snapshot", session, name, tenant))
        return snapshots.Snapshot(name, tenant, session, "snapshot", "i", "sha256:1", ["workspace"])

    def snapshots(self, tenant: str | None = None) -> Any:
        self.calls.append(("snapshots", tenant))
        return []

    def remove_snapshot(self, name: str, tenant: str | None = None) -> Any:
        self.calls.append(("remove", name, tenant))
        return snapshots.Snapshot(name, tenant, "s1", "snapshot", "i", "sha256:1")


@pytest.mark.anyio
async def test_http_routes_act_in_the_keys_tenant(tmp_path: Path) -> None:
    where = paths({"DOCKYARD_STATE_DIR": str(tmp_path / "state")})
    fake = FakeSessions(where, SimpleNamespace())  # type: ignore[arg-type]
    fake.calls = []
    store = KeyStore(default_url(tmp_path / "state"))
    try:
        acme = {"Authorization": f"Bearer {store.create('acme').key}"}
        other = {"Authorization": f"Bearer {store.create('other').key}"}
        app = create_app(fake, store)
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            answer = await client.post("/api/sessions/s1/pause?tenant=other", headers=acme)
            assert answer.status_code == 200, answer.text
            assert answer.json() == {"sessionId": "s1", "status": "paused", "changed": True}
            answer = await client.post("/api/sessions/s1/pause", headers=other)
            assert answer.status_code == 404
            assert (await client.post("/api/sessions/s1/resume", headers=acme)).json()[
                "changed"
            ] is False
            answer = await client.post(
                "/api/sessions/s1/fork",
                json={"as": "s9", "secretValues": {"K": "v"}},
                headers=acme,
            )
            assert answer.status_code == 201, answer.text
            answer = await client.post(
                "/api/sessions/s1/fork", json={"as": "s9", "tenant": "other"}, headers=acme
            )
            assert answer.status_code == 422
            answer = await client.post(
                "/api/sessions/s1/snapshots", json={"name": "base"}, headers=acme
            )
            assert answer.status_code == 201
            assert answer.json()["volumes"] == ["workspace"]
            assert (await client.get("/api/snapshots", headers=acme)).json() == []
            assert (await client.delete("/api/snapshots/base", headers=acme)).status_code == 200
    finally:
        store.close()
    assert fake.calls == [
        ("pause", "s1", "acme"),
        ("pause", "s1", "other"),
        ("resume", "s1", "acme"),
        ("fork", "s1", "s9", "acme", None, {"K": "v"}),
        ("snapshot", "s1", "base", "acme"),
        ("snapshots", "acme"),
        ("remove", "base", "acme"),
    ]


def test_a_freeze_the_runtime_could_not_do_yet_is_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    import docker.errors

    monkeypatch.setattr(pause.time, "sleep", lambda _s: None)

    class Stuck(FakeContainer):
        name = "dockyard-t.acme.s1"

        def __init__(self, failures: int, why: str) -> None:
            super().__init__("running")
            self.failures, self.why = failures, why

        def pause(self) -> None:
            self.calls.append("pause")
            if len(self.calls) <= self.failures:
                raise docker.errors.APIError("500", explanation=self.why)

    slow = Stuck(2, "OCI runtime pause failed: unable to freeze: unknown")
    pause.freeze(slow)
    assert slow.calls == ["pause"] * 3
    never = Stuck(99, "OCI runtime pause failed: unable to freeze: unknown")
    with pytest.raises(Failed, match="would not freeze: retry"):
        pause.freeze(never)
    assert len(never.calls) == pause.FREEZE_TRIES
    other = Stuck(1, "container is not running")
    with pytest.raises(Failed, match=r"could not pause dockyard-t\.acme\.s1: container is not"):
        pause.freeze(other)
    assert other.calls == ["pause"]


def test_a_resume_waits_while_a_snapshot_holds_the_session_paused(
    api: Sessions, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    container = FakeContainer("paused")
    _engine(monkeypatch, **{"dockyard-t.acme.s1": container})
    record = api.registry.find("s1", "acme")
    done = threading.Event()

    def resume() -> None:
        api.resume("s1", "acme")
        done.set()

    with pause.frozen_state(api.where, record):
        waiter = threading.Thread(target=resume)
        waiter.start()
        assert not done.wait(0.5), "resume thawed the session in the middle of a snapshot"
        assert container.calls == []
    waiter.join(10)
    assert done.is_set()
    assert container.calls == ["unpause"]
