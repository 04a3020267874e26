"""Every Kubernetes object the program generates, validated offline (no cluster runs here):

- built-in kinds against the official OpenAPI schemas of a pinned Kubernetes version
  (``kubernetes-validate``, strict: no field the API does not know);
- agent-sandbox's Sandbox, SandboxTemplate, SandboxWarmPool against that project's CRD
  schemas, and Cilium's CiliumNetworkPolicy against Cilium's (vendored under
  tests/data, sources in their README), made strict the same way; the Pod specs and
  object metadata inside them against the official PodSpec and ObjectMeta.

The negative cases show each validator refuses what the API server would.
"""

from __future__ import annotations

import copy
import json
from collections import Counter
from functools import cache
from pathlib import Path
from typing import Any

import importlib_resources
import jsonschema
import kubernetes_validate
import pytest

from dockyard.kubernetes import CILIUM_API_VERSION
from dockyard.kubernetes_sandbox import EXTENSIONS_API_VERSION, SANDBOX_API_VERSION
from tests.support.kubernetes import STACKS, objects_of, pod_specs, realised

PINNED = "1.33.0"
"""The Kubernetes version every object must be valid for."""
NEWEST = kubernetes_validate.utils.latest_version()
DATA = Path(__file__).resolve().parents[1] / "data"
CRDS: dict[tuple[str, str], Path] = {
    (SANDBOX_API_VERSION, "Sandbox"): DATA / "agent-sandbox" / "sandbox.v1beta1.json",
    (EXTENSIONS_API_VERSION, "SandboxTemplate"): DATA
    / "agent-sandbox"
    / "sandboxtemplate.v1beta1.json",
    (EXTENSIONS_API_VERSION, "SandboxWarmPool"): DATA
    / "agent-sandbox"
    / "sandboxwarmpool.v1beta1.json",
    (CILIUM_API_VERSION, "CiliumNetworkPolicy"): DATA / "cilium" / "ciliumnetworkpolicy.v2.json",
}
BUILT_IN = {"PersistentVolumeClaim", "Secret", "StatefulSet", "Service", "NetworkPolicy"}
RUNS = [*STACKS, "file"]


# --- Validators ---------------------------------------------------------------------------------


def strict(schema: Any) -> Any:
    """An OpenAPI schema that refuses unknown fields, as kubernetes-validate's ``strict``
    does for built-in kinds (and the API server's field validation does): every object
    with properties and no rule for others gets ``additionalProperties: false``. Branches
    of anyOf/oneOf (no ``type``) only add requirements and are left as they are."""
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    result = {key: strict(value) for key, value in schema.items()}
    if (
        result.get("type") == "object"
        and "properties" in result
        and "additionalProperties" not in result
        and not result.get("x-kubernetes-preserve-unknown-fields")
    ):
        result["additionalProperties"] = False
    return result


@cache
def crd_validator(api_version: str, kind: str) -> jsonschema.protocols.Validator:
    vendored = json.loads(CRDS[(api_version, kind)].read_text(encoding="utf-8"))
    group, version = api_version.split("/")
    assert (vendored["group"], vendored["version"], vendored["kind"]) == (group, version, kind)
    # CRD schemas are OpenAPI v3.0 (structural, draft-4 style keywords).
    return jsonschema.Draft4Validator(strict(vendored["openAPIV3Schema"]))


@cache
def definition_validator(version: str, definition: str) -> jsonschema.protocols.Validator:
    """A validator for one official definition (e.g. io.k8s.api.core.v1.PodSpec)."""
    folder = f"kubernetes-json-schema/v{version}-local-strict/_definitions.json"
    definitions = json.loads(
        importlib_resources.files("kubernetes_validate").joinpath(folder).read_text()
    )
    return jsonschema.Draft202012Validator(
        {"$defs": definitions["$defs"], "$ref": f"#/$defs/{definition}"}
    )


