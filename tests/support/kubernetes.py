"""The Kubernetes backend under mocks: the stacks the tests realise, and what the program
declared turned back into the objects the API server would receive.

Inputs reach the mocks as Pulumi serialised them (camelCase, integers as floats, secrets
wrapped): :func:`as_object` undoes exactly that, nothing else, so a schema that refuses
the object refuses what pulumi-kubernetes would send.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import cache
from typing import Any

from tests.support.program import REPO, ProgramRun, Registered, record
from tests.support.secrets import unwrap

STATEFULSET = "kubernetes:apps/v1:StatefulSet"
SANDBOX = "kubernetes:agents.x-k8s.io/v1beta1:Sandbox"
SANDBOX_TEMPLATE = "kubernetes:extensions.agents.x-k8s.io/v1beta1:SandboxTemplate"
WARM_POOL = "kubernetes:extensions.agents.x-k8s.io/v1beta1:SandboxWarmPool"
CILIUM_POLICY = "kubernetes:cilium.io/v2:CiliumNetworkPolicy"
PROVIDER = "pulumi:providers:kubernetes"
IMAGE = "ghcr.io/acme/dockyard-core:1.4"

CANARIES = {
    "ANTHROPIC_API_KEY": "sk-ant-canary-k8s-5e1d",
    "GITHUB_TOKEN": "ghp_canary_k8s_77aa",
    "OPENAI_API_KEY": "sk-openai-canary-k8s-0c3b",
}

# Two sessions on Cilium with node ports: everything a session can ask for, and a session
# id that is not an RFC 1123 name.
FULL: dict[str, Any] = {
    "backend": "kubernetes",
    "image": {"ref": IMAGE},
    "kubernetes": {
        "namespace": "agents",
        "context": "kind-dockyard",
        "serviceType": "NodePort",
        "networkPolicy": "cilium",
        "storageClass": "fast-ssd",
        "storage": {"workspace": "20g", "config": 512, "checkpoints": "4g"},
    },
    "healthcheck": {
        "interval": "30s",
        "timeout": "5s",
        "retries": 4,
        "startPeriod": "1m",
        "startInterval": "2s",
    },
    "environments": [
        {
            "sessionId": "alpha",
            "backend": "codex",
            "ports": [3000, 5173],
            "volumes": ["cache:/home/agent/.cache", "cache:/srv/cache:ro", "Data_Set:/data:ro"],
            "env": {"NODE_ENV": "development", "RETRIES": 3},
            "secrets": ["ANTHROPIC_API_KEY", "GITHUB_TOKEN"],
            "limits": {"cpus": 2.5, "memory": "6g", "pids": 500},
            "labels": {"team": "platform", "owner": "Alice Smith"},
            "runtime": "runsc",
            "egress": "allowlist",
            "egressAllow": ["anthropic", "pypi.org", "10.20.0.0/16:5432", "192.0.2.7"],
        },
        {"sessionId": "Beta.Session_", "tenant": "acme"},
    ],
}

# agent-sandbox output on a plain NetworkPolicy cluster with ClusterIP Services.
SANDBOXED: dict[str, Any] = {
    "backend": "kubernetes",
    "image": {"ref": IMAGE},
    "kubernetes": {"agentSandbox": True, "runtimeClasses": {"runsc": "gvisor", "runc": "runc"}},
    "profile": "large",
    "environments": [
        {
            "sessionId": "sbx",
            "ports": [8080],
            "secrets": ["OPENAI_API_KEY"],
            "egress": "allowlist",
            "egressAllow": ["10.0.0.0/8:443"],
        },
        {"sessionId": "quiet", "egress": "allowlist"},
    ],
}

GPU: dict[str, Any] = {
    "backend": "kubernetes",
    "gpuImage": {"ref": "ghcr.io/acme/dockyard-gpu:1.4"},
    "profile": "gpu",
    "environments": [{"sessionId": "trainer", "gpu": [0, 1]}, {"sessionId": "any", "gpu": "all"}],
}

STACKS = {"full": FULL, "sandboxed": SANDBOXED, "gpu": GPU}
STACK_FILE = REPO / "stacks" / "Pulumi.k8s.yaml"


@cache
def realised(name: str) -> ProgramRun:
    """The program run of one of :data:`STACKS` (or ``"file"``: stacks/Pulumi.k8s.yaml)."""
    if name == "file":
        from dockyard.config import from_stack_file

        raw, _ = from_stack_file(str(STACK_FILE))
        values = {key.split(":", 1)[1]: value for key, value in raw.items()}
        return record(values, CANARIES, stack="k8s")
    return record(STACKS[name], CANARIES)


def as_object(value: Any) -> Any:
    """Mock inputs as the JSON object the API server gets."""
    value = unwrap(value)
    if isinstance(value, dict):
        return {key: as_object(item) for key, item in value.items()}
    if isinstance(value, list):
        return [as_object(item) for item in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def objects_of(run: ProgramRun) -> list[tuple[Registered, dict[str, Any]]]:
    """Every Kubernetes object the run declared (not the provider), as sent."""
    return [
        (resource, as_object(resource.inputs))
        for resource in run.resources
        if resource.type.startswith("kubernetes:")
    ]


def pod_specs(obj: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, Pod spec) of every Pod an object makes."""
    kind = obj["kind"]
    if kind == "StatefulSet":
        yield "spec.template.spec", obj["spec"]["template"]["spec"]
    elif kind in ("Sandbox", "SandboxTemplate"):
        yield "spec.podTemplate.spec", obj["spec"]["podTemplate"]["spec"]
