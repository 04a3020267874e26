"""A Debian host with systemd as PID 1 and its own Docker engine, in a container.

Started the way molecule's systemd scenarios start one: /sbin/init as the command, tmpfs
on /run, /run/lock and /tmp, the cgroup tree mounted read-write, seccomp and AppArmor
unconfined. This machine's engine cannot grant --privileged (its bounding set lacks
CAP_SYS_RESOURCE: "unable to apply caps"), so the container gets every other capability
instead, which is what systemd and an inner dockerd need. The inner engine keeps its
data on a volume (overlay2 cannot stack on the container's own overlay), which also keeps
it across a restart of the container: a reboot as far as the host inside can tell
(/run and /tmp start empty, systemd boots again, enabled units start).

Ansible reaches it over the community.docker.docker connection as root."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import docker
import docker.errors
from docker.models.containers import Container

from tests.support.engine import LABELS, unique_name, wait_for
from tests.support.images import DEFAULT_BASE, build_image

REPO = Path(__file__).resolve().parents[2]
CONTEXT = REPO / "tests" / "roles" / "systemd-host"
# Where the inner engine keeps its data (a volume; the tests' daemon.json names it as the
# host's own data-root).
ENGINE_DATA = "/srv/engine"
CAPABILITIES = [
    "AUDIT_CONTROL",
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "IPC_LOCK",
    "IPC_OWNER",
    "KILL",
    "LEASE",
    "LINUX_IMMUTABLE",
    "MKNOD",
    "NET_ADMIN",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_RAW",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYSLOG",
    "SYS_ADMIN",
    "SYS_CHROOT",
    "SYS_NICE",
    "SYS_PTRACE",
    "SYS_RAWIO",
]


def image(client: docker.DockerClient) -> str:
    """The systemd host image (built from the local base image when its inputs change)."""
    return build_image(
        client, "dockyard-systemd-host", {"BASE_IMAGE": DEFAULT_BASE}, context=CONTEXT
    )


@dataclass
class SystemdHost:
    client: docker.DockerClient
    container: Container
    volume: str
    inventory: Path
    names: list[str] = field(default_factory=list)

    def exec(self, *argv: str, check: bool = True) -> tuple[int, str]:
        code, output = self.container.exec_run(list(argv))
        text = output.decode(errors="replace")
        if check:
            assert code == 0, f"{' '.join(argv)} exited {code}: {text}"
        return code, text

    def sh(self, script: str, check: bool = True) -> str:
        return self.exec("sh", "-c", script, check=check)[1]

    def system_state(self) -> str:
        return self.exec("systemctl", "is-system-running", check=False)[1].strip()

    def wait_booted(self, timeout: float = 240) -> None:
        wait_for(
            lambda: self.system_state() in ("running", "degraded"),
            timeout,
            what=f"{self.container.name}: systemd up",
        )
        # Its boot may have activated controllers the host never mounted.
        host_cgroup_mounts_complete()
        state = self.system_state()
        assert state == "running", (
            f"systemd is {state}: "
            + self.exec("systemctl", "--failed", "--no-pager", check=False)[1]
        )

    def reboot(self) -> None:
        """Restart the container: systemd shuts down (SIGRTMIN+3) and boots again."""
        self.container.restart(timeout=60)
        self.container.reload()
        self.wait_booted()

    def load_image(self, ref: str) -> None:
        """Copy an image from this machine's engine into the host's own engine."""
        save = subprocess.Popen(["docker", "save", ref], stdout=subprocess.PIPE)
        load = subprocess.run(
            ["docker", "exec", "-i", self.container.name, "docker", "load"],
            stdin=save.stdout,
            capture_output=True,
            text=True,
            check=False,
        )
        assert save.stdout is not None
        save.stdout.close()
        assert save.wait() == 0
        assert load.returncode == 0, load.stderr

    def remove(self) -> None:
        with contextlib.suppress(docker.errors.NotFound):
            self.container.remove(force=True, v=True)
        with contextlib.suppress(docker.errors.NotFound):
            self.client.volumes.get(self.volume).remove(force=True)


def host_cgroup_mounts_complete() -> list[str]:
    """On a cgroup v1 host, mount every hierarchy the kernel has active but this mount
    namespace does not show; return the ones mounted.

    systemd in the test host (cgroup tree shared, rw) mounts controllers the host never
    mounted (hugetlb, perf_event, net_cls,net_prio). That makes them active for every
    process, so the host engine's containerd then finds a hierarchy in /proc/self/cgroup
    without a mount and stops reporting container stats ("cannot find cgroup mount
    destination"): every later test reading `docker stats` would see 0 B. Debian's own
    cgroupfs-mount (docker.io's init script) mounts them all the same way."""
    root = Path("/sys/fs/cgroup")
    if (root / "cgroup.controllers").exists():
        return []  # cgroup v2: one unified tree, nothing to add
    mounted = set()
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split(" - ", 1)
        if len(fields) == 2 and fields[1].startswith("cgroup "):
            options = fields[1].split()[-1].split(",")
            mounted.update(o for o in options if o not in ("rw", "ro") and "=" not in o)
    added = []
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, _ = line.split(":", 2)
        names = [c for c in controllers.split(",") if c and not c.startswith("name=")]
        if not names or all(name in mounted for name in names):
            continue
        target = root / ",".join(names)
        subprocess.run(["mount", "-o", "remount,rw", str(root)], check=False)
        target.mkdir(exist_ok=True)
        subprocess.run(
            ["mount", "-t", "cgroup", "-o", ",".join(names), "cgroup", str(target)], check=True
        )
        for name in names:
            link = root / name
            if len(names) > 1 and not link.exists():
                link.symlink_to(target.name)
        mounted.update(names)
        added.append(target.name)
    return added


def start(
    client: docker.DockerClient,
    inventory_dir: Path,
    group: str = "docker_hosts",
    mounts: dict[str, dict[str, str]] | None = None,
) -> SystemdHost:
    """``mounts``: more bind mounts ({host path: {"bind": path, "mode": "ro"}})."""
    name = unique_name("systemd-host")
    volume = client.volumes.create(name=f"{name}-engine", labels=LABELS)
    try:
        container = client.containers.run(
            image(client),
            name=name,
            hostname=name[-20:],
            labels=LABELS,
            detach=True,
            cap_add=CAPABILITIES,
            security_opt=["seccomp=unconfined", "apparmor=unconfined"],
            tmpfs={"/run": "rw,mode=755", "/run/lock": "rw", "/tmp": "rw,mode=1777"},
            cgroupns="host",
            volumes={
                "/sys/fs/cgroup": {"bind": "/sys/fs/cgroup", "mode": "rw"},
                volume.name: {"bind": ENGINE_DATA, "mode": "rw"},
                **(mounts or {}),
            },
        )
    except Exception:
        volume.remove(force=True)
        raise
    inventory = inventory_dir / f"{name}.ini"
    inventory.write_text(
        f"[{group}]\n{name} ansible_connection=community.docker.docker ansible_user=root "
        "ansible_python_interpreter=/usr/bin/python3\n"
    )
    host = SystemdHost(client, container, volume.name, inventory)
    try:
        host.wait_booted()
    except BaseException:
        host.remove()
        raise
    return host


def started(
    client: docker.DockerClient,
    inventory_dir: Path,
    group: str = "docker_hosts",
    mounts: dict[str, dict[str, str]] | None = None,
) -> Iterator[SystemdHost]:
    """A systemd host for a fixture; removed (with its engine's volume) afterwards."""
    host = start(client, inventory_dir, group, mounts)
    try:
        yield host
    finally:
        host.remove()