def problems(body: dict[str, Any], version: str = PINNED) -> list[str]:
    """Every way ``body`` is invalid; empty when valid. Raises for a kind no schema covers."""
    key = (body["apiVersion"], body["kind"])
    if key not in CRDS:
        try:
            kubernetes_validate.validate(body, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            return [f"{'.'.join(map(str, error.path))}: {error.message}"]
        return []
    found = [
        f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
        for e in crd_validator(*key).iter_errors(body)
    ]
    embedded = [("metadata", body["metadata"], "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta")]
    embedded += [(where, pod, "io.k8s.api.core.v1.PodSpec") for where, pod in pod_specs(body)]
    for where, value, definition in embedded:
        found += [
            f"{where}.{'.'.join(map(str, e.absolute_path))}: {e.message}"
            for e in definition_validator(version, definition).iter_errors(value)
        ]
    return found


# --- Every generated object -----------------------------------------------------------------------


@pytest.mark.parametrize("version", [PINNED, NEWEST])
@pytest.mark.parametrize("stack", RUNS)
def test_every_generated_object_is_valid(stack: str, version: str) -> None:
    generated = objects_of(realised(stack))
    assert generated
    invalid = {r.name: found for r, body in generated if (found := problems(body, version))}
    assert invalid == {}


def test_every_kind_is_covered_by_a_schema() -> None:
    kinds = Counter(body["kind"] for stack in RUNS for _, body in objects_of(realised(stack)))
    assert set(kinds) == BUILT_IN | {kind for _, kind in CRDS}, kinds
    for kind in BUILT_IN:
        # kubernetes-validate raises for a kind it has no schema of: none is skipped.
        body = next(b for s in RUNS for _, b in objects_of(realised(s)) if b["kind"] == kind)
        assert kubernetes_validate.validate(body, PINNED, strict=True) == "1.33"


def test_vendored_schemas_name_their_source() -> None:
    for folder, source in (
        ("agent-sandbox", "kubernetes-sigs/agent-sandbox"),
        ("cilium", "cilium"),
    ):
        readme = (DATA / folder / "README.md").read_text(encoding="utf-8")
        assert source in readme
        for path in (DATA / folder).glob("*.json"):
            assert path.name in readme, f"{path.name} has no source line in {folder}/README.md"


# --- The validators refuse what the API server would -----------------------------------------------


def first(stack: str, kind: str) -> dict[str, Any]:
    return copy.deepcopy(next(b for _, b in objects_of(realised(stack)) if b["kind"] == kind))


def test_built_in_schema_refuses_an_unknown_field() -> None:
    body = first("full", "StatefulSet")
    body["spec"]["template"]["spec"]["containers"][0]["runAsNonRoot"] = True  # wrong level
    assert problems(body) != []


def test_built_in_schema_refuses_a_wrong_type() -> None:
    body = first("full", "Service")
    body["spec"]["ports"][0]["port"] = "3000"
    assert problems(body) != []


def test_crd_schema_refuses_an_unknown_field() -> None:
    body = first("sandboxed", "Sandbox")
    body["spec"]["replicas"] = 1
    assert any("replicas" in line for line in problems(body))


def test_crd_schema_refuses_a_bad_value() -> None:
    pool = first("sandboxed", "SandboxWarmPool")
    pool["spec"]["replicas"] = -1
    assert problems(pool) != []
    template = first("sandboxed", "SandboxTemplate")
    template["spec"]["networkPolicyManagement"] = "Sometimes"
    assert problems(template) != []


def test_embedded_pod_spec_is_held_to_the_official_schema() -> None:
    body = first("sandboxed", "Sandbox")
    body["spec"]["podTemplate"]["spec"]["containers"][0]["ports"] = [{"containerPort": "http"}]
    assert any(line.startswith("spec.podTemplate.spec.") for line in problems(body))


def test_embedded_metadata_is_held_to_the_official_schema() -> None:
    body = first("sandboxed", "SandboxTemplate")
    body["metadata"]["labels"] = ["not", "a", "mapping"]
    assert any(line.startswith("metadata.") for line in problems(body))


def test_cilium_schema_refuses_a_bad_fqdn() -> None:
    body = first("full", "CiliumNetworkPolicy")
    body["spec"]["egress"][1]["toFQDNs"] = [{"matchName": "bad name!"}]
    assert problems(body) != []
    body = first("full", "CiliumNetworkPolicy")
    body["spec"]["egress"][0]["toPorts"][0]["ports"][0]["protocol"] = "ICMP"
    assert problems(body) != []
