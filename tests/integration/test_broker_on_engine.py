"""``credentials: brokered`` end to end on the real engine, through the program (harness):
a stand-in upstream API behind TLS, on the broker's uplink only, records what arrives.

Proven here: the real keys arrive upstream (Anthropic, OpenAI, git over HTTPS) and the
environment's token never leaves its broker; the real CLIs use the broker; no real key
is anywhere in the environment (files, /proc/*/environ, docker inspect); another
environment's token is refused with nothing forwarded, and another environment's broker
is not even reachable; with the broker down the call fails naming it and nothing reaches
the upstream by another way; destroy leaves no broker, network or volume behind.
"""

from __future__ import annotations

import base64
import json
import socket
from collections.abc import Callable, Iterator
from typing import Any

import docker
import pytest
from docker.models.containers import Container

from tests.support.engine import LABELS, RUN_ID, exec_ok, unique_name, wait_for
from tests.support.stacks import Deployed
from tests.support.upstream import (
    UPSTREAM,
    addresses,
    call,
    connect,
    make_ca_and_server_cert,
    received,
)

pytestmark = pytest.mark.docker

REAL = {
    "ANTHROPIC_API_KEY": f"sk-ant-real-{RUN_ID}-brokered",
    "OPENAI_API_KEY": f"sk-openai-real-{RUN_ID}-brokered",
    "GITHUB_TOKEN": f"ghp_real_{RUN_ID}_brokered",
}
UPSTREAM_URL = "https://upstream:8443"


class Setup:
    def __init__(self, client: docker.DockerClient, stack: Deployed, upstream: Container) -> None:
        self.client, self.stack, self.upstream = client, stack, upstream

    def env(self, session: str) -> Container:
        return self.stack.container(session)

    def broker(self, session: str) -> Container:
        return self.client.containers.get(f"dockyard-{self.stack.stack}-{session}-broker")

    def received(self) -> list[dict[str, Any]]:
        return received(self.upstream)

    def call(self, session: str, kind: str, *key: str) -> tuple[int, str]:
        path = "/v1/messages" if kind == "ANTHROPIC" else "/responses"
        return call(self.env(session), kind, path, *key, user="1000")

    def token(self, session: str) -> str:
        return exec_ok(self.env(session), ["cat", "/run/secrets/ANTHROPIC_API_KEY"], user="1000")


@pytest.fixture(scope="module")
def setup(
    deploy: Callable[..., Deployed],
    docker_client: docker.DockerClient,
    core_image: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Setup]:
    tls = tmp_path_factory.mktemp("broker-tls")
    make_ca_and_server_cert(tls, "upstream")
    values = {
        "broker": {
            "anthropic": UPSTREAM_URL,
            "openai": UPSTREAM_URL,
            "git": UPSTREAM_URL,
            "caFile": str(tls / "ca.pem"),
        },
        "environments": [
            {
                "sessionId": "held",
                "credentials": "brokered",
                "secrets": list(REAL),
                # The API hosts are not on the list: only the broker reaches them.
                "egress": "allowlist",
                "egressAllow": ["pypi"],
            },
            {"sessionId": "peer", "credentials": "brokered", "secrets": ["ANTHROPIC_API_KEY"]},
        ],
    }
    stack = deploy("brokered", values, REAL)
    stack.wait_ready(timeout=120)
    upstream = docker_client.containers.run(
        core_image,
        ["python3", "-c", UPSTREAM],
        entrypoint=[],
        detach=True,
        name=unique_name("upstream"),
        labels=LABELS,
        user="1000:1000",
        volumes={str(tls): {"bind": "/tls", "mode": "ro"}},
        network=f"dockyard-{stack.stack}-held-broker-uplink",
    )
    try:
        # Reachable as "upstream" from both brokers' uplinks, and from nowhere else.
        for session in ("held", "peer"):
            network = docker_client.networks.get(f"dockyard-{stack.stack}-{session}-broker-uplink")
            if session == "held":
                network.disconnect(upstream)
            network.connect(upstream, aliases=["upstream"])
        state = Setup(docker_client, stack, upstream)
        wait_for(
            lambda: state.call("held", "ANTHROPIC")[0] == 0,
            60,
            what=lambda: (
                f"the broker to forward: {state.call('held', 'ANTHROPIC')} "
                f"{state.broker('held').logs()[-800:]!r}"
            ),
        )
        yield state
    finally:
        upstream.remove(force=True)


