"""``backend: kubernetes`` under Pulumi mocks: the objects per session, their wiring, the
secrets, the policies and the v1 manifest (docs/kubernetes.md)."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pulumi
import pytest

from dockyard import kubernetes_objects as objects
from dockyard import manifest as manifest_contract
from dockyard import modal_plan
from dockyard.config import Healthcheck, ResolvedLimits
from dockyard.manifest_file import MANIFEST_DELETE
from tests.support.kubernetes import (
    CANARIES,
    CILIUM_POLICY,
    IMAGE,
    PROVIDER,
    SANDBOX,
    SANDBOX_TEMPLATE,
    STATEFULSET,
    WARM_POOL,
    as_object,
    objects_of,
    pod_specs,
    realised,
)
from tests.support.program import REPO, ProgramRun, RecordingMocks, run_program
from tests.support.secrets import is_secret_wrapped

PVC = "kubernetes:core/v1:PersistentVolumeClaim"
SECRET = "kubernetes:core/v1:Secret"
SERVICE = "kubernetes:core/v1:Service"
NETWORK_POLICY = "kubernetes:networking.k8s.io/v1:NetworkPolicy"
COMMAND = "command:local:Command"
ALPHA = "dockyard-dev-alpha"


@pytest.fixture(scope="module")
def full() -> ProgramRun:
    return realised("full")


@pytest.fixture(scope="module")
def sandboxed() -> ProgramRun:
    return realised("sandboxed")


def obj(run: ProgramRun, name: str) -> dict[str, Any]:
    return as_object(run.named(name).inputs)


def children(run: ProgramRun, session: str) -> list[str]:
    return [u for u in run.urns if f"::env-{session}-" in u]


def kinds(run: ProgramRun, session: str) -> list[str]:
    return sorted(u.split("$")[-1].split("::")[0] for u in children(run, session))


# --- What a session gets -------------------------------------------------------------------


def test_objects_per_session_are_parented_to_their_component(full: ProgramRun) -> None:
    assert kinds(full, "alpha") == sorted(
        [
            *[PVC] * 5,  # workspace, config, checkpoints; "cache" (mounted twice), "Data_Set"
            SECRET,
            STATEFULSET,
            SERVICE,
            *[NETWORK_POLICY] * 3,  # deny, ingress, egress (addresses)
            CILIUM_POLICY,  # the domains
            COMMAND,  # the manifest writer
        ]
    )
    # No ports, no secrets, egress open: no Service, Secret, ingress or Cilium policy.
    assert kinds(full, "Beta.Session_") == sorted(
        [*[PVC] * 3, STATEFULSET, NETWORK_POLICY, NETWORK_POLICY, COMMAND]
    )
    for session in ("alpha", "Beta.Session_"):
        assert all("dockyard:index:KubernetesEnvironment$" in u for u in children(full, session))
    # One provider, on the configured context, for every Kubernetes object.
    (provider,) = full.of_type(PROVIDER)
    assert provider.inputs["context"] == "kind-dockyard"
    assert provider.inputs["namespace"] == "agents"
    assert full.of_type("docker:index/container:Container") == []
    assert full.of_type("docker:index/image:Image") == []


def test_names_are_rfc1123_and_the_originals_stay_in_annotations(full: ProgramRun) -> None:
    beta = obj(full, "env-Beta.Session_-statefulset")
    name = beta["metadata"]["name"]
    assert re.fullmatch(r"dockyard-dev-beta-session-[0-9a-f]{6}", name), name
    assert beta["metadata"]["annotations"]["dockyard.session"] == "Beta.Session_"
    label = beta["metadata"]["labels"]["dockyard.session"]
    assert label != "Beta.Session_"
    assert objects.LABEL_VALUE.fullmatch(label)
    # An id that is already a name keeps it, without a hash.
    assert obj(full, "env-alpha-statefulset")["metadata"]["name"] == ALPHA
    for resource, body in objects_of(full):
        meta = body["metadata"]
        assert objects.DNS_LABEL.fullmatch(meta["name"]), resource.name
        assert meta["namespace"] == "agents", resource.name
        for key, value in meta["labels"].items():
            assert objects.is_qualified_name(key), (resource.name, key)
            assert objects.LABEL_VALUE.fullmatch(value), (resource.name, key, value)
        for key in meta.get("annotations", {}):
            assert objects.is_qualified_name(key), (resource.name, key)


def test_labels_are_the_docker_backends_plus_valid_user_labels(full: ProgramRun) -> None:
    meta = obj(full, "env-alpha-statefulset")["metadata"]
    assert meta["labels"] == {
        "team": "platform",  # "owner: Alice Smith" is no label value: annotation only
        "dockyard.environment": ALPHA,
        "dockyard.session": "alpha",
        "dockyard.stack": "dev",
        "dockyard.backend": "codex",
        "dockyard.managed": "true",
        "dockyard.egress": "allowlist",
    }
    assert json.loads(meta["annotations"]["dockyard.labels"]) == {
        "owner": "Alice Smith",
        "team": "platform",
    }
    assert obj(full, "env-Beta.Session_-statefulset")["metadata"]["labels"]["dockyard.tenant"] == (
        "acme"
    )


def test_statefulset_of_one_selects_its_own_pod(full: ProgramRun) -> None:
    spec = obj(full, "env-alpha-statefulset")["spec"]
    assert spec["replicas"] == 1
    assert spec["serviceName"] == ALPHA
    selector = spec["selector"]["matchLabels"]
    assert selector == {"dockyard.environment": ALPHA}
    assert selector.items() <= spec["template"]["metadata"]["labels"].items()
    other = obj(full, "env-Beta.Session_-statefulset")["spec"]["selector"]["matchLabels"]
    assert other != selector


def test_claims_for_the_r_env_8_tree_and_declared_volumes(full: ProgramRun) -> None:
    claims = {
        body["metadata"]["name"]: body
        for resource, body in objects_of(full)
        if resource.type == PVC and "env-alpha-" in resource.name
    }
    sizes = {
        name: body["spec"]["resources"]["requests"]["storage"] for name, body in claims.items()
    }
    assert sizes == {
        f"{ALPHA}-workspace": "20480Mi",
        f"{ALPHA}-config": "512Mi",
        f"{ALPHA}-checkpoints": "4096Mi",
        f"{ALPHA}-vol-cache": "20480Mi",
        next(n for n in claims if n.startswith(f"{ALPHA}-vol-data-set-")): "20480Mi",
    }
    for body in claims.values():
        assert body["spec"]["accessModes"] == ["ReadWriteOnce"]
        assert body["spec"]["storageClassName"] == "fast-ssd"
    pod = obj(full, "env-alpha-statefulset")["spec"]["template"]["spec"]
    (agent,) = pod["containers"]
    mounts = {m["mountPath"]: m for m in agent["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    for role in ("workspace", "config", "checkpoints"):
        assert volumes[mounts[f"/{role}"]["name"]]["persistentVolumeClaim"] == {
            "claimName": f"{ALPHA}-{role}"
        }
    # One claim for the volume mounted twice; the mode of each mount as declared.
    assert mounts["/home/agent/.cache"]["name"] == mounts["/srv/cache"]["name"]
    assert (mounts["/home/agent/.cache"]["readOnly"], mounts["/srv/cache"]["readOnly"]) == (
        False,
        True,
    )
    assert mounts["/data"]["readOnly"] is True


def test_every_reference_resolves_inside_the_stack(full: ProgramRun, sandboxed: ProgramRun) -> None:
    for run in (full, sandboxed):
        declared = {(body["kind"], body["metadata"]["name"]) for _, body in objects_of(run)}
        for resource, body in objects_of(run):
            for where, pod in pod_specs(body):
                names = {v["name"] for v in pod["volumes"]}
                if body["kind"] == "SandboxTemplate":
                    names |= {t["metadata"]["name"] for t in body["spec"]["volumeClaimTemplates"]}
                for mount in pod["containers"][0]["volumeMounts"]:
                    assert mount["name"] in names, (resource.name, where, mount)
                for volume in pod["volumes"]:
                    if "persistentVolumeClaim" in volume:
                        claim = volume["persistentVolumeClaim"]["claimName"]
                        assert ("PersistentVolumeClaim", claim) in declared, (resource.name, claim)
                    if "secret" in volume:
                        secret = volume["secret"]["secretName"]
                        assert ("Secret", secret) in declared, (resource.name, secret)


def test_secrets_are_files_mode_0400_never_environment(full: ProgramRun) -> None:
    secret = full.named("env-alpha-secrets").inputs
    assert is_secret_wrapped(secret["stringData"]), "stringData must be a Pulumi secret"
    body = as_object(secret)
    assert body["stringData"] == {
        "ANTHROPIC_API_KEY": CANARIES["ANTHROPIC_API_KEY"],
        "GITHUB_TOKEN": CANARIES["GITHUB_TOKEN"],
    }
    assert body["type"] == "Opaque"
    pod = obj(full, "env-alpha-statefulset")["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if "secret" in v)
    assert volume["secret"] == {"secretName": f"{ALPHA}-secrets", "defaultMode": 0o400}
    (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == volume["name"]]
    assert (mount["mountPath"], mount["readOnly"]) == ("/run/secrets", True)
    env_names = [item["name"] for item in pod["containers"][0]["env"]]
    assert env_names == ["DOCKYARD_BACKEND", "DOCKYARD_SESSION_ID", "NODE_ENV", "RETRIES"]
    assert not any("valueFrom" in item for item in pod["containers"][0]["env"])
    # A changed Secret rolls the Pod: its revision is in the Pod template.
    annotations = obj(full, "env-alpha-statefulset")["spec"]["template"]["metadata"]["annotations"]
    assert (
        annotations["dockyard.secrets-revision"]
        == (full.named("env-alpha-secrets").outputs["metadata"]["resourceVersion"])
    )


def test_no_secret_value_outside_the_secret(full: ProgramRun, sandboxed: ProgramRun) -> None:
    leaks = []
    for run in (full, sandboxed):
        for resource in run.resources:
            if resource.type == SECRET:
                continue
            text = json.dumps([resource.inputs, resource.outputs], default=str)
            leaks += [resource.name for canary in CANARIES.values() if canary in text]
        exported = json.dumps(run.exports())
        leaks += [f"export {c}" for c in CANARIES.values() if c in exported]
    assert leaks == []


def test_container_environment_and_restart_budget(full: ProgramRun) -> None:
    pod = obj(full, "env-alpha-statefulset")["spec"]["template"]["spec"]
    (agent,) = pod["containers"]
    assert agent["image"] == IMAGE
    assert agent["workingDir"] == "/workspace"
    assert agent["env"][:2] == [
        {"name": "DOCKYARD_BACKEND", "value": "codex"},
        {"name": "DOCKYARD_SESSION_ID", "value": "alpha"},
    ]
    assert pod["terminationGracePeriodSeconds"] == 10  # the checkpoint's budget, as on Docker
    assert pod["automountServiceAccountToken"] is False
    assert pod["enableServiceLinks"] is False


def test_resources_from_the_profile_and_limits(full: ProgramRun) -> None:
    agent = obj(full, "env-alpha-statefulset")["spec"]["template"]["spec"]["containers"][0]
    assert agent["resources"] == {
        "requests": {"cpu": "2500m", "memory": "6144Mi"},
        "limits": {"cpu": "2500m", "memory": "6144Mi"},
    }
    beta = obj(full, "env-Beta.Session_-statefulset")["spec"]["template"]
    assert beta["spec"]["containers"][0]["resources"]["limits"] == {"cpu": "4", "memory": "8192Mi"}
    # What a Pod spec cannot hold is recorded where operators see it.
    limits = json.loads(
        obj(full, "env-alpha-statefulset")["spec"]["template"]["metadata"]["annotations"][
            "dockyard.limits"
        ]
    )
    assert (limits["pids"], limits["nofileSoft"], limits["nofileHard"]) == (500, 1024, 2048)


def test_gpus_by_count() -> None:
    run = realised("gpu")
    trainer = obj(run, "env-trainer-statefulset")["spec"]["template"]["spec"]["containers"][0]
    assert trainer["image"] == "ghcr.io/acme/dockyard-gpu:1.4"
    assert trainer["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert trainer["resources"]["requests"]["nvidia.com/gpu"] == "2"
    anyone = obj(run, "env-any-statefulset")["spec"]["template"]["spec"]["containers"][0]
    assert anyone["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_runtime_class_when_the_runtime_maps_to_one(
    full: ProgramRun, sandboxed: ProgramRun
) -> None:
    alpha = obj(full, "env-alpha-statefulset")["spec"]["template"]["spec"]
    assert alpha["runtimeClassName"] == "gvisor"
    beta = obj(full, "env-Beta.Session_-statefulset")["spec"]["template"]["spec"]
    assert "runtimeClassName" not in beta  # runc: the cluster's default runtime
    quiet = obj(sandboxed, "env-quiet-sandbox")["spec"]["podTemplate"]["spec"]
    assert quiet["runtimeClassName"] == "runc"  # runc mapped explicitly in that stack


def test_probes_follow_the_health_check(full: ProgramRun) -> None:
    agent = obj(full, "env-alpha-statefulset")["spec"]["template"]["spec"]["containers"][0]
    health = {"exec": {"command": ["/usr/local/bin/dockyard-healthcheck"]}, "timeoutSeconds": 5}
    # startInterval 2s, startPeriod 1m: 30 start probes, then the 4 retries.
    assert agent["startupProbe"] == {**health, "periodSeconds": 2, "failureThreshold": 34}
    assert agent["livenessProbe"] == {**health, "periodSeconds": 30, "failureThreshold": 4}
    assert agent["readinessProbe"] == {
        "exec": {"command": ["/usr/bin/test", "-e", "/tmp/ready"]},
        "timeoutSeconds": 5,
        "periodSeconds": 2,
        "failureThreshold": 4,
    }


@pytest.mark.parametrize(
    ("healthcheck", "startup", "liveness"),
    [
        ({}, (60, 1 + 3), (60, 3)),  # defaults: 30s start period within one 60s interval
        ({"interval": "500ms", "timeout": "1ms"}, (1, 30 + 3), (1, 3)),  # whole seconds, >= 1
        ({"startPeriod": "10m", "startInterval": "5s", "retries": 1}, (5, 120 + 1), (60, 1)),
    ],
)
def test_probe_arithmetic(
    healthcheck: dict[str, Any], startup: tuple[int, int], liveness: tuple[int, int]
) -> None:
    probes = objects.probes(Healthcheck.model_validate(healthcheck))
    assert (
        probes["startupProbe"]["periodSeconds"],
        probes["startupProbe"]["failureThreshold"],
    ) == startup
    assert (
        probes["livenessProbe"]["periodSeconds"],
        probes["livenessProbe"]["failureThreshold"],
    ) == liveness
    assert probes["livenessProbe"]["timeoutSeconds"] >= 1


def test_quantities() -> None:
    assert [objects.cpu_quantity(c) for c in (4, 2.5, 0.01, 1.999)] == [
        "4",
        "2500m",
        "10m",
        "1999m",
    ]
    assert objects.memory_quantity(ResolvedLimits().memory) == "8192Mi"


# --- Ports -------------------------------------------------------------------------------------


def test_service_exposes_the_requested_ports(full: ProgramRun) -> None:
    service = obj(full, "env-alpha-service")
    assert service["metadata"]["name"] == ALPHA
    assert service["spec"]["type"] == "NodePort"
    assert service["spec"]["selector"] == {"dockyard.environment": ALPHA}
    assert service["spec"]["ports"] == [
        {"name": "tcp-3000", "port": 3000, "targetPort": 3000, "protocol": "TCP"},
        {"name": "tcp-5173", "port": 5173, "targetPort": 5173, "protocol": "TCP"},
    ]
    assert "nodePort" not in json.dumps(service)  # the API server's choice
    container_ports = obj(full, "env-alpha-statefulset")["spec"]["template"]["spec"]["containers"]
    assert [p["containerPort"] for p in container_ports[0]["ports"]] == [3000, 5173]


def test_manifest_ports_are_what_the_service_resolved(
    full: ProgramRun, sandboxed: ProgramRun
) -> None:
    node_ports = {
        p["port"]: p["nodePort"] for p in full.named("env-alpha-service").outputs["spec"]["ports"]
    }
    assert full.exports()["alpha"]["container"]["portMappings"] == [
        {"containerPort": 3000, "hostPort": int(node_ports[3000.0])},
        {"containerPort": 5173, "hostPort": int(node_ports[5173.0])},
    ]
    assert full.exports()["Beta.Session_"]["container"]["portMappings"] == []
    # ClusterIP: the Service's port, reached in the cluster or through a port-forward.
    assert sandboxed.exports()["sbx"]["container"]["portMappings"] == [
        {"containerPort": 8080, "hostPort": 8080}
    ]


# --- Network policies ---------------------------------------------------------------------------


def test_default_deny_both_ways_for_every_session(full: ProgramRun, sandboxed: ProgramRun) -> None:
    for run in (full, sandboxed):
        workloads = [b for _, b in objects_of(run) if b["kind"] in ("StatefulSet", "Sandbox")]
        denies = {
            b["metadata"]["name"]: b["spec"]
            for _, b in objects_of(run)
            if b["kind"] == "NetworkPolicy" and b["metadata"]["name"].endswith("-deny")
        }
        assert len(denies) == len(workloads)
        for workload in workloads:
            name = workload["metadata"]["name"]
            assert denies[f"{name}-deny"] == {
                "podSelector": {"matchLabels": {"dockyard.environment": name}},
                "policyTypes": ["Ingress", "Egress"],
            }


def test_ingress_only_to_the_requested_ports(full: ProgramRun) -> None:
    spec = obj(full, "env-alpha-ingress")["spec"]
    assert spec["policyTypes"] == ["Ingress"]
    assert spec["ingress"] == [
        {"ports": [{"port": 3000, "protocol": "TCP"}, {"port": 5173, "protocol": "TCP"}]}
    ]


def test_egress_allowlist_addresses_as_network_policy(full: ProgramRun) -> None:
    spec = obj(full, "env-alpha-egress")["spec"]
    assert spec["policyTypes"] == ["Egress"]
    assert spec["egress"] == [
        {
            "to": [{"ipBlock": {"cidr": "10.20.0.0/16"}}],
            "ports": [{"port": 5432, "protocol": "TCP"}, {"port": 5432, "protocol": "UDP"}],
        },
        {"to": [{"ipBlock": {"cidr": "192.0.2.7/32"}}]},
    ]
    assert "53" not in json.dumps(spec)  # DNS is Cilium's job here, for the allowed names only
    # egress: open is an explicit allow-all next to the default deny.
    assert obj(full, "env-Beta.Session_-egress")["spec"]["egress"] == [{}]


def test_egress_allowlist_domains_as_cilium_fqdn_rules(full: ProgramRun) -> None:
    body = obj(full, "env-alpha-fqdn")
    assert body["apiVersion"] == "cilium.io/v2"
    assert body["spec"]["endpointSelector"] == {"matchLabels": {"dockyard.environment": ALPHA}}
    dns, *allowed = body["spec"]["egress"]
    assert dns["toEndpoints"] == [
        {
            "matchLabels": {
                "k8s:io.kubernetes.pod.namespace": "kube-system",
                "k8s:k8s-app": "kube-dns",
            }
        }
    ]
    (dns_ports,) = dns["toPorts"]
    assert dns_ports["ports"] == [{"port": "53", "protocol": "ANY"}]
    names = {rule.get("matchName") for rule in dns_ports["rules"]["dns"]} - {None}
    assert names == {
        "api.anthropic.com",
        "statsig.anthropic.com",
        "console.anthropic.com",
        "claude.ai",
        "pypi.org",
    }
    by_port = {
        (rule.get("toPorts") or [{"ports": [{"port": "any"}]}])[0]["ports"][0]["port"]: rule[
            "toFQDNs"
        ]
        for rule in allowed
    }
    assert set(by_port) == {"443", "any"}
    assert {"matchName": "claude.ai"} in by_port["443"]
    assert {"matchPattern": "**.claude.ai"} in by_port["443"]
    assert by_port["any"] == [{"matchName": "pypi.org"}, {"matchPattern": "**.pypi.org"}]
    assert "10.20.0.0" not in json.dumps(body)  # addresses stay in the NetworkPolicy


def test_allowlist_without_entries_has_no_allow_policy(sandboxed: ProgramRun) -> None:
    names = [r.name for r in sandboxed.resources if r.name.startswith("env-quiet-")]
    assert "env-quiet-deny" in names
    assert "env-quiet-egress" not in names
    assert sandboxed.of_type(CILIUM_POLICY) == []


def test_domains_need_cilium() -> None:
    rules = ["10.0.0.0/8:443", "example.com:443"]
    with pytest.raises(ValueError, match="need network_policy 'cilium'"):
        objects.cilium_egress(rules, "standard")
    assert objects.cilium_egress(rules[:1], "standard") is None
    assert objects.cilium_egress(rules, "cilium") is not None
    # The config says so first, before anything is registered.
    run = ProgramRun()
    with pytest.raises(pulumi.RunError, match=r"environments\[0\]\.egressAllow\[0\].*cilium"):
        run_program(
            RecordingMocks(run),
            {
                "backend": "kubernetes",
                "image": {"ref": IMAGE},
                "environments": [
                    {"sessionId": "a", "egress": "allowlist", "egressAllow": ["example.com"]}
                ],
            },
            recorder=run,
        )
    assert run.resources == []


# --- agent-sandbox -------------------------------------------------------------------------------


def test_agent_sandbox_replaces_the_statefulset(sandboxed: ProgramRun) -> None:
    assert sandboxed.of_type(STATEFULSET) == []
    sandboxes = {r.name: as_object(r.inputs) for r in sandboxed.of_type(SANDBOX)}
    assert set(sandboxes) == {"env-sbx-sandbox", "env-quiet-sandbox"}
    sbx = sandboxes["env-sbx-sandbox"]
    assert sbx["apiVersion"] == "agents.x-k8s.io/v1beta1"
    assert sbx["spec"]["service"] is False  # our Service has its name and the ports
    template = sbx["spec"]["podTemplate"]
    assert template["metadata"]["labels"]["dockyard.environment"] == "dockyard-dev-sbx"
    assert "volumeClaimTemplates" not in sbx["spec"]  # the claims are Pulumi's, as above
    agent = template["spec"]["containers"][0]
    assert agent["resources"]["limits"] == {"cpu": "4", "memory": "16384Mi"}  # profile large
    manifest = sandboxed.exports()["sbx"]
    assert manifest["container"]["name"] == "dockyard-dev-sbx"  # the Pod is named after it
    assert manifest["environmentId"] == "dockyard-dev-sbx"


def test_agent_sandbox_template_and_warm_pool_once_per_stack(sandboxed: ProgramRun) -> None:
    (template_resource,) = sandboxed.of_type(SANDBOX_TEMPLATE)
    (pool_resource,) = sandboxed.of_type(WARM_POOL)
    assert "dockyard:index:AgentSandboxPool" in next(
        u for u in sandboxed.urns if u.endswith("::sandbox-pool-template")
    )
    template = as_object(template_resource.inputs)
    pool = as_object(pool_resource.inputs)
    assert template["metadata"]["name"] == "dockyard-dev-pool"
    assert pool["spec"] == {"sandboxTemplateRef": {"name": "dockyard-dev-pool"}}
    spec = template["spec"]
    assert [t["metadata"]["name"] for t in spec["volumeClaimTemplates"]] == [
        "workspace",
        "config",
        "checkpoints",
    ]
    pod = spec["podTemplate"]["spec"]
    assert pod["volumes"] == []  # the claim templates add them, one set per Sandbox
    assert [m["mountPath"] for m in pod["containers"][0]["volumeMounts"]] == [
        "/workspace",
        "/config",
        "/checkpoints",
    ]
    env = {item["name"] for item in pod["containers"][0]["env"]}
    assert env == {"DOCKYARD_BACKEND"}  # no session of its own, no secret
    assert spec["networkPolicyManagement"] == "Managed"


def test_no_pool_without_agent_sandbox(full: ProgramRun) -> None:
    assert full.of_type(SANDBOX) == full.of_type(SANDBOX_TEMPLATE) == full.of_type(WARM_POOL) == []


# --- The manifest -------------------------------------------------------------------------------


def test_manifest_v1_from_the_api_servers_answers(full: ProgramRun) -> None:
    manifests = full.exports()
    alpha = manifests["alpha"]
    manifest_contract.check_written(alpha)
    statefulset = full.named("env-alpha-statefulset")
    uid = statefulset.outputs["metadata"]["uid"]
    assert alpha["container"] == {
        "id": hashlib.sha256(uid.encode()).hexdigest(),
        "name": f"{ALPHA}-0",
        "cwd": "/workspace",
        "portMappings": alpha["container"]["portMappings"],
    }
    assert alpha["environmentId"] == f"{ALPHA}-0"
    assert alpha["createdAt"] == "2026-11-22T10:00:00.000Z"  # the StatefulSet's creation
    assert alpha["image"] == IMAGE
    assert alpha["backend"] == "codex"
    assert alpha["requested"] == {
        "ports": [3000, 5173],
        "volumes": ["cache:/home/agent/.cache", "cache:/srv/cache:ro", "Data_Set:/data:ro"],
        "env": ["NODE_ENV", "RETRIES", "ANTHROPIC_API_KEY", "GITHUB_TOKEN"],
    }
    ids = {m["container"]["id"] for m in manifests.values()}
    assert len(ids) == len(manifests)


def test_manifest_is_written_by_the_same_command(full: ProgramRun) -> None:
    command = full.named("env-alpha-manifest").inputs
    assert command["create"].endswith("-m dockyard.manifest write")
    assert command["delete"] == MANIFEST_DELETE  # one writer resource for both backends
    environment = command["environment"]
    assert environment["DOCKYARD_MANIFEST_PATH"] == (
        f"{REPO}/.companion/cloud/environments/alpha.json"
    )
    assert json.loads(environment["DOCKYARD_MANIFEST"]) == full.exports()["alpha"]
    # A tenant's manifests go to its own folder, as on Docker.
    beta = full.named("env-Beta.Session_-manifest").inputs["environment"]
    assert beta["DOCKYARD_MANIFEST_PATH"] == (
        f"{REPO}/.companion/cloud/environments/acme/Beta.Session_.json"
    )


def test_modal_plan_reads_a_kubernetes_manifest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = realised("file")
    path = tmp_path / "alice-api.json"
    manifest_contract.write(path, run.exports()["alice-api"])
    assert modal_plan.main([str(path), "--stack", str(REPO / "stacks" / "Pulumi.k8s.yaml")]) == 0
    plan = capsys.readouterr().out
    assert "encrypted_ports=[3000]" in plan
    assert "cpu=2," in plan
    assert "memory=4096," in plan
    assert 'modal.Image.from_registry("ghcr.io/acme/dockyard-core:latest")' in plan


def test_the_shipped_stack_realises() -> None:
    run = realised("file")
    assert len(run.of_type(STATEFULSET)) == 3
    assert set(run.exports()) == {"alice-api", "bob-web", "review-bot"}
    for manifest in run.exports().values():
        manifest_contract.check_written(manifest)


def test_a_kubernetes_stack_needs_a_published_image() -> None:
    run = ProgramRun()
    with pytest.raises(pulumi.RunError) as info:
        run_program(
            RecordingMocks(run),
            {
                "backend": "kubernetes",
                "kubernetes": {"agentSandbox": True},
                "environments": [{"sessionId": "a"}, {"sessionId": "b", "image": IMAGE}],
            },
            recorder=run,
        )
    message = str(info.value)
    assert (
        "dockyard:image.ref: not set, needed by environments[0], kubernetes.agentSandbox" in message
    )
    assert "(allowed: a published image reference the cluster can pull" in message
    assert "environments[1]" not in message
    assert run.resources == []


# --- Names ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("dockyard-dev-alpha", r"dockyard-dev-alpha"),
        ("dockyard-dev-Alpha", r"dockyard-dev-alpha-[0-9a-f]{6}"),
        ("dockyard-dev-a_b.c", r"dockyard-dev-a-b-c-[0-9a-f]{6}"),
        ("dockyard-dev-x-", r"dockyard-dev-x-[0-9a-f]{6}"),
        ("dockyard-" + "s" * 63, r"dockyard-s{36}-[0-9a-f]{6}"),
    ],
)
def test_workload_names(text: str, expected: str) -> None:
    name = objects.object_name(text, objects.WORKLOAD_NAME_MAX)
    assert re.fullmatch(expected, name), name
    assert objects.DNS_LABEL.fullmatch(name)
    assert len(name) <= objects.WORKLOAD_NAME_MAX


def test_names_that_differ_stay_different() -> None:
    sessions = ["a", "A", "a_", "a.", "a-", "a" * 63, "a" * 62 + "b"]
    names = {objects.environment_name("dev", s) for s in sessions}
    assert len(names) == len(sessions)
    values = {objects.label_value(s) for s in sessions}
    assert len(values) == len(sessions)
    assert all(objects.LABEL_VALUE.fullmatch(v) for v in values)


@pytest.mark.parametrize(
    ("key", "valid"),
    [
        ("team", True),
        ("acme.io/team", True),
        ("a/b/c", False),
        ("a..b/c", False),
        ("x" * 64, False),
        ("example.com/" + "x" * 63, True),
    ],
)
def test_qualified_names(key: str, valid: bool) -> None:
    assert objects.is_qualified_name(key) is valid
