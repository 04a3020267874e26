"""Every Pod the program generates passes the Pod Security Standard "restricted" (which
includes "baseline"), checked control by control as the standard documents them:
https://kubernetes.io/docs/concepts/security/pod-security-standards/ (policy version
v1.33; the namespace's ``pod-security.kubernetes.io/enforce: restricted`` label makes the
API server refuse any Pod that fails one).

Each control is also shown to catch its violation on a copy of a generated Pod.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.support.kubernetes import STACKS, objects_of, pod_specs, realised

RUNS = [*STACKS, "file"]

BASELINE_CAPABILITIES = {
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
}
SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
}
SELINUX_TYPES = {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}
RESTRICTED_VOLUME_SOURCES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}


def _containers(pod: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for field in ("initContainers", "containers", "ephemeralContainers"):
        for index, container in enumerate(pod.get(field) or []):
            yield f"{field}[{index}]", container


def violations(pod: dict[str, Any]) -> list[str]:
    """Every control of "baseline" and "restricted" that ``pod`` (a Pod spec) fails."""
    found: list[str] = []
    pod_sc = pod.get("securityContext") or {}
    containers = list(_containers(pod))
    contexts = [(where, c.get("securityContext") or {}) for where, c in containers]

    # --- baseline ---
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(field):
            found.append(f"host namespaces: {field}")
    if (pod_sc.get("windowsOptions") or {}).get("hostProcess") or any(
        (sc.get("windowsOptions") or {}).get("hostProcess") for _, sc in contexts
    ):
        found.append("HostProcess")
    for where, sc in contexts:
        if sc.get("privileged"):
            found.append(f"privileged: {where}")
        added = set((sc.get("capabilities") or {}).get("add") or [])
        if added - BASELINE_CAPABILITIES:
            found.append(f"capabilities beyond baseline: {where} {sorted(added)}")
        if sc.get("procMount") not in (None, "Default"):
            found.append(f"/proc mount type: {where}")
    for volume in pod.get("volumes") or []:
        if "hostPath" in volume:
            found.append(f"hostPath volume: {volume['name']}")
    for where, container in containers:
        for port in container.get("ports") or []:
            if port.get("hostPort"):
                found.append(f"host ports: {where} {port['hostPort']}")
    for where, sc in [("pod", pod_sc), *contexts]:
        apparmor = (sc.get("appArmorProfile") or {}).get("type")
        if apparmor not in (None, "RuntimeDefault", "Localhost"):
            found.append(f"AppArmor: {where} {apparmor}")
        selinux = sc.get("seLinuxOptions") or {}
        if (
            selinux.get("type", "") not in SELINUX_TYPES
            or selinux.get("user")
            or selinux.get("role")
        ):
            found.append(f"SELinux: {where}")
        if (sc.get("seccompProfile") or {}).get("type") == "Unconfined":
            found.append(f"seccomp Unconfined: {where}")
    for sysctl in pod_sc.get("sysctls") or []:
        if sysctl["name"] not in SAFE_SYSCTLS:
            found.append(f"sysctls: {sysctl['name']}")

    # --- restricted ---
    for volume in pod.get("volumes") or []:
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUME_SOURCES:
            found.append(f"volume types: {volume['name']} {sorted(kinds)}")
    for where, sc in contexts:
        if sc.get("allowPrivilegeEscalation") is not False:
            found.append(f"privilege escalation: {where}")
        if sc.get("runAsNonRoot") is False or (
            not sc.get("runAsNonRoot") and not pod_sc.get("runAsNonRoot")
        ):
            found.append(f"running as non-root: {where}")
        if sc.get("runAsUser") == 0:
            found.append(f"running as non-root user: {where}")
        seccomp = (sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            found.append(f"seccomp: {where}")
        capabilities = sc.get("capabilities") or {}
        if "ALL" not in (capabilities.get("drop") or []):
            found.append(f"capabilities drop ALL: {where}")
        if set(capabilities.get("add") or []) - {"NET_BIND_SERVICE"}:
            found.append(f"capabilities add: {where}")
    if pod_sc.get("runAsUser") == 0:
        found.append("running as non-root user: pod")
    return found


def generated_pods() -> Iterator[tuple[str, dict[str, Any]]]:
    for stack in RUNS:
        for resource, body in objects_of(realised(stack)):
            for where, pod in pod_specs(body):
                yield f"{stack}: {resource.name} {where}", pod


def test_every_generated_pod_is_restricted() -> None:
    pods = list(generated_pods())
    # Every stack: a workload per session, and the agent-sandbox pool's template.
    assert len(pods) == sum(len(realised(s).module["environments"]) for s in RUNS) + 1, [
        where for where, _ in pods
    ]
    failing = {where: found for where, pod in pods if (found := violations(pod))}
    assert failing == {}


def test_the_restricted_fields_are_stated_not_defaulted() -> None:
    """The container states what "restricted" requires itself, so a Pod-level change or a
    namespace without the label cannot loosen it."""
    for where, pod in generated_pods():
        (agent,) = pod["containers"]
        assert agent["securityContext"] == {
            "runAsNonRoot": True,
            "runAsUser": 1000,
            "runAsGroup": 1000,
            "allowPrivilegeEscalation": False,
            "privileged": False,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        }, where
        assert pod["securityContext"]["runAsNonRoot"] is True, where
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, where


def _container(pod: dict[str, Any]) -> dict[str, Any]:
    return pod["containers"][0]


def _sc(pod: dict[str, Any]) -> dict[str, Any]:
    return _container(pod)["securityContext"]


Mutation = Callable[[dict[str, Any]], None]
MUTATIONS: list[tuple[str, Mutation, str]] = [
    ("hostNetwork", lambda p: p.update(hostNetwork=True), "host namespaces"),
    ("hostPID", lambda p: p.update(hostPID=True), "host namespaces"),
    ("hostIPC", lambda p: p.update(hostIPC=True), "host namespaces"),
    ("privileged", lambda p: _sc(p).update(privileged=True), "privileged"),
    (
        "SYS_ADMIN added",
        lambda p: _sc(p)["capabilities"].update(add=["SYS_ADMIN"]),
        "capabilities beyond baseline",
    ),
    (
        "CHOWN added (baseline, not restricted)",
        lambda p: _sc(p)["capabilities"].update(add=["CHOWN"]),
        "capabilities add",
    ),
    ("drop ALL missing", lambda p: _sc(p)["capabilities"].update(drop=["NET_RAW"]), "drop ALL"),
    ("escalation allowed", lambda p: _sc(p).update(allowPrivilegeEscalation=True), "escalation"),
    ("escalation unset", lambda p: _sc(p).pop("allowPrivilegeEscalation"), "escalation"),
    ("runAsNonRoot false", lambda p: _sc(p).update(runAsNonRoot=False), "non-root"),
    (
        "runAsNonRoot unset everywhere",
        lambda p: (_sc(p).pop("runAsNonRoot"), p["securityContext"].pop("runAsNonRoot")),
        "non-root",
    ),
    ("runAsUser 0", lambda p: _sc(p).update(runAsUser=0), "non-root user"),
    (
        "seccomp Unconfined",
        lambda p: _sc(p).update(seccompProfile={"type": "Unconfined"}),
        "seccomp",
    ),
    (
        "seccomp unset everywhere",
        lambda p: (_sc(p).pop("seccompProfile"), p["securityContext"].pop("seccompProfile")),
        "seccomp",
    ),
    (
        "hostPath volume",
        lambda p: p["volumes"].append({"name": "h", "hostPath": {"path": "/"}}),
        "hostPath",
    ),
    (
        "gitRepo volume",
        lambda p: p["volumes"].append({"name": "g", "gitRepo": {"repository": "x"}}),
        "volume types",
    ),
    (
        "host port",
        lambda p: _container(p)["ports"].append({"containerPort": 1, "hostPort": 1}),
        "host ports",
    ),
    ("procMount", lambda p: _sc(p).update(procMount="Unmasked"), "/proc"),
    (
        "SELinux type",
        lambda p: _sc(p).update(seLinuxOptions={"type": "spc_t"}),
        "SELinux",
    ),
    (
        "AppArmor unconfined",
        lambda p: _sc(p).update(appArmorProfile={"type": "Unconfined"}),
        "AppArmor",
    ),
    (
        "unsafe sysctl",
        lambda p: p["securityContext"].update(sysctls=[{"name": "kernel.msgmax", "value": "1"}]),
        "sysctls",
    ),
    (
        "HostProcess",
        lambda p: _sc(p).update(windowsOptions={"hostProcess": True}),
        "HostProcess",
    ),
    (
        "privileged init container",
        lambda p: p.update(
            initContainers=[{"name": "i", "image": "x", "securityContext": {"privileged": True}}]
        ),
        "privileged: initContainers[0]",
    ),
]


@pytest.mark.parametrize(
    ("mutate", "control"), [m[1:] for m in MUTATIONS], ids=[m[0] for m in MUTATIONS]
)
def test_each_control_catches_its_violation(mutate: Mutation, control: str) -> None:
    where, pod = next(generated_pods())
    assert violations(pod) == [], where
    broken = copy.deepcopy(pod)
    mutate(broken)
    assert any(control in line for line in violations(broken)), violations(broken)


def test_net_bind_service_is_the_one_capability_restricted_allows() -> None:
    _, pod = next(generated_pods())
    allowed = copy.deepcopy(pod)
    _sc(allowed)["capabilities"]["add"] = ["NET_BIND_SERVICE"]
    assert violations(allowed) == []