def _headers(request: dict[str, Any]) -> dict[str, str]:
    return {k.lower(): v for k, v in request["headers"].items()}


def test_the_real_keys_arrive_and_the_token_never_leaves(setup: Setup) -> None:
    token = setup.token("held")
    assert token.startswith("dockyard-broker-")
    before = len(setup.received())
    assert setup.call("held", "ANTHROPIC")[0] == 0
    assert setup.call("held", "OPENAI")[0] == 0
    anthropic, openai = setup.received()[before:]
    assert _headers(anthropic)["x-api-key"] == REAL["ANTHROPIC_API_KEY"]
    assert _headers(openai)["authorization"] == f"Bearer {REAL['OPENAI_API_KEY']}"
    assert openai["path"] == "/v1/responses"  # OPENAI_BASE_URL ends in /v1
    for request in (anthropic, openai):
        assert token not in json.dumps(request), request


def test_git_over_https_goes_through_the_broker(setup: Setup) -> None:
    token = setup.token("held")
    before = len(setup.received())
    # The stand-in is no git server: the call fails after the request was made.
    setup.env("held").exec_run(
        ["git", "ls-remote", f"{UPSTREAM_URL}/acme/app.git"], user="1000", workdir="/workspace"
    )
    requests = setup.received()[before:]
    assert requests, "no git request reached the upstream"
    basic = base64.b64encode(f"x-access-token:{REAL['GITHUB_TOKEN']}".encode()).decode()
    assert _headers(requests[0])["authorization"] == f"Basic {basic}"
    assert requests[0]["path"].startswith("/acme/app.git/info/refs")
    assert token not in json.dumps(requests)


def test_the_agent_clis_use_the_broker(setup: Setup) -> None:
    """The real CLIs, run the way the tmux session runs them (keys exported from the
    files): each sends the real key upstream through the broker, and only through it."""
    before = len(setup.received())
    script = (
        'set -a; for f in /run/secrets/*; do eval "${f##*/}=\\$(cat $f)"; done; set +a; '
        "DISABLE_NONESSENTIAL_TRAFFIC=1 timeout 30 claude -p hello >/dev/null 2>&1; "
        "timeout 30 codex exec --skip-git-repo-check hello >/dev/null 2>&1; true"
    )
    setup.env("held").exec_run(["bash", "-c", script], user="1000", workdir="/workspace")
    requests = setup.received()[before:]
    keys = {(_headers(r).get("x-api-key"), _headers(r).get("authorization")) for r in requests}
    assert (REAL["ANTHROPIC_API_KEY"], None) in keys, requests[:3]
    assert (None, f"Bearer {REAL['OPENAI_API_KEY']}") in keys, requests[:3]
    assert setup.token("held") not in json.dumps(requests)


def test_no_real_key_anywhere_in_the_environment(setup: Setup) -> None:
    container = setup.env("held")
    container.reload()
    inspected = json.dumps(container.attrs)
    environs = exec_ok(
        container,
        ["bash", "-c", "cat /proc/[0-9]*/environ 2>/dev/null | tr '\\0' '\\n'"],
        user="1000",  # the agent's own processes (root here has no CAP_SYS_PTRACE)
    )
    assert setup.token("held") in environs  # the search does read the agent's variables
    roots = ["/etc", "/home", "/tmp", "/run", "/root", "/workspace", "/config", "/checkpoints",
             "/opt", "/usr/local", "/var"]  # fmt: skip

    def files_with(*values: str) -> set[str]:
        # Root here has no CAP_DAC_OVERRIDE: the agent reads its own files, root the rest.
        pattern = [arg for value in values for arg in ("-e", value)]
        found: set[str] = set()
        for user in ("1000", "root"):
            result = container.exec_run(
                ["grep", "-rIl", "--no-messages", *pattern, *roots], user=user
            )
            found |= set((result.output or b"").decode().split())
        return found

    # The search does read the secret files (they hold the token).
    assert "/run/secrets/ANTHROPIC_API_KEY" in files_with(setup.token("held"))
    for name, value in REAL.items():
        assert value not in inspected, f"{name} in docker inspect"
        assert value not in environs, f"{name} in /proc/*/environ"
    assert files_with(*REAL.values()) == set(), "a real key in the environment's files"
    # The broker keeps them out of its own inspect too: they are files in it.
    broker = setup.broker("held")
    broker.reload()
    for value in REAL.values():
        assert value not in json.dumps(broker.attrs)


