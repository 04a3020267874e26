"""Containers started from a dockyard image the way an environment runs, with knobs for
image tests (backend, workspace, mounts, env, secrets, health interval)."""

from __future__ import annotations

import contextlib
import io
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass, field

import docker
import pytest
from docker.models.containers import Container
from docker.types import Mount, Ulimit

from tests.support.engine import LABELS, is_ready, unique_name, wait_for

SECOND_NS = 1_000_000_000


def secrets_tar(secrets: Mapping[str, str], uid: int = 1000) -> bytes:
    """A tar of /run/secrets/<NAME> files, 0400 and owned by the agent: the same shape the
    components deliver through pulumi-docker's `uploads` before the container starts."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, value in secrets.items():
            data = value.encode()
            info = tarfile.TarInfo(f"run/secrets/{name}")
            info.size, info.mode, info.uid, info.gid = len(data), 0o400, uid, uid
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@dataclass
class AgentRunner:
    """Starts containers from an image the way an environment runs, with knobs for tests.

    Everything it creates is labelled for this test run and removed by :meth:`cleanup`.
    """

    client: docker.DockerClient
    image: str
    containers: list[Container] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)

    def volume(self, tmpfs_size: str | None = None) -> str:
        """A new named volume; with ``tmpfs_size`` one backed by a tmpfs of that size (its
        files live only while a container mounts it)."""
        name = unique_name("vol")
        options = (
            {"type": "tmpfs", "device": "tmpfs", "o": f"size={tmpfs_size},uid=1000,gid=1000"}
            if tmpfs_size
            else None
        )
        self.client.volumes.create(name, driver_opts=options, labels=LABELS)
        self.volumes.append(name)
        return name

    def create(
        self,
        *,
        backend: str = "claude",
        workspace: str | None = "volume",
        mounts: list[Mount] | None = None,
        env: Mapping[str, str] | None = None,
        secrets: Mapping[str, str] | None = None,
        health_interval_s: float = 1.0,
        **kwargs: object,
    ) -> Container:
        """``workspace``: "volume" (a new named volume of 256 MiB), "tmpfs:<size>", a volume
        name, or None (no mount at /workspace)."""
        all_mounts = list(mounts or [])
        if workspace == "volume":
            # Sized, so the health check's disk-use verdict is about this workspace and not
            # the use of whatever disk the engine's volumes share with the test machine.
            workspace = self.volume(tmpfs_size="256m")
        tmpfs = {}
        if workspace and workspace.startswith("tmpfs:"):
            # HostConfig.Tmpfs takes mount(8) options, so the agent can own the mount.
            size = workspace.removeprefix("tmpfs:")
            tmpfs["/workspace"] = f"rw,size={size},uid=1000,gid=1000,mode=0755"
        elif workspace:
            all_mounts.append(Mount("/workspace", workspace, type="volume"))
        # What an environment gets (R-ENV-4 defaults), never the engine's own default:
        # the image's start depends on it (tmux picks its event backend by the soft limit)
        # and engines differ (1024 on one machine, 20000 on another).
        kwargs.setdefault("ulimits", [Ulimit(name="nofile", soft=1024, hard=2048)])
        container = self.client.containers.create(
            self.image,
            name=unique_name(backend),
            labels=LABELS,
            environment={"DOCKYARD_BACKEND": backend, **(env or {})},
            mounts=all_mounts,
            tmpfs=tmpfs,
            # The image's 60 s interval and 30 s start period would make every health test
            # wait minutes; the check itself is unchanged. 1 ms is the engine's minimum.
            healthcheck={
                "test": ["CMD", "/usr/local/bin/dockyard-healthcheck"],
                "interval": int(health_interval_s * SECOND_NS),
                "timeout": 10 * SECOND_NS,
                "retries": 3,
                "start_period": SECOND_NS // 1000,
            },
            **kwargs,
        )
        self.containers.append(container)
        if secrets:
            assert container.put_archive("/", secrets_tar(secrets))
        return container

    def start(self, **kwargs: object) -> Container:
        container = self.create(**kwargs)  # type: ignore[arg-type]
        container.start()
        return container

    def start_ready(self, **kwargs: object) -> Container:
        container = self.start(**kwargs)
        wait_ready(container)
        return container

    def cleanup(self) -> None:
        for container in self.containers:
            with contextlib.suppress(docker.errors.NotFound):
                container.remove(force=True, v=True)
        for name in self.volumes:
            with contextlib.suppress(docker.errors.NotFound):
                self.client.volumes.get(name).remove(force=True)


def ready(container: Container) -> bool:
    """Ready marker written; a container that stopped before it fails the test, logs shown."""
    container.reload()
    if container.status != "running":
        logs = container.logs().decode(errors="replace")
        pytest.fail(f"{container.name} is {container.status} before ready; logs:\n{logs}")
    return is_ready(container)


def wait_ready(container: Container, timeout: float = 90) -> None:
    wait_for(lambda: ready(container), timeout, what=f"/tmp/ready in {container.name}")
