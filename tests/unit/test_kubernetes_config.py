"""``backend: kubernetes`` gets the same validation as Docker: every hostile config of the
corpus (tests/unit/test_config_corpus.py) is refused with the same problems, at the same
keys. The one difference is deliberate: a host path is refused on Kubernetes for being a
host path at all, before the Docker backend's rules about which host paths."""

from __future__ import annotations

from typing import Any

import pytest

from dockyard.config import ConfigError
from tests.unit.test_config_corpus import BAD, CANARY, PYTHON_WORDING, VALID, _parse

KUBERNETES = {"dockyard:backend": "kubernetes"}
HOST_PATH_REFUSALS = (
    "a named volume (a PersistentVolumeClaim): backend kubernetes has no host paths",
    "nothing on backend kubernetes: the workspace is a PersistentVolumeClaim",
    # Not a host path, but as Docker-only: the credential broker.
    "files on backend kubernetes (the broker is for Docker environments)",
)


def _problems(raw: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        _parse(raw)
    assert CANARY not in str(info.value)
    return info.value.problems


@pytest.mark.parametrize(
    ("raw", "expected"), [c[2:] for c in BAD], ids=[f"{c[0]}: {c[1]}" for c in BAD]
)
def test_the_bad_config_corpus_fails_the_same_way(
    raw: dict[str, Any], expected: list[tuple[str, str]]
) -> None:
    on_docker = _problems(raw)
    on_kubernetes = _problems({**KUBERNETES, **raw})
    keys = [line.split(": ", 1)[0] for line in on_kubernetes]
    assert keys == [line.split(": ", 1)[0] for line in on_docker]
    for docker_line, line in zip(on_docker, on_kubernetes, strict=True):
        assert line == docker_line or line.endswith(
            tuple(f"(allowed: {why})" for why in HOST_PATH_REFUSALS)
        ), (docker_line, line)
        assert line.startswith("dockyard:"), line
        assert "(allowed: " in line, line
        assert not PYTHON_WORDING.search(line), line
        assert line.isprintable(), line
    for key, fragment in expected:
        lines = [p for p in on_kubernetes if p.startswith(key + ": ")]
        assert lines, f"no problem at {key}: {on_kubernetes}"
        host_path = any(why in line for line in lines for why in HOST_PATH_REFUSALS)
        assert host_path or any(fragment in line for line in lines), (key, fragment, lines)


def test_host_paths_are_the_only_difference() -> None:
    differing = []
    for case in BAD:
        if _problems(case[2]) != _problems({**KUBERNETES, **case[2]}):
            differing.append(case[1])
    # Bind sources, workspaceHostPath and the (Docker-only) credential broker in the
    # corpus; nothing else may change.
    assert differing == [
        "//-prefixed engine socket",
        "///-prefixed engine state below",
        "workspaceHostPath //var/lib/docker",
        "sibling of cwd sharing its prefix",
        "bind root that contains the socket still refuses it",
        "binding / contains the engine state",
        "brokered without any key to hold",
    ]


# Documented values that name a host path or a Docker engine: refused on Kubernetes by design.
DOCKER_ONLY = {
    "volumes below reserved paths",  # binds CWD/ref
    "ssh docker host with port",
    "tcp docker host IPv6",
    "unix docker host",
}
ON_KUBERNETES = [case for case in VALID if case[0] not in DOCKER_ONLY]


def test_docker_only_values_are_in_the_corpus() -> None:
    assert {name for name, _ in VALID} >= DOCKER_ONLY


@pytest.mark.parametrize("raw", [c[1] for c in ON_KUBERNETES], ids=[c[0] for c in ON_KUBERNETES])
def test_documented_values_are_accepted_on_kubernetes_too(raw: dict[str, Any]) -> None:
    # Domain egress entries need Cilium's FQDN policy on Kubernetes.
    _parse({**KUBERNETES, "dockyard:kubernetes": {"networkPolicy": "cilium"}, **raw})


KUBERNETES_ONLY = [
    (
        "dockerHost",
        {"dockyard:dockerHost": "ssh://agent@host"},
        "dockyard:dockerHost",
        "nothing with backend kubernetes",
    ),
    (
        "domain egress without cilium",
        {
            "dockyard:environments": [
                {"sessionId": "a", "egress": "allowlist", "egressAllow": ["x.io"]}
            ]
        },
        "dockyard:environments[0].egressAllow[0]",
        "kubernetes.networkPolicy: cilium",
    ),
    (
        "namespace not a DNS label",
        {"dockyard:kubernetes": {"namespace": "Agents_1"}},
        "dockyard:kubernetes.namespace",
        "a Kubernetes name",
    ),
    (
        "unknown service type",
        {"dockyard:kubernetes": {"serviceType": "ExternalName"}},
        "dockyard:kubernetes.serviceType",
        "ClusterIP",
    ),
    (
        "runtime class not a DNS label",
        {"dockyard:kubernetes": {"runtimeClasses": {"runsc": "gVisor"}}},
        "dockyard:kubernetes.runtimeClasses.runsc",
        "a Kubernetes name",
    ),
]


@pytest.mark.parametrize(
    ("raw", "key", "fragment"),
    [c[1:] for c in KUBERNETES_ONLY],
    ids=[c[0] for c in KUBERNETES_ONLY],
)
def test_what_only_kubernetes_refuses(raw: dict[str, Any], key: str, fragment: str) -> None:
    lines = [p for p in _problems({**KUBERNETES, **raw}) if p.startswith(key + ": ")]
    assert any(fragment in line for line in lines), lines
