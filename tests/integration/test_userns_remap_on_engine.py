"""dockyard's containers on an engine with user-namespace remap (issue 25 item 9).

A second dockerd (tests/support/second_engine.py: its own socket and data root; the
machine's shared engine is never restarted) runs with ``userns-remap: default``, what the
docker_host role writes for ``docker_host_userns_remap: default``. On it:

- an agent-shaped container (uid 1000, no capabilities, a named volume, a root-owned
  upload) runs, writes its volume, and its uid 1000 is no host user's: on the host it is
  the remap range's, and the host's uid 1000 cannot read its environment;
- the backup helper, run by the restic engine with that engine's CLI, starts (it shares
  the host's network, uts and pid namespaces, which needs ``--userns host`` under remap);
  without that flag the engine refuses it.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from dockyard import backup
from dockyard.backup.model import Repo
from tests.support.engine import RUN_ID
from tests.support.second_engine import Engine, second_engine

pytestmark = [pytest.mark.docker, pytest.mark.slow]

IMAGE = "debian:bookworm-slim"
SECRET = f"remap-secret-{RUN_ID}"


@pytest.fixture(scope="module")
def remapped() -> Iterator[Engine]:
    # The remapped root must traverse every directory above its data root (o+x): not
    # under pytest's 0700 temporary directories.
    root = Path(tempfile.mkdtemp(prefix=f"dockyard-remap-{RUN_ID[:8]}-", dir="/var/tmp"))
    root.chmod(0o711)
    try:
        with second_engine(root, images=[IMAGE], config={"userns-remap": "default"}) as engine:
            yield engine
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _host_uid(pid: int) -> str:
    status = Path(f"/proc/{pid}/status").read_text()
    return next(line.split()[1] for line in status.splitlines() if line.startswith("Uid:"))


def test_an_agent_shaped_container_runs_and_its_uid_is_no_host_users(remapped: Engine) -> None:
    client = remapped.client
    info = client.info()
    assert "name=userns" in info["SecurityOptions"], info["SecurityOptions"]
    volume = client.volumes.create(f"dockyard-remap-{RUN_ID[:8]}")
    # A fresh volume's root is root's: dockyard's helpers give it to the agent, as this
    # one does (root in a remapped container owns only the remapped range).
    client.containers.run(
        IMAGE, ["chown", "1000:1000", "/w"], volumes={volume.name: {"bind": "/w"}}, remove=True
    )
    container = client.containers.create(
        IMAGE,
        ["sleep", "60"],
        user="1000:1000",
        cap_drop=["ALL"],
        security_opt=["no-new-privileges:true"],
        environment={"REMAP_SECRET": SECRET},
        volumes={volume.name: {"bind": "/workspace", "mode": "rw"}},
    )
    try:
        # An upload as the program makes them (secrets, the SSH CA: owned by root or 1000).
        data = io.BytesIO()
        with tarfile.open(fileobj=data, mode="w") as archive:
            member = tarfile.TarInfo("ca.pub")
            member.size, member.uid, member.gid, member.mode = 4, 0, 0, 0o644
            archive.addfile(member, io.BytesIO(b"key\n"))
        assert container.put_archive("/etc", data.getvalue())
        container.start()
        container.reload()
        wrote = container.exec_run(["sh", "-c", "echo hi > /workspace/f && cat /etc/ca.pub"])
        assert (wrote.exit_code, wrote.output) == (0, b"key\n")
        pid = container.attrs["State"]["Pid"]
        host_uid = _host_uid(pid)
        assert host_uid != "1000"
        assert int(host_uid) >= 100000, host_uid  # the subordinate range, here dockremap's
        read = subprocess.run(
            ["setpriv", "--reuid=1000", "--regid=1000", "--clear-groups",
             "cat", f"/proc/{pid}/environ"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert SECRET not in read.stdout
        assert read.returncode != 0, read
        assert SECRET in Path(f"/proc/{pid}/environ").read_text(errors="replace")  # control
    finally:
        container.remove(force=True)
        volume.remove(force=True)


def test_the_backup_helper_starts_under_remap(remapped: Engine, tmp_path: Path) -> None:
    credentials, cache = tmp_path / "credentials", tmp_path / "cache"
    credentials.mkdir(mode=0o700)
    cache.mkdir()
    keys = credentials / "s3-credentials"
    keys.write_text(f"[default]\naws_access_key_id = AKIA{RUN_ID[:8]}\naws_secret_access_key = x\n")
    keys.chmod(0o600)
    settings = backup.Settings(
        repository="s3:http://127.0.0.1:9/bucket/remap",
        credentials_dir=str(credentials),
        cache_dir=str(cache),
        image=IMAGE,
        docker=("docker", "-H", remapped.url),
    )
    engine = backup.Backups(settings, environ={})
    repo = Repo(stack="remap", session=RUN_ID[:12])
    result = engine._helper(["-c", "id -u; cat /proc/1/comm"], repo=repo, command="sh", timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[0] == "0"
    # The control: the same run without --userns host is refused by this engine.
    refused: list[str] = []

    def without_flag(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        index = argv.index("--userns")
        del argv[index : index + 2]
        refused.append(" ".join(argv))
        return subprocess.run(argv, **kwargs)  # type: ignore[call-overload,no-any-return]

    bare = backup.Backups(settings, environ={}, runner=without_flag)
    result = bare._helper(["-c", "id -u"], repo=repo, command="sh", timeout=60)
    assert refused
    assert result.returncode != 0
    assert "user namespaces are enabled" in result.stderr, result.stderr
