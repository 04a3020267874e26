"""Hibernate and resume from hibernation with fakes (issue 29 item 3): the host that
cannot checkpoint (a Conflict saying what was measured and what to do, the session left as
it was), the host that can (checkpoint then stop; resume from the checkpoint), and a
restore that fails (the same container started cold: its volumes, never without them).
The engine-side refusal on this machine is in tests/integration/test_wake_on_engine.py."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import docker.errors
import pytest

from dockyard.errors import Conflict, Failed
from dockyard.sessions import Sessions, hibernate, pause, registry
from dockyard.sessions.settings import paths
from tests.support.fake_service import registered_sessions

NAME = "dockyard-t.acme.s1"


class FakeEngine:
    """One container on a fake engine, with checkpoints; records what was asked of it."""

    def __init__(self, status: str, *, restore_fails: str = "", cold_fails: str = "") -> None:
        self.status = status
        self.checkpoints: list[str] = []
        self.calls: list[str] = []
        self.restore_fails = restore_fails
        self.cold_fails = cold_fails
        self.volumes = ["workspace", "config", "home"]  # what the container mounts


class FakeContainer:
    def __init__(self, engine: FakeEngine) -> None:
        self.engine = engine
        self.name = NAME
        self.id = "c0ffee"
        self.client = SimpleNamespace(info=lambda: {"ExperimentalBuild": True})
        self.attrs = {"Config": {"Labels": {"dockyard.session": "s1", "dockyard.managed": "true"}}}

    @property
    def status(self) -> str:
        return self.engine.status

    def reload(self) -> None:
        return None

    def pause(self) -> None:
        self.engine.calls.append("pause")
        self.engine.status = "paused"

    def unpause(self) -> None:
        self.engine.calls.append("unpause")
        self.engine.status = "running"


class FakeCheckpoints:
    def __init__(self, engine: FakeEngine) -> None:
        self.engine = engine

    def names(self) -> list[str]:
        return list(self.engine.checkpoints)

    def create(self, name: str) -> None:
        self.engine.calls.append(f"checkpoint {name}")
        assert self.engine.status == "running", "CRIU checkpoints a running container"
        self.engine.checkpoints.append(name)
        self.engine.status = "exited"

    def remove(self, name: str) -> None:
        self.engine.calls.append(f"rm {name}")
        self.engine.checkpoints.remove(name)

    def start(self, checkpoint: str | None) -> None:
        self.engine.calls.append(f"start {checkpoint or 'cold'}")
        failure = self.engine.restore_fails if checkpoint else self.engine.cold_fails
        if failure:
            raise docker.errors.APIError(failure, explanation=failure)
        self.engine.status = "running"


class FakeClient:
    def __init__(self, engine: FakeEngine) -> None:
        self.containers = SimpleNamespace(get=lambda name: FakeContainer(engine))

    def close(self) -> None:
        return None


ABLE = hibernate.Capability(True, ("the engine is experimental", "`criu check` passes"))
MEASURED_HERE = hibernate.Capability(
    False,
    (
        "the engine (local) does not run in experimental mode",
        "`criu check` fails (exit 1): Error (criu/vdso.c:613): vdso: Failed to fill self "
        "vdso symtable",
    ),
)


@pytest.fixture
def api(tmp_path: Path) -> Sessions:
    return registered_sessions(tmp_path, ("acme",))


def _on(monkeypatch: pytest.MonkeyPatch, engine: FakeEngine, can: hibernate.Capability) -> None:
    monkeypatch.setattr(pause, "connect", lambda host: FakeClient(engine))
    monkeypatch.setattr(pause, "_CLIENTS", {})
    monkeypatch.setattr(hibernate, "checkpoints_of", lambda container: FakeCheckpoints(engine))
    monkeypatch.setattr(hibernate, "capability", lambda client, host: can)


def _audit(api: Sessions) -> list[tuple[str, str, str | None]]:
    lines = [json.loads(x) for x in api.where.audit_log.read_text().splitlines()]
    return [(x["action"], x["result"], x.get("detail")) for x in lines]


def test_a_host_that_cannot_checkpoint_refuses_saying_why_and_what_to_do(
    api: Sessions, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = FakeEngine("running")
    _on(monkeypatch, engine, MEASURED_HERE)
    with pytest.raises(Conflict) as refused:
        api.hibernate("s1", "acme")
    message = str(refused.value)
    for said in (
        "hibernate is not available on its host (local)",
        "does not run in experimental mode",
        "vdso: Failed to fill self vdso symtable",
        "The session is left running",
        '"experimental": true',
        "a newer CRIU",
        # Measured (2026-12-07): Debian 13's CRIU 4.1.1 passes `criu check` here, but
        # the engine lacks CAP_SYS_RESOURCE, so a session's uid-1000 processes cannot
        # be dumped; the refusal says both.
        "4.1.1 built from Debian 13's source",
        "CAP_SYS_RESOURCE",
        "Can't get rlimit 0: Operation not permitted",
        "`dockyard pause`",
    ):
        assert said in message
    assert (engine.status, engine.calls, engine.checkpoints) == ("running", [], [])
    assert _audit(api) == [("hibernate", "error", "Conflict")]


def test_hibernate_checkpoints_then_stops_and_resume_restores(
    api: Sessions, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = FakeEngine("paused")
    _on(monkeypatch, engine, ABLE)
    assert api.hibernate("s1", "acme") == pause.State("s1", "hibernated", True)
    assert (engine.status, engine.checkpoints) == ("exited", ["dockyard-hibernate"])
    # A paused session is thawed first: CRIU freezes the processes itself.
    assert engine.calls == ["unpause", "checkpoint dockyard-hibernate"]
    assert api.hibernate("s1", "acme") == pause.State("s1", "hibernated", False)
    resumed = api.resume("s1", "acme")
    assert (resumed.status, resumed.changed) == ("running", True)
    assert resumed.detail.startswith("restored from its checkpoint")
    assert engine.calls[2:] == ["start dockyard-hibernate", "rm dockyard-hibernate"]
    assert engine.checkpoints == []
    assert api.resume("s1", "acme") == pause.State("s1", "running", False)
    assert [a[:2] for a in _audit(api)] == [
        ("hibernate", "ok"),
        ("hibernate", "ok"),
        ("resume", "ok"),
        ("resume", "ok"),
    ]


def test_a_failed_restore_comes_back_cold_with_its_volumes(
    api: Sessions, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = FakeEngine("running", restore_fails="criu restore: Unexpected rt vDSO area")
    _on(monkeypatch, engine, ABLE)
    api.hibernate("s1", "acme")
    resumed = api.resume("s1", "acme")
    assert (resumed.status, resumed.changed) == ("running", True)
    assert "restore failed (criu restore: Unexpected rt vDSO area)" in resumed.detail
    assert "started cold with its workspace" in resumed.detail
    # The same container (its volumes) started without the checkpoint; nothing removed
    # but the checkpoint, so a later resume does not try it again.
    assert engine.calls[-3:] == ["start dockyard-hibernate", "start cold", "rm dockyard-hibernate"]
    assert engine.volumes == ["workspace", "config", "home"]
    assert engine.checkpoints == []
    assert "started cold" in (_audit(api)[-1][2] or "")


def test_a_container_that_will_not_start_at_all_is_failed_naming_refresh(
    api: Sessions, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = FakeEngine("running", restore_fails="criu failed", cold_fails="no such device")
    _on(monkeypatch, engine, ABLE)
    api.hibernate("s1", "acme")
    with pytest.raises(Failed, match=r"its volumes are untouched: `dockyard refresh s1`"):
        api.resume("s1", "acme")
    assert engine.status == "exited"


def test_a_failed_checkpoint_is_reported_and_leaves_the_session(
    api: Sessions, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = FakeEngine("running")
    _on(monkeypatch, engine, ABLE)

    def refuse(name: str) -> None:
        raise docker.errors.APIError("dump", explanation="criu dump failed: tcp socket")

    monkeypatch.setattr(FakeCheckpoints, "create", lambda self, name: refuse(name))
    with pytest.raises(
        Failed, match=r"could not checkpoint .*tcp socket; the session is left running"
    ):
        api.hibernate("s1", "acme")


def test_only_a_running_or_paused_session_hibernates_and_a_plain_stop_does_not_resume(
    api: Sessions, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = FakeEngine("exited")  # stopped, no checkpoint: not hibernated
    _on(monkeypatch, engine, ABLE)
    with pytest.raises(Conflict, match="its container is exited, not running"):
        api.hibernate("s1", "acme")
    with pytest.raises(Conflict, match=r"not paused or hibernated.*`dockyard refresh s1`"):
        api.resume("s1", "acme")
    assert hibernate.wake(api, "s1", "acme", by="exec") is False
    assert engine.calls == []


def test_capability_is_measured_engine_mode_and_criu_check() -> None:
    def client(experimental: bool) -> Any:
        return SimpleNamespace(info=lambda: {"ExperimentalBuild": experimental})

    failing = (False, "`criu check` fails (exit 1): vdso: Failed to fill self vdso symtable")
    held = (True, "the engine (dockerd pid 7) has CAP_SYS_RESOURCE")
    lacking = (False, "the engine (dockerd pid 7) runs without CAP_SYS_RESOURCE (CapEff …)")
    here = hibernate.capability(client(False), "local", check=lambda: failing, caps=lambda: held)
    assert not here.able
    assert here.findings == (
        "the engine (local) does not run in experimental mode",
        failing[1],
    )
    assert not hibernate.capability(
        client(True), "local", check=lambda: failing, caps=lambda: held
    ).able
    able = hibernate.capability(
        client(True), "local", check=lambda: (True, "ok"), caps=lambda: held
    )
    assert able.able
    # The new CRIU passes `criu check` on this machine class, but the engine lacks
    # CAP_SYS_RESOURCE there: measured, and said.
    without = hibernate.capability(
        client(True), "local", check=lambda: (True, "ok"), caps=lambda: lacking
    )
    assert (without.able, without.findings) == (False, ("ok", lacking[1]))
    remote = hibernate.capability(
        client(True), "ssh://h", check=lambda: failing, caps=lambda: lacking
    )
    assert remote.able  # its CRIU is not checked from here: the engine's answer decides
    assert "criu on ssh://h is not checked from here" in remote.findings[0]


def test_engine_capabilities_reads_the_dockerd_through_its_pidfile(tmp_path: Path) -> None:
    def engine(pid: int, comm: str, cap_eff: str) -> str:
        where = tmp_path / "proc" / str(pid)
        where.mkdir(parents=True)
        (where / "comm").write_text(f"{comm}\n")
        (where / "status").write_text(f"Name:\t{comm}\nCapEff:\t{cap_eff}\n")
        pidfile = tmp_path / f"{pid}.pid"
        pidfile.write_text(f"{pid}\n")
        return str(pidfile)

    proc = str(tmp_path / "proc")
    measured_here = engine(1175, "dockerd", "000001fffeffffff")  # bit 24 clear
    full = engine(1176, "dockerd", "000001ffffffffff")
    not_an_engine = engine(1177, "python3", "000001fffeffffff")
    lacks, said = hibernate.engine_capabilities((measured_here,), proc)
    assert not lacks
    assert said.startswith("the engine (dockerd pid 1175) runs without CAP_SYS_RESOURCE")
    assert hibernate.engine_capabilities((full,), proc)[0]
    # The first readable dockerd decides; what cannot be read is not held against the host.
    assert not hibernate.engine_capabilities((str(tmp_path / "none"), measured_here), proc)[0]
    for unread in ((str(tmp_path / "none"),), (not_an_engine,)):
        assert hibernate.engine_capabilities(unread, proc) == (
            True,
            "the engine's capabilities could not be read here (its answer decides)",
        )


def test_criu_check_on_this_machine_says_what_it_measured() -> None:
    passes, said = hibernate.criu_check()
    # Whatever this machine has, the answer quotes it; a failure names its exit code.
    assert said.startswith(("`criu check` passes", "`criu check` fails (exit", "criu is not"))
    assert passes == said.startswith("`criu check` passes")


def test_the_cli_verb_answers_the_refusal_and_the_restore(
    api: Sessions, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from dockyard import cli

    engine = FakeEngine("running")
    _on(monkeypatch, engine, MEASURED_HERE)
    monkeypatch.setattr(Sessions, "default", lambda: api)
    refused = CliRunner().invoke(cli.app, ["hibernate", "s1", "--tenant", "acme", "--json"])
    assert refused.exit_code == 1, refused.output
    error = json.loads(refused.stdout)["error"]
    assert error["kind"] == "conflict"
    assert "does not run in experimental mode" in error["problems"][0]
    _on(monkeypatch, engine, ABLE)
    done = CliRunner().invoke(cli.app, ["hibernate", "s1", "--tenant", "acme", "--json"])
    assert json.loads(done.stdout) == {"sessionId": "s1", "status": "hibernated", "changed": True}
    back = CliRunner().invoke(cli.app, ["resume", "s1", "--tenant", "acme"])
    assert back.exit_code == 0, back.output
    assert "s1: running" in back.stdout
    assert "restored from its checkpoint" in back.stdout


@pytest.mark.anyio
async def test_the_http_route_maps_the_refusal_to_409_in_the_keys_tenant(tmp_path: Path) -> None:
    import httpx

    from dockyard.api.app import create_app
    from dockyard.api.store import KeyStore, default_url

    calls: list[tuple[str, str, str | None]] = []

    class FakeSessions(Sessions):
        def hibernate(self, session: str, tenant: str | None = None) -> pause.State:
            calls.append(("hibernate", session, tenant))
            if tenant != "acme":
                raise registry.SessionNotFound(f"no session {session!r} of tenant {tenant}")
            raise Conflict(f"session {session!r}: hibernate is not available on its host")

        def resume(self, session: str, tenant: str | None = None) -> pause.State:
            calls.append(("resume", session, tenant))
            return pause.State(session, "running", True, "restored from its checkpoint")

    where = paths({"DOCKYARD_STATE_DIR": str(tmp_path / "state")})
    store = KeyStore(default_url(tmp_path / "state"))
    try:
        acme = {"Authorization": f"Bearer {store.create('acme').key}"}
        other = {"Authorization": f"Bearer {store.create('other').key}"}
        app = create_app(FakeSessions(where, SimpleNamespace()), store)  # type: ignore[arg-type]
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            answer = await client.post("/api/sessions/s1/hibernate", headers=acme)
            assert answer.status_code == 409, answer.text
            assert "hibernate is not available on its host" in answer.text
            answer = await client.post("/api/sessions/s1/hibernate", headers=other)
            assert answer.status_code == 404
            answer = await client.post("/api/sessions/s1/resume", headers=acme)
            assert answer.json() == {
                "sessionId": "s1",
                "status": "running",
                "changed": True,
                "detail": "restored from its checkpoint",
            }
    finally:
        store.close()
    assert calls == [
        ("hibernate", "s1", "acme"),
        ("hibernate", "s1", "other"),
        ("resume", "s1", "acme"),
    ]
