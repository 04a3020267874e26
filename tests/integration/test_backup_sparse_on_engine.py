"""Backups of sparse files on the engine (issue 25 item 4): real restic, a local S3 server,
the workspaces of two environments with bounded disks.

A file longer than any environment could write (8 TiB, planted from outside with
``truncate``: inside, the fsize rlimit refuses it) is left out of the backup instead of
being read as terabytes of zeros; a sparse file within the bound is backed up and comes
back sparse; the helper container is bounded in CPU, memory, processes and time, and a
helper that runs past its time is gone afterwards.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from typing import Any

import docker
import pytest

from dockyard import backup
from tests.support.engine import RUN_ID, wait_for
from tests.support.s3 import s3_server
from tests.support.stacks import Deployed

pytestmark = [pytest.mark.docker, pytest.mark.slow]

BUCKET = f"sparse-{RUN_ID[:8]}"
KEY_ID = f"AKIAS{RUN_ID[:10].upper()}"
SECRET = f"sparse-secret-{RUN_ID}"
HELPER_PREFIX = "dockyard-backup-"
# 4 KiB blocks from 512 MiB on: ext4 then holds files up to 16 TiB (sparse).
DISK = {"workspace": "1g", "config": "32m", "checkpoints": "32m", "home": "32m", "tmp": "32m"}
PLANT = (
    "truncate -s 8T /data/z && truncate -s 200M /data/s"
    " && dd if=/dev/urandom of=/data/s bs=1M count=1 conv=notrunc status=none"
    " && dd if=/dev/urandom of=/data/s bs=1M count=1 seek=199 conv=notrunc status=none"
    " && chown 1000:1000 /data/z /data/s"
)


@pytest.fixture(scope="module")
def stack(deploy: Any) -> Deployed:
    deployed = deploy(
        "sparse",
        {
            "limits": {"cpus": 1, "memory": "512m", "disk": DISK},
            "environments": [{"sessionId": "src"}, {"sessionId": "dst"}],
        },
    )
    deployed.wait_ready()
    return deployed


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    if shutil.which("restic") is None:
        pytest.fail("restic is not installed (apt-get install restic)")
    base = tmp_path_factory.mktemp("sparse-backup")
    credentials, cache = base / "credentials", base / "cache"
    credentials.mkdir(mode=0o700)
    cache.mkdir()
    keys = credentials / "s3-credentials"
    keys.write_text(f"[default]\naws_access_key_id = {KEY_ID}\naws_secret_access_key = {SECRET}\n")
    keys.chmod(0o600)
    with s3_server(KEY_ID, SECRET, BUCKET) as (_server, gate):
        yield {
            "repository": f"s3:http://127.0.0.1:{gate.port}/{BUCKET}/dockyard",
            "credentials_dir": str(credentials),
            "cache_dir": str(cache),
        }


def engine(settings: dict[str, Any], **extra: Any) -> backup.Backups:
    no_proxy = "127.0.0.1,localhost"
    environ = {
        **{k: v for k, v in os.environ.items() if not k.startswith("AWS_")},
        "NO_PROXY": no_proxy,
        "no_proxy": no_proxy,
    }
    return backup.Backups(backup.Settings.from_mapping({**settings, **extra}), environ=environ)


def workspace(stack: Deployed, session: str) -> backup.Workspace:
    volume = f"{stack.container(session).labels['dockyard.environment']}-workspace"
    return backup.Workspace(volume=volume, repo=backup.Repo(stack.stack, session))


def in_volume(client: docker.DockerClient, volume: str, script: str) -> str:
    out = client.containers.run(
        "debian:bookworm-slim",
        ["sh", "-c", script],
        volumes={volume: {"bind": "/data", "mode": "rw"}},
        remove=True,
        network_mode="none",
    )
    return out.decode()


def helpers_left(client: docker.DockerClient) -> list[str]:
    # sparse: no inspect per container, so one removed meanwhile (anyone's) is no error.
    listed = client.containers.list(all=True, sparse=True, filters={"name": HELPER_PREFIX})
    return [n for c in listed for n in c.attrs.get("Names", []) if HELPER_PREFIX in n]


def test_a_sparse_workspace_backs_up_without_reading_holes_and_restores_sparse(
    stack: Deployed, settings: dict[str, Any], docker_client: docker.DockerClient
) -> None:
    source, target = workspace(stack, "src"), workspace(stack, "dst")
    in_volume(docker_client, source.volume, PLANT)
    # 300 s: reading 8 TiB of holes takes hours (restic 0.14 reads them as data), so
    # leaving the file out is what lets this finish; a helper past it fails the test.
    result = engine(settings, timeout_s=300).backup(source)
    assert result.files == 1, f"only /data/s is backed up, /data/z is left out: {result}"
    restored = engine(settings, timeout_s=300).restore(source.repo, target)
    assert restored.files == 1, restored
    out = in_volume(docker_client, target.volume, "stat -c '%s %b %B' /data/s; ls /data")
    size, blocks, block_size = (int(x) for x in out.split()[:3])
    assert size == 200 * 1024 * 1024, out
    assert blocks * block_size <= 8 * 1024 * 1024, f"restored /data/s is not sparse: {out}"
    assert "z" not in out.split()[3:], out
    assert helpers_left(docker_client) == []


def test_the_backup_helper_is_bounded_in_time_cpu_memory_and_processes(
    stack: Deployed, settings: dict[str, Any], docker_client: docker.DockerClient
) -> None:
    source = workspace(stack, "src")
    in_volume(docker_client, source.volume, "[ -e /data/z ] || truncate -s 8T /data/z")
    # With the size rule lifted, restic reads the holes: the time bound has to stop it.
    slow = engine(settings, timeout_s=8, max_file_mb=16 * 1024 * 1024)
    seen: list[list[str]] = []

    def runner(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        seen.append(list(argv))
        return subprocess.run(argv, **kwargs)

    slow.runner = runner
    with pytest.raises(backup.BackupError, match="did not finish within 8 s"):
        slow.backup(source)
    run = next(a for a in seen if "run" in a and any("restic" in x for x in a))
    for flag, value in (
        ("--cpu-quota", "100000"),
        ("--memory", "1024m"),
        ("--pids-limit", "256"),
    ):
        assert run[run.index(flag) + 1] == value, run
    assert run[run.index("timeout") : run.index("timeout") + 4] == ["timeout", "-k", "10", "8"]
    # `--rm` removes it once it exited: moments, never the hours the read would take.
    wait_for(lambda: not helpers_left(docker_client), 30, what="the helper to be gone")


def test_settings_refuse_unbounded_helpers() -> None:
    for key, value in (("timeout_s", 0), ("helper_memory_mb", 1), ("helper_cpus", True)):
        with pytest.raises(backup.ConfigError, match=f"{key}: {value!r} is not allowed"):
            backup.Settings.from_mapping({"repository": "s3:host/bucket", key: value})
