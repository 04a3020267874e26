"""What every realised environment must be, asserted from the engine's view and measured
from inside the container (issue: reliability and security, "Hardening checks").

Documented capability set: none. The entrypoint and the agent run as uid 1000 and need
no capability, so the bounding set is empty and nothing can be gained back.
"""

from __future__ import annotations

from docker.models.containers import Container

from tests.support.engine import exec_ok
from tests.support.gvisor import problems_on_gvisor, socket_or_secret_problem

AGENT_UID = 1000
DOCUMENTED_CAPABILITIES: frozenset[str] = frozenset()
ENGINE_SOCKETS = ("/var/run/docker.sock", "/run/docker.sock")

INSIDE = r"""
id -u
grep -E '^(CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs):' /proc/1/status | tr -s '\t ' ' '
cat /sys/fs/cgroup/pids/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids.max
awk '/^Max open files/ { print $4; print $5 }' /proc/1/limits
for s in /var/run/docker.sock /run/docker.sock; do [ -e "$s" ] && echo "socket $s"; done
for f in /run/secrets/*; do [ -f "$f" ] && stat -c 'secret %n %a %u' "$f"; done
true
"""


def assert_hardened(
    container: Container,
    *,
    pids: int = 1000,
    nofile: tuple[int, int] = (1024, 2048),
) -> None:
    """Fail with every deviation of ``container`` from the hardening contract."""
    container.reload()
    host, config = container.attrs["HostConfig"], container.attrs["Config"]
    problems = []
    if config["User"] != f"{AGENT_UID}:{AGENT_UID}":
        problems.append(f"user {config['User']!r}")
    if host["Privileged"]:
        problems.append("privileged")
    if set(host.get("CapAdd") or []) - DOCUMENTED_CAPABILITIES:
        problems.append(f"added capabilities {host['CapAdd']}")
    if host.get("CapDrop") != ["ALL"]:
        problems.append(f"capabilities not all dropped: {host.get('CapDrop')}")
    if "no-new-privileges:true" not in (host.get("SecurityOpt") or []):
        problems.append(f"no no-new-privileges: {host.get('SecurityOpt')}")
    for mount in container.attrs["Mounts"]:
        if any(mount.get("Source", "").endswith(s) for s in ENGINE_SOCKETS):
            problems.append(f"engine socket mounted from {mount['Source']}")
    if host.get("NetworkMode") == "host" or host.get("PidMode") == "host":
        problems.append("host network or pid namespace")
    if host.get("Runtime") == "runsc":
        # gVisor reports the same contract its own way (tests/support/gvisor.py).
        problems += problems_on_gvisor(container, agent_uid=AGENT_UID, nofile=nofile)
        _assert_read_only_mounts(container, problems)
        assert not problems, f"{container.name} is not hardened: {problems}"
        return
    if host.get("PidsLimit") != pids:
        problems.append(f"pids limit {host.get('PidsLimit')} != {pids}")

    lines = exec_ok(container, ["bash", "-c", INSIDE]).splitlines()
    uid, status, measured = lines[0], lines[1:6], lines[6:]
    if uid != str(AGENT_UID):
        problems.append(f"processes run as uid {uid}")
    caps = dict(line.split(" ", 1) for line in (s.strip() for s in status) if line)
    for key in ("CapPrm:", "CapEff:", "CapBnd:", "CapAmb:"):
        if int(caps.get(key, "1"), 16) != 0:
            problems.append(f"{key} {caps.get(key)} (documented set: none)")
    if caps.get("NoNewPrivs:") != "1":
        problems.append(f"NoNewPrivs {caps.get('NoNewPrivs:')}")
    if measured[0] != str(pids):
        problems.append(f"pids.max inside is {measured[0]}, not {pids}")
    if (measured[1], measured[2]) != (str(nofile[0]), str(nofile[1])):
        problems.append(f"nofile inside is {measured[1]}/{measured[2]}, not {nofile}")
    for line in measured[3:]:
        if problem := socket_or_secret_problem(line, AGENT_UID):
            problems.append(problem)
    # /proc/1/limits, not `ulimit` in the exec'd shell: what the entrypoint and the agent
    # under it get. An exec'd process here sometimes sees soft == hard (observed on
    # Docker 20.10: runc's Go init raising its own soft limit races the spec's).
    _assert_read_only_mounts(container, problems)
    assert not problems, f"{container.name} is not hardened: {problems}"


def _assert_read_only_mounts(container: Container, problems: list[str]) -> None:
    # Read-only mounts refuse writes even from root in the container.
    for mount in container.attrs["Mounts"]:
        if not mount["RW"]:
            probe = f"{mount['Destination'].rstrip('/')}/.dockyard-ro-probe"
            result = container.exec_run(["touch", probe], user="root")
            if result.exit_code == 0:
                problems.append(f"read-only mount {mount['Destination']} accepted a write")
