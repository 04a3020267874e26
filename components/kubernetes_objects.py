"""Kubernetes object bodies for one environment: names, labels, the Pod spec, probes,
resources and network policies, as plain dictionaries in the API's own camelCase.

Nothing here registers a resource: :mod:`dockyard.kubernetes` wraps these bodies in
pulumi-kubernetes resources, and the tests validate them against the official OpenAPI
schemas. Values may be Pulumi outputs (the image reference); everything else is data.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from . import egress
from .config import Healthcheck, ResolvedLimits, Volume
from .config.values import duration_ms
from .contract import (
    AGENT_UID,
    HEALTHCHECK_PATH,
    LABEL_BACKEND,
    LABEL_EGRESS,
    LABEL_ENVIRONMENT,
    LABEL_MANAGED,
    LABEL_SESSION,
    LABEL_STACK,
    MANAGED_VALUE,
    READY_FILE,
    SECRETS_DIR,
)

CONTAINER_NAME = "agent"
SECRET_FILE_MODE = 0o400
ROLES = ("workspace", "config", "checkpoints")
"""The R-ENV-8 tree: one PersistentVolumeClaim each, mounted at /<role>."""

# StatefulSet Pods carry the label controller-revision-hash=<name>-<10 characters>, and
# a label value has at most 63: a workload name longer than 52 leaves the Pod unlabelled
# and the StatefulSet stuck.
WORKLOAD_NAME_MAX = 52
DNS_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?", re.ASCII)
LABEL_VALUE = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?)?", re.ASCII)
_LABEL_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?", re.ASCII)
_DNS_SUBDOMAIN = re.compile(
    r"(?=.{1,253}\Z)[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*",
    re.ASCII,
)
HASH_LENGTH = 6

# Labels every object of an environment carries (the Docker backend's set) and the
# annotations that keep what a label value cannot hold.
USER_LABELS_ANNOTATION = "dockyard.labels"
LIMITS_ANNOTATION = "dockyard.limits"
SECRETS_REVISION_ANNOTATION = "dockyard.secrets-revision"

# Where the cluster DNS runs: the k8s-app=kube-dns label is kept by CoreDNS deployments
# (kubeadm, kind, k3s) for compatibility.
KUBE_DNS_NAMESPACE = "kube-system"
KUBE_DNS_LABELS = {"k8s-app": "kube-dns"}
NVIDIA_GPU = "nvidia.com/gpu"


# --- Names and labels -----------------------------------------------------------------------


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:HASH_LENGTH]


def object_name(text: str, limit: int = 63) -> str:
    """An RFC 1123 label (lower-case letters, digits, '-', alphanumeric at both ends) of at
    most ``limit`` characters for ``text``: lower-cased, every other character a '-'.
    Whenever that changed anything, a hash of the original is appended, so ``Alpha`` and
    ``alpha`` (distinct session ids) stay distinct objects."""
    name = re.sub(r"[^a-z0-9-]", "-", text.lower()).strip("-")
    if name == text and len(name) <= limit:
        return name
    keep = name[: limit - HASH_LENGTH - 1].rstrip("-")
    return f"{keep}-{_digest(text)}" if keep else _digest(text)


def label_value(text: str) -> str:
    """``text`` if it is a valid label value (at most 63 of letters, digits, '_', '.', '-',
    alphanumeric at both ends), else a valid value derived from it plus a hash of it.
    The original always goes into an annotation too."""
    if LABEL_VALUE.fullmatch(text):
        return text
    cleaned = re.sub(r"[^A-Za-z0-9_.-]", "-", text)[: 63 - HASH_LENGTH - 1]
    cleaned = re.sub(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$", "", cleaned)
    return f"{cleaned}-{_digest(text)}" if cleaned else _digest(text)


def is_qualified_name(key: str) -> bool:
    """A Kubernetes label or annotation key: ``[prefix/]name``, prefix a DNS subdomain,
    name at most 63 characters."""
    prefix, slash, name = key.rpartition("/")
    if slash and not _DNS_SUBDOMAIN.fullmatch(prefix):
        return False
    return bool(_LABEL_NAME.fullmatch(name))


def environment_name(stack: str, session_id: str) -> str:
    """The name every object of a session is named after (the StatefulSet's, the Sandbox's,
    the Service's); the Docker backend's ``dockyard-<stack>-<session>`` made RFC 1123."""
    return object_name(f"dockyard-{stack}-{session_id}", WORKLOAD_NAME_MAX)


def selector_labels(name: str) -> dict[str, str]:
    """What the Service and the policies select the environment's Pod by."""
    return {LABEL_ENVIRONMENT: name}


def environment_metadata(
    *,
    name: str,
    stack: str,
    session_id: str,
    backend: str,
    egress_mode: str,
    user_labels: Mapping[str, str],
) -> tuple[dict[str, str], dict[str, str]]:
    """(labels, annotations) of every object of an environment.

    Labels: the Docker backend's ``dockyard.*`` set with valid label values, plus each
    user label whose key and value Kubernetes accepts. Annotations: the session id and
    stack as written, and all user labels as JSON (a value may be free text)."""
    labels = {
        **{
            key: value
            for key, value in user_labels.items()
            if is_qualified_name(key) and LABEL_VALUE.fullmatch(value)
        },
        LABEL_ENVIRONMENT: name,
        LABEL_SESSION: label_value(session_id),
        LABEL_STACK: label_value(stack),
        LABEL_BACKEND: backend,
        LABEL_MANAGED: MANAGED_VALUE,
        LABEL_EGRESS: egress_mode,
    }
    annotations = {LABEL_SESSION: session_id, LABEL_STACK: stack}
    if user_labels:
        annotations[USER_LABELS_ANNOTATION] = json.dumps(dict(user_labels), sort_keys=True)
    return labels, annotations


def claim_names(name: str, volumes: Sequence[Volume]) -> dict[str, str]:
    """Pod volume name -> PersistentVolumeClaim name: the R-ENV-8 tree, then one claim per
    distinct declared volume (a name mounted twice is one claim)."""
    claims = {role: f"{name}-{role}" for role in ROLES}
    for volume in volumes:
        claims.setdefault(
            declared_volume_name(volume.source), object_name(f"{name}-vol-{volume.source}")
        )
    return claims


def declared_volume_name(source: str) -> str:
    """The Pod's volume name for a declared named volume: an RFC 1123 label."""
    return object_name(f"vol-{source}")


def port_name(port: int) -> str:
    """An IANA service name (at most 15 characters, a letter in it): Services with more
    than one port need one per port."""
    return f"tcp-{port}"


# --- Quantities -------------------------------------------------------------------------------


def cpu_quantity(cpus: float) -> str:
    """CPUs as a quantity: 2 -> '2', 2.5 -> '2500m' (the config allows 0.01 steps)."""
    millis = round(cpus * 1000)
    return str(millis // 1000) if millis % 1000 == 0 else f"{millis}m"


def memory_quantity(megabytes: int) -> str:
    """The config's MB are MiB, as Docker reads them."""
    return f"{megabytes}Mi"


def seconds(duration: str) -> int:
    """A config duration as whole probe seconds, rounded up (probes count in seconds,
    at least 1)."""
    return max(1, math.ceil(duration_ms(duration) / 1000))


# --- The Pod ---------------------------------------------------------------------------------


def probes(healthcheck: Healthcheck) -> dict[str, dict[str, Any]]:
    """Startup, liveness and readiness probes from the R-ENV-7 health check.

    - startup: the health check every ``startInterval`` (else ``interval``), allowed to
      fail for ``startPeriod`` plus ``retries`` probes, as Docker ignores failures during
      the start period and then counts ``retries``; liveness and readiness wait for it.
    - liveness: the health check every ``interval``; ``retries`` failures in a row restart
      the container (Docker only marks it unhealthy).
    - readiness: the entrypoint's ready marker; until it exists the Service sends nothing
      and the StatefulSet's rollout (and ``pulumi up``) waits.
    """
    interval = seconds(healthcheck.interval)
    timeout = seconds(healthcheck.timeout)
    start_every = seconds(healthcheck.start_interval or healthcheck.interval)
    start_budget = math.ceil(duration_ms(healthcheck.start_period) / 1000 / start_every)
    health = {"exec": {"command": [HEALTHCHECK_PATH]}, "timeoutSeconds": timeout}
    return {
        "startupProbe": {
            **health,
            "periodSeconds": start_every,
            "failureThreshold": max(1, start_budget) + healthcheck.retries,
        },
        "livenessProbe": {
            **health,
            "periodSeconds": interval,
            "failureThreshold": healthcheck.retries,
        },
        "readinessProbe": {
            "exec": {"command": ["/usr/bin/test", "-e", READY_FILE]},
            "timeoutSeconds": timeout,
            "periodSeconds": start_every,
            "failureThreshold": healthcheck.retries,
        },
    }


def resources(limits: ResolvedLimits, gpu: str | Sequence[str] | None) -> dict[str, Any]:
    """Requests equal to limits (Guaranteed QoS): the profile is what the agent gets, and
    such a Pod is the last one evicted under node pressure. GPUs by count: Kubernetes has
    no device ids and no "all" (``all`` asks for one)."""
    amounts: dict[str, str] = {
        "cpu": cpu_quantity(limits.cpus),
        "memory": memory_quantity(limits.memory),
    }
    if gpu is not None:
        amounts[NVIDIA_GPU] = str(1 if gpu == "all" else len(gpu))
    return {"requests": dict(amounts), "limits": dict(amounts)}


def container_security_context() -> dict[str, Any]:
    """Pod Security Standard "restricted", stated on the container itself so it holds
    whatever the Pod level says."""
    return {
        "runAsNonRoot": True,
        "runAsUser": AGENT_UID,
        "runAsGroup": AGENT_UID,
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def pod_security_context() -> dict[str, Any]:
    """``fsGroup`` makes the claims writable by the agent and gives it the Secret's files:
    the kubelet makes them root:1000 and adds group read (0400 becomes 0440), so uid 1000
    reads them through its group and no other uid can."""
    return {
        "runAsNonRoot": True,
        "runAsUser": AGENT_UID,
        "runAsGroup": AGENT_UID,
        "fsGroup": AGENT_UID,
        "fsGroupChangePolicy": "OnRootMismatch",
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def pod_spec(
    *,
    image: Any,
    session_id: str | None,
    backend: str,
    env: Mapping[str, str],
    ports: Sequence[int],
    limits: ResolvedLimits,
    healthcheck: Healthcheck,
    volumes: Sequence[Volume],
    claims: Mapping[str, str] | None,
    secret_name: str | None,
    runtime_class: str | None,
    gpu: str | Sequence[str] | None,
    termination_grace_seconds: int,
) -> dict[str, Any]:
    """The environment's Pod spec.

    ``claims`` maps the Pod's volume names to PersistentVolumeClaim names; None leaves the
    R-ENV-8 volumes out of ``volumes`` (a SandboxTemplate's volumeClaimTemplates add
    them). ``secret_name`` mounts that Secret's keys as files under /run/secrets.
    ``session_id`` None: the entrypoint takes the Pod's hostname (a warm pool's Pods).
    """
    mounts: list[dict[str, Any]] = [{"name": role, "mountPath": f"/{role}"} for role in ROLES]
    for volume in volumes:
        mounts.append(
            {
                "name": declared_volume_name(volume.source),
                "mountPath": volume.target,
                "readOnly": volume.read_only,
            }
        )
    pod_volumes: list[dict[str, Any]] = [
        {"name": volume, "persistentVolumeClaim": {"claimName": claim}}
        for volume, claim in (claims or {}).items()
    ]
    if secret_name is not None:
        mounts.append({"name": "secrets", "mountPath": SECRETS_DIR, "readOnly": True})
        pod_volumes.append(
            {
                "name": "secrets",
                "secret": {"secretName": secret_name, "defaultMode": SECRET_FILE_MODE},
            }
        )
    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "workingDir": "/workspace",
        "env": [
            {"name": "DOCKYARD_BACKEND", "value": backend},
            *([{"name": "DOCKYARD_SESSION_ID", "value": session_id}] if session_id else []),
            *({"name": key, "value": value} for key, value in env.items()),
        ],
        "ports": [
            {"name": port_name(port), "containerPort": port, "protocol": "TCP"} for port in ports
        ],
        "resources": resources(limits, gpu),
        "securityContext": container_security_context(),
        "volumeMounts": mounts,
        **probes(healthcheck),
    }
    spec: dict[str, Any] = {
        "containers": [container],
        "securityContext": pod_security_context(),
        # The agent needs no Kubernetes API: no token in the Pod, and no Service
        # environment variables naming the namespace's other Services.
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        # The entrypoint's checkpoint is budgeted to fit Docker's stop timeout; same here.
        "terminationGracePeriodSeconds": termination_grace_seconds,
        "volumes": pod_volumes,
    }
    if runtime_class is not None:
        spec["runtimeClassName"] = runtime_class
    return spec


def claim_spec(size_mb: int, storage_class: str | None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "accessModes": ["ReadWriteOnce"],
        "volumeMode": "Filesystem",
        "resources": {"requests": {"storage": memory_quantity(size_mb)}},
    }
    if storage_class is not None:
        spec["storageClassName"] = storage_class
    return spec


# --- Network policies --------------------------------------------------------------------------


def _by_port(rules: Sequence[str]) -> dict[int | None, list[str]]:
    """Normalised rules grouped by port (None: any port), hosts in their order."""
    groups: dict[int | None, list[str]] = {}
    for rule in rules:
        host, _, port = rule.partition(":")
        groups.setdefault(int(port) if port else None, []).append(host)
    return groups


def _np_ports(port: int | None) -> list[dict[str, Any]]:
    # The Docker host's guard matches tcp and udp alike.
    return [] if port is None else [{"port": port, "protocol": p} for p in ("TCP", "UDP")]


def ingress_rules(ports: Sequence[int]) -> list[dict[str, Any]]:
    """The requested ports, from anywhere (as Docker publishes them on the host)."""
    if not ports:
        return []
    return [{"ports": [{"port": port, "protocol": "TCP"} for port in ports]}]


def egress_rules(mode: str, rules: Sequence[str]) -> list[dict[str, Any]] | None:
    """NetworkPolicy egress rules of the environment, or None for none at all (the
    default-deny policy then blocks every packet out).

    ``open``: everything. ``allowlist``: the address entries, each with its port (tcp
    and udp) or every port. Domain entries are not NetworkPolicy material: see
    :func:`cilium_egress`. DNS is not opened here: with only addresses allowed, a name
    lookup has nothing to reach and would only be a tunnel out."""
    if mode == "open":
        return [{}]
    addresses = [rule for rule in rules if egress.is_address(rule)]
    if not addresses:
        return None
    return [
        {
            "to": [{"ipBlock": {"cidr": cidr}} for cidr in cidrs],
            **({"ports": _np_ports(port)} if port is not None else {}),
        }
        for port, cidrs in _by_port(addresses).items()
    ]


def fqdn_selectors(domain: str) -> list[dict[str, str]]:
    """A dockyard domain covers its subdomains: the name itself, and ``**.`` (any depth
    of subdomains; Cilium 1.19+, where older releases read it as one level)."""
    return [{"matchName": domain}, {"matchPattern": f"**.{domain}"}]


def cilium_egress(rules: Sequence[str], network_policy: str) -> list[dict[str, Any]] | None:
    """CiliumNetworkPolicy egress rules for the domain entries, or None without any.

    DNS goes to kube-dns only, through Cilium's DNS proxy, and only for the allowed
    names (the Docker host's forwarder answers nothing else either): the proxy is also
    what maps each answer's addresses into the ``toFQDNs`` rules. Raises ValueError for
    domains without ``network_policy == "cilium"`` (the config refuses them first)."""
    domains = [rule for rule in rules if not egress.is_address(rule)]
    if not domains:
        return None
    if network_policy != "cilium":
        raise ValueError(
            f"egress rules {domains} name domains, which need network_policy 'cilium' "
            f"(a NetworkPolicy holds addresses only), not {network_policy!r}"
        )
    names = list(dict.fromkeys(rule.partition(":")[0] for rule in domains))
    dns = {
        "toEndpoints": [
            {
                "matchLabels": {
                    "k8s:io.kubernetes.pod.namespace": KUBE_DNS_NAMESPACE,
                    **{f"k8s:{key}": value for key, value in KUBE_DNS_LABELS.items()},
                }
            }
        ],
        "toPorts": [
            {
                "ports": [{"port": "53", "protocol": "ANY"}],
                "rules": {"dns": [s for name in names for s in fqdn_selectors(name)]},
            }
        ],
    }
    allowed = [
        {
            "toFQDNs": [s for host in hosts for s in fqdn_selectors(host)],
            **(
                {"toPorts": [{"ports": [{"port": str(port), "protocol": "ANY"}]}]}
                if port is not None
                else {}
            ),
        }
        for port, hosts in _by_port(domains).items()
    ]
    return [dns, *allowed]
