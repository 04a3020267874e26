"""A second Docker engine on this machine, for several-host tests.

Its own socket, data root, exec root, pidfile, containerd namespaces, bridge (a bridge
interface the fixture creates, on an address range of its own) and an empty daemon.json,
so it shares nothing with the machine's engine. ``iptables`` stays off: it must not
touch the first engine's chains; published ports work through docker-proxy. Everything
it creates is removed when it stops.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker

from tests.support.server import stop as stop_process

BRIDGE = "dyk-e2"
BRIDGE_CIDR = "10.213.255.1/24"
ADDRESS_POOL = "base=10.213.0.0/17,size=24"


@dataclass(frozen=True)
class Engine:
    url: str
    client: docker.DockerClient
    restart: Callable[[], None] = field(default=lambda: None, compare=False)
    """Stop dockerd (SIGTERM, as an upgrade does) and start it again with the same
    configuration; returns once it answers."""


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, text=True)


@contextlib.contextmanager
def second_engine(
    root: Path, images: list[str] | None = None, config: Mapping[str, Any] | None = None
) -> Iterator[Engine]:
    """Start the engine under ``root`` (a fresh directory), load ``images`` from the
    machine's engine into it, yield it, and stop and remove it afterwards. ``config``:
    its daemon.json (e.g. ``{"userns-remap": "default"}``), empty by default."""
    dockerd = shutil.which("dockerd")
    if dockerd is None:
        raise RuntimeError("dockerd is not installed (apt-get install docker.io)")
    run_dir = Path("/run") / f"dockyard-e2-{root.name}"
    data_root = root / "data"
    for path in (run_dir, data_root):
        path.mkdir(parents=True, exist_ok=True)
    config_file = root / "daemon.json"
    config_file.write_text(json.dumps(dict(config or {})) + "\n")
    socket = run_dir / "docker.sock"
    log = open(root / "dockerd.log", "w")  # noqa: SIM115 - outlives this statement: dockerd writes it
    subprocess.run(["ip", "link", "del", BRIDGE], capture_output=True, check=False)
    _run("ip", "link", "add", BRIDGE, "type", "bridge")
    _run("ip", "addr", "add", BRIDGE_CIDR, "dev", BRIDGE)
    _run("ip", "link", "set", BRIDGE, "up")
    argv = [
        dockerd,
        "--config-file",
        str(config_file),
        "--host",
        f"unix://{socket}",
        "--data-root",
        str(data_root),
        "--exec-root",
        str(run_dir / "exec"),
        "--pidfile",
        str(run_dir / "docker.pid"),
        "--containerd-namespace",
        "dockyard-e2",
        "--containerd-plugins-namespace",
        "dockyard-e2-plugins",
        "--bridge",
        BRIDGE,
        "--default-address-pool",
        ADDRESS_POOL,
        "--iptables=false",
        "--ip-masq=false",
        "--ip6tables=false",
    ]
    processes = [subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)]
    url = f"unix://{socket}"
    # A fixed API version: the client must not ask the engine before it is up.
    client = docker.DockerClient(base_url=url, timeout=300, version="1.41")

    def wait_ready() -> None:
        deadline = time.monotonic() + 60
        while True:
            try:
                client.ping()
                return
            except Exception:
                if processes[-1].poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        "the second engine did not start:\n"
                        + (root / "dockerd.log").read_text()[-3000:]
                    ) from None
                time.sleep(0.2)

    def stop() -> None:
        stop_process(processes[-1])

    def restart() -> None:
        stop()
        processes.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT))
        wait_ready()

    try:
        wait_ready()
        for image in images or []:
            saver = subprocess.Popen(["docker", "save", image], stdout=subprocess.PIPE)
            assert saver.stdout is not None
            client.images.load(saver.stdout)
            if saver.wait() != 0:
                raise RuntimeError(f"docker save {image} failed")
        yield Engine(url, client, restart)
    finally:
        with contextlib.suppress(Exception):
            for container in client.containers.list(all=True):
                container.remove(force=True, v=True)
            for network in client.networks.list():
                if network.name not in ("bridge", "host", "none"):
                    network.remove()
            for volume in client.volumes.list():
                volume.remove(force=True)
        client.close()
        stop()
        log.close()
        subprocess.run(["ip", "link", "del", BRIDGE], capture_output=True, check=False)
        # Unmount anything the engine left (overlay layers, shm) before removing its root.
        mounts = Path("/proc/mounts").read_text().splitlines()
        for line in reversed(mounts):
            target = line.split()[1]
            if target.startswith((str(data_root), str(run_dir))):
                subprocess.run(["umount", "-l", target], capture_output=True, check=False)
        shutil.rmtree(run_dir, ignore_errors=True)
        shutil.rmtree(data_root, ignore_errors=True)
