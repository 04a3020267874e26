"""The backup helper's storage keys are no host user's to read (issue 25 item 9).

The helper gets the bucket-wide keys on its stdin (never in its Env, which ``docker
inspect`` shows) and restic holds them in its process environment. That process runs in
the host's pid namespace; were it uid 1000 (the agent's, on Debian the first login user),
that host user could read ``/proc/<pid>/environ``. This runs the helper exactly as the
engine does (its ``sh`` stands in for restic, holding the same environment) and reads its
environment from the host as uid 1000 and as root.
"""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path

import docker
import pytest

from dockyard import backup
from dockyard.backup.model import Repo
from tests.support.engine import RUN_ID, wait_for

pytestmark = [pytest.mark.docker]

KEY_ID = f"AKIAKEYS{RUN_ID[:12].upper()}"
SECRET = f"keys-secret-{RUN_ID}"
HOST_USER = "1000"


def test_the_helpers_storage_keys_are_not_readable_by_host_uid_1000(
    docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    credentials, cache = tmp_path / "credentials", tmp_path / "cache"
    credentials.mkdir(mode=0o700)
    cache.mkdir()
    keys = credentials / "s3-credentials"
    keys.write_text(f"[default]\naws_access_key_id = {KEY_ID}\naws_secret_access_key = {SECRET}\n")
    keys.chmod(0o600)
    settings = backup.Settings(
        repository="s3:http://127.0.0.1:9/bucket/keys",
        credentials_dir=str(credentials),
        cache_dir=str(cache),
        image="debian:bookworm-slim",
    )
    engine = backup.Backups(settings, environ={})
    marker = f"keys-{RUN_ID}"
    done: list[subprocess.CompletedProcess[str]] = []
    # The engine's own helper run: the keys on stdin, `sh` in restic's place.
    runner = threading.Thread(
        target=lambda: done.append(
            engine._helper(
                ["-c", f"echo {marker} >/dev/null; sleep 30"],
                repo=Repo(stack="keys", session=RUN_ID[:12]),
                command="sh",
                timeout=60,
            )
        )
    )
    runner.start()
    try:
        helpers: list[str] = []

        script = f"echo {marker} >/dev/null; sleep 30"

        def started() -> bool:
            # The helper's shell once the prelude has exec'd it (not the docker CLI, not
            # `timeout`, whose command lines hold the same text).
            helpers[:] = [
                p.name
                for p in Path("/proc").iterdir()
                if p.name.isdigit() and _cmdline(p) == ["sh", "-c", script]
            ]
            return bool(helpers)

        wait_for(started, 60, interval=0.2, what="the helper's process on the host")
        (pid,) = helpers
        status = Path(f"/proc/{pid}/status").read_text()
        uid = next(line.split()[1] for line in status.splitlines() if line.startswith("Uid:"))
        as_root = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
        # The control: the process does hold the keys (so the read below means something).
        assert SECRET in as_root
        assert KEY_ID in as_root
        as_user = subprocess.run(
            ["setpriv", f"--reuid={HOST_USER}", f"--regid={HOST_USER}", "--clear-groups",
             "cat", f"/proc/{pid}/environ"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert SECRET not in as_user.stdout, (
            f"host uid {HOST_USER} read the keys (helper uid {uid})"
        )
        assert as_user.returncode != 0, as_user
        assert "Permission denied" in as_user.stderr, as_user
        assert uid != HOST_USER
        # Nor its description on the engine.
        (container,) = [
            c
            for c in docker_client.containers.list(filters={"name": "dockyard-backup-"})
            if marker in " ".join(c.attrs["Args"])
        ]
        assert SECRET not in str(container.attrs["Config"]["Env"])
    finally:
        for pid in helpers:
            subprocess.run(["kill", pid], check=False)
        runner.join(90)
    assert not runner.is_alive()


def _cmdline(process: Path) -> list[str]:
    try:
        return (process / "cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
    except OSError:
        return []