def test_another_environments_token_is_refused_and_its_broker_unreachable(setup: Setup) -> None:
    peer_token = setup.token("peer")
    assert peer_token != setup.token("held")
    before = len(setup.received())
    code, output = setup.call("held", "ANTHROPIC", peer_token)
    assert code == 3, output
    assert output.startswith("403"), output
    assert setup.received()[before:] == []
    # The peer's broker is on a network the held environment is not on: its name does
    # not resolve there, and its addresses (internal network and uplink) do not connect.
    peer_host = f"dockyard-{setup.stack.stack}-peer-broker"
    result = setup.env("held").exec_run(
        ["python3", "-c", f"import socket; socket.getaddrinfo({peer_host!r}, 8081)"], user="1000"
    )
    assert result.exit_code != 0, result.output
    held_broker = addresses(setup.broker("held"))
    peer_broker = addresses(setup.broker("peer"))
    assert sorted(peer_broker) == sorted(
        f"dockyard-{setup.stack.stack}-peer-broker{suffix}" for suffix in ("", "-uplink")
    ), peer_broker
    # Controls: the probe connects from an environment to its own broker's address, and
    # the peer's broker listens on the address its own environment uses.
    own = held_broker[f"dockyard-{setup.stack.stack}-held-broker"]
    assert connect(setup.env("held"), own, 8081) == (0, "connected\n")
    peer_internal = peer_broker[f"dockyard-{setup.stack.stack}-peer-broker"]
    assert connect(setup.env("peer"), peer_internal, 8081) == (0, "connected\n")
    for network, address in peer_broker.items():
        code, output = connect(setup.env("held"), address, 8081)
        assert code == 5, f"the held environment reached the peer's broker on {network}: {output}"


def test_broker_down_fails_clearly_and_nothing_goes_direct(setup: Setup) -> None:
    broker = setup.broker("held")
    before = len(setup.received())
    broker.stop(timeout=5)
    try:
        code, output = setup.call("held", "ANTHROPIC")
        assert code == 4, output
        assert f"broker at http://dockyard-{setup.stack.stack}-held-broker:8081 unreachable" in (
            output
        )
        # No way around it: the upstream is not on the environment's networks, by name
        # or by any of its addresses (on both brokers' uplinks).
        direct = setup.env("held").exec_run(
            ["python3", "-c", "import socket; socket.getaddrinfo('upstream', 8443)"], user="1000"
        )
        assert direct.exit_code != 0
        upstream = addresses(setup.upstream)
        assert len(upstream) == 2, upstream
        for network, address in upstream.items():
            # Control: the stand-in listens there (the host reaches the uplink bridges).
            with socket.create_connection((address, 8443), timeout=5):
                pass
            code, output = connect(setup.env("held"), address, 8443)
            assert code == 5, f"the environment reached the upstream on {network}: {output}"
        assert setup.received()[before:] == []
    finally:
        broker.start()
    wait_for(lambda: setup.call("held", "ANTHROPIC")[0] == 0, 30, what="the broker to return")


def test_broker_is_no_environment(setup: Setup, docker_client: docker.DockerClient) -> None:
    broker = setup.broker("held")
    broker.reload()
    assert broker.attrs["Config"]["User"] == "999:999"
    assert broker.attrs["HostConfig"]["CapDrop"] == ["ALL"]
    assert broker.attrs["HostConfig"]["PidsLimit"] == 128
    assert broker.attrs["HostConfig"]["Memory"] == 128 * 1024 * 1024
    assert "dockyard.managed" not in broker.labels
    managed = docker_client.containers.list(
        filters={"label": ["dockyard.managed=true", f"dockyard.stack={setup.stack.stack}"]}
    )
    assert sorted(c.labels["dockyard.session"] for c in managed) == ["held", "peer"]
    networks = docker_client.networks.get(f"dockyard-{setup.stack.stack}-held-broker")
    assert networks.attrs["Internal"] is True


def test_destroy_removes_brokers_and_their_networks(
    deploy_own: Callable[..., Deployed],
) -> None:
    stack = deploy_own(
        "brokergone",
        {
            "environments": [
                {"sessionId": "a", "credentials": "brokered", "secrets": ["OPENAI_API_KEY"]}
            ]
        },
        {"OPENAI_API_KEY": REAL["OPENAI_API_KEY"]},
    )
    assert any("broker" in item for item in stack.leftovers())
    stack.destroy()
    assert stack.leftovers() == []
