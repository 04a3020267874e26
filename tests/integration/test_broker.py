"""The credential broker image (images/broker, docs/isolation.md) on the real engine, on
its own: a stand-in upstream API behind TLS records what it receives; a caller on the
same network holds only a token.

Proven here, of the image alone: the real key arrives upstream and the token never
leaves the broker; another token is refused and nothing is forwarded; with the broker
down the call fails and names the broker; the image runs as its own unprivileged user.
What the program builds around it (the environment holding no real key, the broker's
capabilities, limits and networks, another environment's broker out of reach) is proven
end to end, on what the program declares, in test_broker_on_engine.py.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
from docker.models.containers import Container

from tests.support.engine import LABELS, RUN_ID, remove_image, unique_name, wait_for
from tests.support.upstream import UPSTREAM, call, make_ca_and_server_cert, received

pytestmark = pytest.mark.docker

REPO = Path(__file__).resolve().parents[2]
BROKER_UID = 999  # the Debian caddy package's system user (images/broker/Dockerfile)
REAL = {
    "ANTHROPIC_API_KEY": f"sk-ant-real-{RUN_ID}-broker",
    "OPENAI_API_KEY": f"sk-openai-real-{RUN_ID}-broker",
}


class Setup:
    def __init__(self, client: docker.DockerClient, image: str, core: str, root: Path) -> None:
        self.client, self.image, self.core, self.root = client, image, core, root
        self.network = client.networks.create(unique_name("broker"), labels=LABELS)
        self.created: list[Container] = []

    def run(self, image: str, alias: str, **kwargs: Any) -> Container:
        container = self.client.containers.run(
            image,
            detach=True,
            name=unique_name(alias),
            labels=LABELS,
            network=self.network.name,
            **kwargs,
        )
        self.created.append(container)
        # Docker 20.10's run takes no alias: reconnect under one.
        self.network.disconnect(container)
        self.network.connect(container, aliases=[alias])
        return container

    def secrets(self, name: str, values: dict[str, str]) -> Path:
        directory = self.root / name
        directory.mkdir()
        for key, value in values.items():
            (directory / key).write_text(value)
            (directory / key).chmod(0o400)
            os.chown(directory / key, BROKER_UID, BROKER_UID)
        return directory

    def broker(self, alias: str, token: str) -> Container:
        secrets = self.secrets(alias, {"DOCKYARD_BROKER_TOKEN": token, **REAL})
        return self.run(
            self.image,
            alias,
            environment={
                "DOCKYARD_ANTHROPIC_UPSTREAM": "https://upstream:8443",
                "DOCKYARD_OPENAI_UPSTREAM": "https://upstream:8443",
                "DOCKYARD_UPSTREAM_CA": "/tls/ca.pem",
            },
            volumes={
                str(secrets): {"bind": "/run/secrets", "mode": "ro"},
                str(self.root / "tls"): {"bind": "/tls", "mode": "ro"},
            },
            cap_drop=["ALL"],
            security_opt=["no-new-privileges:true"],
        )

    def cleanup(self) -> None:
        for container in self.created:
            container.remove(force=True)
        self.network.remove()


@pytest.fixture(scope="module")
def setup(
    docker_client: docker.DockerClient, core_image: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Setup]:
    tag = f"dockyard-broker:test-{RUN_ID}"
    docker_client.images.build(path=str(REPO / "images" / "broker"), tag=tag, rm=True, pull=False)
    root = tmp_path_factory.mktemp("broker")
    (root / "tls").mkdir()
    make_ca_and_server_cert(root / "tls", "upstream")
    (root / "tls").chmod(0o755)
    state = Setup(docker_client, tag, core_image, root)
    try:
        yield state
    finally:
        state.cleanup()
        remove_image(docker_client, tag)


@pytest.fixture(scope="module")
def env_a(setup: Setup) -> dict[str, Any]:
    """Upstream, environment a's broker and agent stand-in, all on one network."""
    upstream = setup.run(
        setup.core, "upstream", entrypoint=["python3", "-c", UPSTREAM], user="1000:1000",
        volumes={str(setup.root / "tls"): {"bind": "/tls", "mode": "ro"}},
    )  # fmt: skip
    token = f"dockyard-env-a-{uuid.uuid4().hex}"
    broker = setup.broker("broker", token)
    agent = setup.run(
        setup.core,
        "agent",
        entrypoint=["sleep", "600"],
        user="1000:1000",
        environment={
            "ANTHROPIC_API_KEY": token,
            "ANTHROPIC_BASE_URL": "http://broker:8081",
            "OPENAI_API_KEY": token,
            "OPENAI_BASE_URL": "http://broker:8082",
        },
    )
    wait_for(
        lambda: _call(agent, "ANTHROPIC")[0] == 0,
        30,
        what=lambda: f"broker to answer: {_call(agent, 'ANTHROPIC')} {broker.logs()[-500:]!r}",
    )
    return {"upstream": upstream, "broker": broker, "agent": agent, "token": token}


