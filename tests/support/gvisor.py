"""The hardening contract (tests/support/hardening.py) measured the way a gVisor sandbox
shows it: same engine-side checks, and inside what gVisor's kernel reports.

What gVisor (Debian 12's runsc 0.0~20221219) shows differently, as measured in
docs/isolation.md: its ``/proc/<pid>/status`` has no ``CapAmb``/``NoNewPrivs`` lines
(no-new-privileges is asked of the kernel with ``prctl``), there is no ``/proc/<pid>/limits``
(``prlimit`` on PID 1 answers), no cgroup files inside, and coreutils' ``stat`` fails
(statx), so modes are read with Python. No pids limit reaches a gVisor container: the
engine must show none — a runsc that gains one fails here, to be noticed.
"""

from __future__ import annotations

from docker.models.containers import Container

from tests.support.engine import exec_ok

INSIDE = r"""
import ctypes, os, resource
print(os.getuid())
for line in open("/proc/1/status"):
    if line.startswith(("CapPrm:", "CapEff:", "CapBnd:", "CapAmb:")):
        key, value = line.split()
        print("cap", key, value)
PR_GET_NO_NEW_PRIVS = 39
print("nnp", ctypes.CDLL(None).prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0))
print("nofile", *resource.prlimit(1, resource.RLIMIT_NOFILE))
for path in ("/sys/fs/cgroup/pids.max", "/sys/fs/cgroup/pids/pids.max"):
    if os.path.exists(path):
        print("pids", open(path).read().strip())
for path in ("/var/run/docker.sock", "/run/docker.sock"):
    if os.path.exists(path):
        print("socket", path)
if os.path.isdir("/run/secrets"):
    for name in sorted(os.listdir("/run/secrets")):
        st = os.stat(f"/run/secrets/{name}")
        print("secret", f"/run/secrets/{name}", oct(st.st_mode & 0o7777)[2:], st.st_uid)
"""


def problems_on_gvisor(
    container: Container, *, agent_uid: int, nofile: tuple[int, int]
) -> list[str]:
    """Deviations only gVisor's view can show; the caller checks the engine-side rest."""
    problems = []
    if container.attrs["HostConfig"].get("PidsLimit"):
        problems.append(
            f"pids limit {container.attrs['HostConfig']['PidsLimit']} on runsc, which "
            "docs/isolation.md says cannot have one: update the docs and the checks"
        )
    lines = exec_ok(container, ["python3", "-c", INSIDE]).splitlines()
    if lines[0] != str(agent_uid):
        problems.append(f"processes run as uid {lines[0]}")
    caps = {f[1]: f[2] for f in (line.split() for line in lines) if f[0] == "cap"}
    if set(caps) < {"CapPrm:", "CapEff:", "CapBnd:"}:
        problems.append(f"capability lines missing in /proc/1/status: {caps}")
    problems += [f"{k} {v} (documented set: none)" for k, v in caps.items() if int(v, 16)]
    if "nnp 1" not in lines:
        problems.append(f"no-new-privileges not set: {[x for x in lines if x.startswith('nnp')]}")
    if f"nofile {nofile[0]} {nofile[1]}" not in lines:
        problems.append(f"nofile of PID 1 is {[x for x in lines if x.startswith('nofile')]}")
    for line in lines[1:]:
        if line.startswith("pids "):
            problems.append(f"a pids cgroup file inside ({line}): gVisor showed none")
        elif problem := socket_or_secret_problem(line, agent_uid):
            problems.append(problem)
    return problems


def socket_or_secret_problem(line: str, agent_uid: int | str) -> str | None:
    """A ``socket <path>`` or ``secret <path> <mode> <owner>`` line the in-container probe
    printed, as a problem (None when it is none); the same on every runtime."""
    if line.startswith("socket "):
        return f"engine socket visible inside at {line.split()[1]}"
    if line.startswith("secret "):
        _, path, mode, owner = line.split()
        if (mode, owner) != ("400", str(agent_uid)):
            return f"secret {path} has mode {mode}, owner {owner}"
    return None
