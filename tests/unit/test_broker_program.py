"""``credentials: brokered`` under mocks: the real program declares a broker per brokered
environment, the environment gets only its token and base URLs at its broker, the real
keys go to the broker alone, and bad settings are refused naming key, value and what is
allowed (docs/isolation.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from dockyard import broker
from dockyard.config import ConfigError, parse
from tests.support.program import ProgramRun, record
from tests.support.secrets import is_secret_wrapped, unwrap

CONTAINER = "docker:index/container:Container"
NETWORK = "docker:index/network:Network"
IMAGE = "docker:index/image:Image"
CANARIES = {
    "ANTHROPIC_API_KEY": "sk-ant-canary-brk-51aa",
    "OPENAI_API_KEY": "sk-openai-canary-brk-9e02",
    "GITHUB_TOKEN": "ghp_canary_brk_77c3",
    "DATABASE_PASSWORD": "db-canary-brk-0d4e",
}
STACK = {
    "broker": {"git": "https://git.example.com:8443"},
    "environments": [
        {
            "sessionId": "held",
            "backend": "codex",
            "credentials": "brokered",
            "secrets": ["ANTHROPIC_API_KEY", "OPENAI_API_KEY", "GITHUB_TOKEN", "DATABASE_PASSWORD"],
            "egress": "allowlist",
            "egressAllow": ["pypi"],
        },
        {"sessionId": "other", "credentials": "brokered", "secrets": ["ANTHROPIC_API_KEY"]},
        {"sessionId": "plain", "secrets": ["ANTHROPIC_API_KEY"]},
    ],
}


@pytest.fixture(scope="module")
def run() -> ProgramRun:
    return record(STACK, CANARIES)


def _uploads(run: ProgramRun, name: str) -> dict[str, dict[str, Any]]:
    return {u["file"]: u for u in unwrap(run.named(name).inputs["uploads"])}


def _envs(run: ProgramRun, name: str) -> dict[str, str]:
    return dict(e.split("=", 1) for e in run.named(name).inputs["envs"])


def test_a_broker_per_brokered_environment_and_none_for_files(run: ProgramRun) -> None:
    brokers = sorted(r.name for r in run.of_type(CONTAINER) if r.name.endswith("-broker-container"))
    assert brokers == ["env-held-broker-container", "env-other-broker-container"]
    # One broker image for the engine, shared.
    images = [r.inputs["imageName"] for r in run.of_type(IMAGE)]
    assert sum(name.startswith("dockyard-broker:") for name in images) == 1
    # The broker is the environment's child, and its resources are the broker's.
    assert any(
        u.endswith("AgentEnvironment$dockyard:index:CredentialBroker::env-held-broker")
        for u in run.urns
    )
    for name in ("net", "uplink", "container"):
        assert any(
            "CredentialBroker$docker:index/" in u and u.endswith(f"::env-held-broker-{name}")
            for u in run.urns
        ), name


def test_the_container_label_says_the_credentials_mode(run: ProgramRun) -> None:
    """Host tools that deliver secrets (the git_credentials role) read the mode from the
    engine, not from anything inside the environment."""
    modes = {
        session: {
            i["label"]: i["value"] for i in run.named(f"env-{session}-container").inputs["labels"]
        }.get("dockyard.credentials")
        for session in ("held", "other", "plain")
    }
    assert modes == {"held": "brokered", "other": "brokered", "plain": "files"}


def test_the_environment_holds_its_token_not_the_keys(run: ProgramRun) -> None:
    uploads = _uploads(run, "env-held-container")
    token = uploads["/run/secrets/ANTHROPIC_API_KEY"]["content"]
    assert token.startswith("dockyard-broker-")
    assert len(token) == len("dockyard-broker-") + 48
    for name in ("ANTHROPIC_API_KEY", "OPENAI_API_KEY", "GITHUB_TOKEN"):
        assert uploads[f"/run/secrets/{name}"]["content"] == token
        assert uploads[f"/run/secrets/{name}"]["owner"] == "1000"
    # A secret the broker does not stand in for stays a file in the environment.
    assert uploads["/run/secrets/DATABASE_PASSWORD"]["content"] == CANARIES["DATABASE_PASSWORD"]
    inputs = json.dumps(run.named("env-held-container").inputs, default=str)
    for name in ("ANTHROPIC_API_KEY", "OPENAI_API_KEY", "GITHUB_TOKEN"):
        assert CANARIES[name] not in inputs, name


def test_the_broker_holds_the_keys_as_its_own_files(run: ProgramRun) -> None:
    container = run.named("env-held-broker-container").inputs
    assert is_secret_wrapped(container["uploads"])
    uploads = _uploads(run, "env-held-broker-container")
    token = _uploads(run, "env-held-container")["/run/secrets/ANTHROPIC_API_KEY"]["content"]
    for name in ("ANTHROPIC_API_KEY", "OPENAI_API_KEY", "GITHUB_TOKEN"):
        assert uploads[f"/run/secrets/{name}"] == {
            "file": f"/run/secrets/{name}",
            "content": CANARIES[name],
            "permissions": "0400",
            "owner": "999",
            "group": "999",
        }
    assert uploads["/run/secrets/DOCKYARD_BROKER_TOKEN"]["content"] == token
    assert "/run/secrets/DATABASE_PASSWORD" not in uploads
    assert container["user"] == "999:999"
    assert container["capabilities"] == {"drops": ["ALL"]}
    assert container["securityOpts"] == ["no-new-privileges:true"]
    assert "ports" not in container or not container["ports"]
    labels = {item["label"]: item["value"] for item in container["labels"]}
    assert labels["dockyard.broker"] == "true"
    assert labels["dockyard.session"] == "held"
    assert "dockyard.managed" not in labels  # not an environment: no quota, health or idle
    pids = run.named("env-held-broker-pids").inputs
    assert "docker update --pids-limit" in pids["create"]
    assert pids["environment"]["DOCKYARD_PIDS_LIMIT"] == str(broker.PIDS_LIMIT)
    envs = _envs(run, "env-held-broker-container")
    assert envs["DOCKYARD_GIT_UPSTREAM"] == "https://git.example.com:8443"
    assert envs["DOCKYARD_ANTHROPIC_UPSTREAM"] == "https://api.anthropic.com"


def test_networks_the_environment_reaches_its_broker_only_inside(run: ProgramRun) -> None:
    internal = run.named("env-held-broker-net").inputs
    uplink = run.named("env-held-broker-uplink").inputs
    assert internal["internal"] is True
    assert internal["name"] == "dockyard-dev-held-broker"
    assert not uplink.get("internal")
    assert uplink["name"] == "dockyard-dev-held-broker-uplink"
    env_networks = [n["name"] for n in run.named("env-held-container").inputs["networksAdvanced"]]
    assert env_networks == ["dockyard-dev-held", "dockyard-dev-held-broker"]
    broker_networks = [
        n["name"] for n in run.named("env-held-broker-container").inputs["networksAdvanced"]
    ]
    assert broker_networks == ["dockyard-dev-held-broker-uplink", "dockyard-dev-held-broker"]
    # The egress allowlist stays on the environment's own network only.
    for name in ("env-held-broker-net", "env-held-broker-uplink"):
        labels = {i["label"]: i["value"] for i in run.named(name).inputs["labels"]}
        assert "dockyard.egress" not in labels
        assert "dockyard.egress.allow" not in labels
    plain = run.named("env-plain-container").inputs["networksAdvanced"]
    assert [n["name"] for n in plain] == ["dockyard-dev-plain"]


def test_base_urls_and_git_rewrite_point_at_the_broker(run: ProgramRun) -> None:
    envs = _envs(run, "env-held-container")
    host = "dockyard-dev-held-broker"
    assert envs["ANTHROPIC_BASE_URL"] == f"http://{host}:8081"
    assert envs["OPENAI_BASE_URL"] == f"http://{host}:8082/v1"
    assert envs["GIT_CONFIG_COUNT"] == "1"
    assert envs["GIT_CONFIG_KEY_0"] == f"url.http://{host}:8083/.insteadOf"
    assert envs["GIT_CONFIG_VALUE_0"] == "https://git.example.com:8443/"
    assert envs["DOCKYARD_GIT_BROKER"] == f"{host}:8083"
    # Only what the environment's broker holds gets a base URL.
    other = _envs(run, "env-other-container")
    assert "ANTHROPIC_BASE_URL" in other
    assert not {"OPENAI_BASE_URL", "GIT_CONFIG_COUNT"} & set(other)
    assert "ANTHROPIC_BASE_URL" not in _envs(run, "env-plain-container")
    assert _envs(run, "env-other-broker-container").keys() == {"DOCKYARD_ANTHROPIC_UPSTREAM"}


def test_tokens_differ_per_environment_and_are_stable(run: ProgramRun) -> None:
    held = _uploads(run, "env-held-container")["/run/secrets/ANTHROPIC_API_KEY"]["content"]
    other = _uploads(run, "env-other-container")["/run/secrets/ANTHROPIC_API_KEY"]["content"]
    assert held != other
    again = record(STACK, CANARIES)
    assert (
        _uploads(again, "env-held-container")["/run/secrets/ANTHROPIC_API_KEY"]["content"] == held
    )
    rotated = record(STACK, {**CANARIES, "ANTHROPIC_API_KEY": "sk-ant-canary-brk-rotated"})
    assert (
        _uploads(rotated, "env-held-container")["/run/secrets/ANTHROPIC_API_KEY"]["content"] != held
    )


def test_no_real_key_outside_the_brokers_uploads(run: ProgramRun) -> None:
    brokered = [CANARIES[n] for n in ("ANTHROPIC_API_KEY", "OPENAI_API_KEY", "GITHUB_TOKEN")]
    leaks = []
    for resource in run.resources:
        for key, value in {**resource.inputs, **resource.outputs}.items():
            if key == "uploads" and resource.name in (
                "env-held-broker-container",
                "env-other-broker-container",
                "env-plain-container",  # files mode: the key is its file
            ):
                continue
            text = json.dumps(value, default=str)
            leaks += [f"{resource.name}.{key}" for c in brokered if c in text]
    leaks += [f"export {c}" for c in brokered if c in json.dumps(run.exports())]
    assert not leaks, leaks


def test_a_ca_file_is_uploaded_and_named(tmp_path: Path) -> None:
    pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    (tmp_path / "ca.pem").write_text(pem)
    stack = {
        "broker": {"caFile": str(tmp_path / "ca.pem")},
        "environments": [
            {"sessionId": "a", "credentials": "brokered", "secrets": ["OPENAI_API_KEY"]}
        ],
    }
    run = record(stack, {"OPENAI_API_KEY": "sk-x"})
    uploads = _uploads(run, "env-a-broker-container")
    assert uploads["/run/secrets/upstream-ca.pem"]["content"] == pem
    assert _envs(run, "env-a-broker-container")["DOCKYARD_UPSTREAM_CA"] == (
        "/run/secrets/upstream-ca.pem"
    )


def test_token_derivation() -> None:
    token = broker.token_for("dockyard-s-a", ["k1", "k2"])
    assert token == broker.token_for("dockyard-s-a", ["k1", "k2"])
    assert token != broker.token_for("dockyard-s-b", ["k1", "k2"])
    assert token != broker.token_for("dockyard-s-a", ["k1", "k3"])
    assert "k1" not in token


def _problems(raw: dict[str, Any], secrets: tuple[str, ...] = ("ANTHROPIC_API_KEY",)) -> str:
    full = {f"dockyard:{k}": v for k, v in raw.items()}
    full.update({f"dockyard:{name}": "x" for name in secrets})
    with pytest.raises(ConfigError) as caught:
        parse(full, stack="s", cwd="/tmp", secret_keys=[f"dockyard:{n}" for n in secrets])
    return str(caught.value)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            {"environments": [{"sessionId": "a", "credentials": "brokerd"}]},
            "dockyard:environments[0].credentials: 'brokerd' is not allowed (allowed: one of "
            "'files' or 'brokered')",
        ),
        (
            {"environments": [{"sessionId": "a", "credentials": "brokered"}]},
            "dockyard:environments[0].credentials: 'brokered' is not allowed (allowed: files, "
            "or brokered with at least one of ANTHROPIC_API_KEY, OPENAI_API_KEY, GITHUB_TOKEN",
        ),
        (
            {
                "environments": [
                    {
                        "sessionId": "a",
                        "credentials": "brokered",
                        "secrets": ["ANTHROPIC_API_KEY"],
                        "env": {"ANTHROPIC_BASE_URL": "http://evil"},
                    }
                ]
            },
            "dockyard:environments[0].env.ANTHROPIC_BASE_URL: this key is not allowed (allowed: "
            "no variable the broker sets",
        ),
        (
            {
                "backend": "kubernetes",
                "environments": [
                    {"sessionId": "a", "credentials": "brokered", "secrets": ["ANTHROPIC_API_KEY"]}
                ],
            },
            "(allowed: files on backend kubernetes",
        ),
        (
            {"broker": {"anthropic": "http://api.anthropic.com"}},
            "dockyard:broker.anthropic: 'http://api.anthropic.com' is not allowed (allowed: an "
            "https:// URL",
        ),
        (
            {"broker": {"openai": "https://api.openai.com/v1"}},
            "dockyard:broker.openai: 'https://api.openai.com/v1' is not allowed",
        ),
        (
            {"broker": {"git": "https://github.com:0"}},
            "dockyard:broker.git: 'https://github.com:0'",
        ),
        ({"broker": {"caFile": "/nonexistent/ca.pem"}}, "dockyard:broker.caFile: '/nonexistent"),
        ({"broker": {"caFile": "/etc/hostname"}}, "no BEGIN CERTIFICATE block"),
        ({"broker": {"anthropicUrl": "https://x.example"}}, "dockyard:broker.anthropicUrl"),
    ],
)
def test_bad_settings_are_refused_naming_key_value_and_what_is_allowed(
    raw: dict[str, Any], expected: str
) -> None:
    assert expected in _problems(raw)


def test_a_key_pasted_into_credentials_is_never_shown() -> None:
    text = _problems({"environments": [{"sessionId": "a", "credentials": "sk-ant-api03-SECRET"}]})
    assert "SECRET" not in text
    assert "credentials" in text
    text = _problems({"broker": {"git": "https://user:hunter2@github.com"}})
    assert "hunter2" not in text
    assert "dockyard:broker.git" in text