def _call(agent: Container, kind: str, *key: str) -> tuple[int, str]:
    return call(agent, kind, "/v1/messages", *key)


def test_the_real_key_arrives_and_the_token_never_leaves(env_a: dict[str, Any]) -> None:
    before = len(received(env_a["upstream"]))
    assert _call(env_a["agent"], "ANTHROPIC")[0] == 0
    assert _call(env_a["agent"], "OPENAI")[0] == 0
    anthropic, openai = received(env_a["upstream"])[before:]
    assert {k.lower(): v for k, v in anthropic["headers"].items()}["x-api-key"] == REAL[
        "ANTHROPIC_API_KEY"
    ]
    assert {k.lower(): v for k, v in openai["headers"].items()}["authorization"] == (
        f"Bearer {REAL['OPENAI_API_KEY']}"
    )
    for request in (anthropic, openai):
        assert env_a["token"] not in json.dumps(request), request
        assert request["path"] == "/v1/messages"


def test_another_environments_token_is_refused_and_nothing_forwarded(
    env_a: dict[str, Any],
) -> None:
    before = len(received(env_a["upstream"]))
    other = f"dockyard-env-b-{uuid.uuid4().hex}"
    for kind, header in (("ANTHROPIC", "x-api-key: "), ("OPENAI", "Authorization: Bearer ")):
        code, output = _call(env_a["agent"], kind, other)
        assert code == 3, (header, output)
        assert "403" in output
    assert received(env_a["upstream"])[before:] == []


def test_broker_down_fails_the_call_clearly(setup: Setup, env_a: dict[str, Any]) -> None:
    broker: Container = env_a["broker"]
    broker.stop(timeout=5)
    try:
        code, output = _call(env_a["agent"], "ANTHROPIC")
        assert code == 4, output
        assert "broker at http://broker:8081 unreachable" in output
    finally:
        broker.start()
        setup.network.disconnect(broker)
        setup.network.connect(broker, aliases=["broker"])
    # Back for the next test: its entrypoint (a script) execs Caddy, which then listens.
    wait_for(
        lambda: _call(env_a["agent"], "ANTHROPIC")[0] == 0,
        60,
        what=lambda: f"the broker to return: {broker.logs()[-500:]!r}",
    )


def test_the_image_runs_caddy_as_its_own_unprivileged_user(env_a: dict[str, Any]) -> None:
    """The fixture sets no user: this is the image's USER, and every process of the
    container (Caddy included) runs as it, not as root."""
    broker: Container = env_a["broker"]
    broker.reload()
    assert broker.attrs["Config"]["User"] == f"{BROKER_UID}:{BROKER_UID}"

    def processes_now() -> list[list[str]]:
        return broker.top(ps_args="-o pid,uid,comm")["Processes"] or []

    # A (re)started broker runs its entrypoint script (and what it forks) before it execs
    # Caddy: read once only Caddy is left.
    wait_for(
        lambda: {row[-1] for row in processes_now()} == {"caddy"},
        60,
        what=lambda: f"only caddy in the broker: {processes_now()}",
    )
    processes = processes_now()
    assert processes, "no process in the broker"
    assert {(uid, comm) for _, uid, comm in processes} == {(str(BROKER_UID), "caddy")}, processes
