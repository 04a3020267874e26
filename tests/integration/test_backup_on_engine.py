"""Workspace backups on the real engine, with real restic and a local S3 server (issue 15).

Sessions are created and destroyed through the installed ``dockyard`` command with the
harness driver, exactly as tests/integration/test_sessions_on_engine.py does; the host's
settings point ``backup`` at moto's S3 server on loopback, reached through a gate that
can refuse connections (storage unreachable) without losing what the server holds.
The storage keys are distinctive strings that exist only in the credentials file, so a
search for them inside an environment means something.

Everything this module creates carries its tenant (containers, networks, volumes) or
lives in its temporary directories and server, and is removed even when a test fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import docker
import docker.errors
import pytest
from docker.models.containers import Container

from dockyard import backup
from tests.support.cli import DOCKYARD, Cli
from tests.support.engine import RUN_ID, is_ready, remove_volume, wait_for
from tests.support.s3 import Gate, MotoServer, s3_server
from tests.support.scripts import load_script

pytestmark = [pytest.mark.docker, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
# The host command as roles/workspace_backup installs it: the launcher of
# dockyard.workspace_backup (here the checkout's package, in the virtualenv).
LAUNCHER = REPO / "roles" / "workspace_backup" / "files" / "dockyard-workspace-backup.py"
TENANT = f"b{RUN_ID[:8]}"
BUCKET = f"dockyard-{RUN_ID[:8]}"
KEY_ID = f"AKIAB{RUN_ID[:10].upper()}"
SECRET = f"backup-secret-{RUN_ID}-do-not-leak"
HELPER_PREFIX = "dockyard-backup-"
idle = load_script("idle_monitor", "dockyard-idle-monitor.py")
health = load_script("env_health", "dockyard-health.py")


@dataclass
class Host(Cli):
    """The machine's side: the dockyard command, its settings, the backup files."""

    state: Path
    credentials: Path
    cache: Path
    host_config: Path
    server: MotoServer
    gate: Gate

    timeout: ClassVar[float] = 600

    @property
    def repository(self) -> str:
        return f"s3:http://127.0.0.1:{self.gate.port}/{BUCKET}/dockyard"

    def up(self, session: str, restore: str = "none") -> dict[str, Any]:
        request = {"sessionId": session, "cwd": str(self.project), "tenant": TENANT}
        if restore != "none":
            request["restore"] = restore
        return self.json("up", "--request", "-", stdin=json.dumps(request))  # type: ignore[no-any-return]

    def snapshots(self, session: str) -> list[dict[str, Any]]:
        return self.json("snapshots", session, "--tenant", TENANT)  # type: ignore[no-any-return]

    def password(self, session: str) -> str:
        return (self.credentials / "passwords" / TENANT / session).read_text().strip()

    def engine(self) -> backup.Backups:
        settings = backup.Settings(
            repository=self.repository,
            credentials_dir=str(self.credentials),
            cache_dir=str(self.cache),
        )
        return backup.Backups(settings, environ=self.env)

    def host_command(self, *args: str) -> subprocess.CompletedProcess[str]:
        """The role's command, as the schedule and the hooks run it."""
        return subprocess.run(
            [sys.executable, str(LAUNCHER), "--config",
             str(self.host_config), *args],
            env=self.env, capture_output=True, text=True, timeout=900, check=False,
        )  # fmt: skip

    def hook(self) -> list[str]:
        return [
            sys.executable,
            str(LAUNCHER),
            "--config",
            str(self.host_config),
            "hook",
        ]


def pack_bytes(server: MotoServer) -> int:
    """Bytes of the data packs every repository in the bucket holds (restic's data/)."""
    pages = server.client().get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
    return sum(
        int(item["Size"])
        for page in pages
        for item in page.get("Contents", [])
        if "/data/" in item["Key"]
    )


def _sweep(client: docker.DockerClient) -> None:
    for container in client.containers.list(all=True, filters={"name": HELPER_PREFIX}):
        env = container.attrs.get("Config", {}).get("Env") or []
        if any(BUCKET in item for item in env):
            container.remove(force=True)
    selector = {"label": f"dockyard.stack={TENANT}"}
    for container in client.containers.list(all=True, filters=selector):
        container.remove(force=True, v=True)
    for network in client.networks.list(filters=selector):
        network.remove()
    for volume in client.volumes.list(filters=selector):
        remove_volume(volume)


@pytest.fixture(scope="module")
def host(
    docker_client: docker.DockerClient, core_image: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Host]:
    assert DOCKYARD.is_file(), f"the dockyard console script is not installed at {DOCKYARD}"
    if shutil.which("restic") is None:
        pytest.fail("restic is not installed (apt-get install restic)")
    base = tmp_path_factory.mktemp("backup")
    state, project = base / "state", base / "project"
    credentials, cache = base / "credentials", base / "cache"
    for directory in (state, project, cache):
        directory.mkdir()
    credentials.mkdir(mode=0o700)
    keys = credentials / "s3-credentials"
    keys.write_text(f"[default]\naws_access_key_id = {KEY_ID}\naws_secret_access_key = {SECRET}\n")
    keys.chmod(0o600)
    (state / "image.json").write_text(json.dumps({"imageRef": core_image}))
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("AWS_") and key != "GITHUB_ACTOR"
    }
    with s3_server(KEY_ID, SECRET, BUCKET) as (server, gate):
        repository = f"s3:http://127.0.0.1:{gate.port}/{BUCKET}/dockyard"
        settings = base / "settings.yaml"
        settings.write_text(
            json.dumps(
                {
                    "healthcheck": {"interval": "5s"},
                    "backup": {
                        "repository": repository,
                        "credentialsDir": str(credentials),
                        "cacheDir": str(cache),
                    },
                }
            )
        )
        host_config = base / "workspace-backup.json"
        host_config.write_text(
            json.dumps(
                {
                    "repository": repository,
                    "credentials_dir": str(credentials),
                    "cache_dir": str(cache),
                    "label": f"dockyard.stack={TENANT}",
                }
            )
        )
        no_proxy = ",".join(filter(None, ["127.0.0.1", "localhost", env.get("NO_PROXY")]))
        env.update(
            {
                "DOCKYARD_STATE_DIR": str(state),
                "DOCKYARD_CONFIG": str(settings),
                "DOCKYARD_DRIVER": "tests.harness.sessions:HarnessDriver",
                # The dockyard command's and the host command's trail, read below.
                "DOCKYARD_AUDIT_LOG": str(state / "audit.jsonl"),
                "PYTHONPATH": str(REPO),
                "NO_PROXY": no_proxy,
                "no_proxy": no_proxy,
            }
        )
        try:
            yield Host(env, project, state, credentials, cache, host_config, server, gate)
        finally:
            _sweep(docker_client)


def container_of(client: docker.DockerClient, manifest: dict[str, Any]) -> Container:
    container = client.containers.get(manifest["container"]["id"])
    wait_for(lambda: is_ready(container), 120, what=f"{container.name} ready")
    return container


def as_agent(container: Container, script: str) -> str:
    result = container.exec_run(["bash", "-c", script], user="1000")
    assert result.exit_code == 0, result.output.decode(errors="replace")
    return result.output.decode()


# A workspace as agents leave them: source text, binaries, nested and empty directories,
# an empty file, a symlink, a hard link, odd names, an executable, a private file.
POPULATE = r"""
set -euo pipefail
cd /workspace
mkdir -p src/pkg/deep "with space" node_modules/left-pad empty-dir
for i in $(seq 1 40); do
  printf 'def f%d():\n    return %d\n' "$i" "$i" > "src/pkg/mod_$i.py"
done
head -c 3000000 /dev/urandom > build.bin
head -c 1 /dev/urandom > src/pkg/deep/one-byte
: > empty.txt
printf 'résumé ✓\n' > "with space/naïve ünïcode.md"
printf '#!/bin/sh\necho hi\n' > run.sh && chmod 755 run.sh
printf 'private\n' > .env.local && chmod 600 .env.local
ln -s src/pkg/mod_1.py link-to-mod
ln build.bin hardlink.bin
seq 1 200000 > node_modules/left-pad/index.js
"""

# Path, type, mode, owner, size and link target of every entry, and the content digest
# of every regular file: identical trees give identical listings.
LISTING = r"""
cd /workspace
# A directory's own size depends on the filesystem's history, not on what it holds.
{ find . -mindepth 1 ! -type d -printf '%p %y %m %U:%G %s %l\n'
  find . -mindepth 1 -type d -printf '%p %y %m %U:%G\n'; } | LC_ALL=C sort
find . -type f -print0 | LC_ALL=C sort -z | xargs -0r sha256sum
"""


def listing(container: Container) -> str:
    return as_agent(container, LISTING)


def snapshot_count(host: Host, session: str) -> int:
    return len(host.snapshots(session))


# --- backup -> destroy -> create -> restore ---------------------------------------------------


def test_backup_destroy_create_restore_gives_byte_identical_files(
    host: Host, docker_client: docker.DockerClient
) -> None:
    first = host.up("keep", restore="latest")  # no backup yet: starts empty
    container = container_of(docker_client, first)
    assert as_agent(container, "ls -A /workspace") == ""
    as_agent(container, POPULATE)
    before = listing(container)
    assert "hardlink.bin" in before
    assert "naïve ünïcode.md" in before

    made = host.json("backup", "keep", "--tenant", TENANT)
    assert made["files"] == 48
    assert made["reason"] == "manual"
    assert stat_mode(host.credentials / "passwords" / TENANT / "keep") == 0o600

    down = host.run("down", "keep", "--tenant", TENANT, "--json")
    assert down.returncode == 0, down.stderr
    assert "final backup of keep" in down.stderr
    assert (
        docker_client.volumes.list(
            filters={"label": [f"dockyard.stack={TENANT}", "dockyard.session=keep"]}
        )
        == []
    )
    tags = [s["tags"] for s in host.snapshots("keep")]
    assert tags == [["dockyard", "manual"], ["dockyard", "destroy"]]

    again = host.up("keep", restore="latest")
    container = container_of(docker_client, again)
    assert listing(container) == before
    restores = [e for e in host.json("audit", "--session", "keep") if e["action"] == "restore"]
    assert [e["result"] for e in restores] == ["ok", "ok"]
    assert "nothing to restore" in restores[0]["detail"]
    assert "48 files" in restores[1]["detail"]
    backups = [e for e in host.json("audit", "--session", "keep") if e["action"] == "backup"]
    assert [e["detail"].split(":")[0] for e in backups] == ["manual", "destroy"]


def stat_mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_restore_into_another_session_never_over_a_non_empty_workspace_unless_forced(
    host: Host, docker_client: docker.DockerClient
) -> None:
    keep = container_of(docker_client, host.json("show", "keep", "--tenant", TENANT))
    copy = container_of(docker_client, host.up("copy"))
    restored = host.json("restore", "keep", "--into", "copy", "--tenant", TENANT)
    assert restored["session"] == "copy"
    assert restored["source"] == f"{TENANT}/keep"
    assert restored["files"] == 48
    assert listing(copy) == listing(keep)

    as_agent(copy, "echo mine > /workspace/only-in-copy && rm /workspace/build.bin")
    mine = listing(copy)
    refused = host.run("restore", "keep", "--into", "copy", "--tenant", TENANT, "--json")
    assert refused.returncode == 1
    message = json.loads(refused.stdout)["error"]["problems"][0]
    assert "session copy: its workspace" in message
    assert "is not empty; nothing was restored" in message
    assert listing(copy) == mine

    forced = host.json("restore", "keep", "--into", "copy", "--force", "--tenant", TENANT)
    assert forced["previous_snapshot"]
    assert listing(copy) == listing(keep)
    (saved,) = [s for s in host.snapshots("copy") if "pre-restore" in s["tags"]]
    assert saved["short_id"] == forced["previous_snapshot"][:8]
    # What was overwritten is in that snapshot: nothing is lost by --force.
    back = host.json(
        "restore", "copy", "--snapshot", saved["short_id"], "--force", "--tenant", TENANT
    )
    assert back["snapshot"].startswith(saved["short_id"])
    assert listing(copy) == mine


# --- secrets ------------------------------------------------------------------------------


def test_password_and_storage_keys_are_never_inside_an_environment(
    host: Host, docker_client: docker.DockerClient
) -> None:
    secrets = [host.password("keep"), host.password("copy"), KEY_ID, SECRET]
    environments = {
        name: container_of(docker_client, host.json("show", name, "--tenant", TENANT))
        for name in ("keep", "copy")
    }
    as_agent(environments["keep"], "head -c 150000000 /dev/urandom > /workspace/slow.bin")
    running = subprocess.Popen(
        [str(DOCKYARD), "backup", "keep", "--tenant", TENANT, "--json"],
        env=host.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=host.project,
    )  # fmt: skip
    try:
        helpers: list[Container] = []

        def helper_running() -> bool:
            helpers[:] = docker_client.containers.list(filters={"name": HELPER_PREFIX})
            return any(BUCKET in " ".join(h.attrs["Config"]["Env"] or []) for h in helpers)

        wait_for(helper_running, 120, interval=0.2, what="the backup's helper container")
        # While restic holds the keys and the password: the environment's processes, its
        # files, its engine-side description (and the helper's own).
        for name, container in environments.items():
            # Read from the host: the environment drops every capability, so not even its
            # root could read all it holds. Every process's environment...
            pids = [row[0] for row in container.top(ps_args="-eo pid")["Processes"]]
            environ = ""
            for pid in pids:
                with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                    environ += Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
            assert "DOCKYARD_SESSION_ID=" in environ  # the agent's own processes were read
            assert [s for s in secrets if s in environ] == [], f"{name}: a secret in a process env"
            # ...and every file it sees: its root filesystem with its volumes mounted.
            root = f"/proc/{container.attrs['State']['Pid']}/root/"
            search = subprocess.run(
                ["grep", "-rlF", "--exclude-dir=proc", "--exclude-dir=sys", "--exclude-dir=dev",
                 *[a for s in secrets for a in ("-e", s)], root],
                capture_output=True, text=True, check=False, timeout=600,
            )  # fmt: skip
            assert search.returncode == 1, f"{name}: {search.stdout}{search.stderr}"
            assert Path(root, "workspace", ".env.local").read_text() == "private\n"
            described = json.dumps(docker_client.api.inspect_container(container.id))
            mounts = [m.get("Name") for m in container.attrs["Mounts"] if m.get("Name")]
            described += json.dumps([docker_client.api.inspect_volume(v) for v in mounts])
            described += json.dumps(
                [
                    docker_client.api.inspect_network(n)
                    for n in container.attrs["NetworkSettings"]["Networks"]
                ]
            )
            assert [s for s in secrets if s in described] == [], f"{name}: a secret in inspect"
        for helper in helpers:
            # Not even the helper's description holds one: they travel on its stdin.
            try:
                described = json.dumps(docker_client.api.inspect_container(helper.id))
            except docker.errors.NotFound:
                continue  # finished meanwhile
            assert [s for s in secrets if s in described] == [], "a secret in the helper"
    finally:
        _out, err = running.communicate(timeout=600)
    assert running.returncode == 0, err
    on_host = [
        host.state / "audit.jsonl",
        *host.state.rglob("*.json"),
        *host.project.rglob("*.json"),
    ]
    assert [p for p in on_host if any(s in p.read_text(errors="replace") for s in secrets)] == []
    as_agent(environments["keep"], "rm /workspace/slow.bin")


# --- failure without loss -------------------------------------------------------------------


def test_unreachable_storage_fails_clearly_leaves_the_workspace_and_the_next_run_retries(
    host: Host, docker_client: docker.DockerClient
) -> None:
    keep = container_of(docker_client, host.json("show", "keep", "--tenant", TENANT))
    as_agent(keep, "echo changed > /workspace/changed.txt")
    before = listing(keep)
    count = snapshot_count(host, "keep")
    host.gate.down()
    try:
        failed = host.run("backup", "keep", "--tenant", TENANT, "--json")
        assert failed.returncode == 1
        (message,) = json.loads(failed.stdout)["error"]["problems"]
        assert message.startswith(f"session keep (stack {TENANT}): backup failed: the storage at ")
        assert "is unreachable" in message
        assert "connection refused" in message
        scheduled = host.host_command("run")
        assert scheduled.returncode == 1
        assert "ERROR: workspace-backup: session keep" in scheduled.stderr
        assert listing(keep) == before
    finally:
        host.gate.up()
    retried = host.host_command("run")
    assert retried.returncode == 0, retried.stderr
    assert f"{TENANT}/keep: snapshot " in retried.stdout
    assert snapshot_count(host, "keep") == count + 1
    state = json.loads((host.cache / "state.json").read_text())
    assert f"{TENANT}/keep" in state["last_success"]
    assert f"{TENANT}/keep" not in state["last_failure"]
    # The host's own audit lines: the failed run, then the retry.
    lines = [
        e
        for e in host.json("audit", "--session", "keep")
        if e["actor"] == "host:workspace-backup" and e["action"] == "backup"
    ]
    assert [e["result"] for e in lines[-2:]] == ["error", "ok"]
    assert "is unreachable" in lines[-2]["detail"]
    assert lines[-1]["detail"].startswith("scheduled: snapshot ")
    assert lines[-1]["tenant"] == TENANT
    # The first scheduled run also applied retention and ran restic check.
    assert "check clean" in retried.stdout


def test_a_backup_killed_with_sigkill_midway_then_the_next_succeeds_and_check_is_clean(
    host: Host, docker_client: docker.DockerClient
) -> None:
    copy = container_of(docker_client, host.json("show", "copy", "--tenant", TENANT))
    as_agent(copy, "head -c 400000000 /dev/urandom > /workspace/big.bin")
    count = snapshot_count(host, "copy")
    packed = pack_bytes(host.server)
    running = subprocess.Popen(
        [str(DOCKYARD), "backup", "copy", "--tenant", TENANT, "--json"],
        env=host.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=host.project,
    )  # fmt: skip
    helper: list[Container] = []

    def backing_up() -> bool:
        for candidate in docker_client.containers.list(filters={"name": HELPER_PREFIX}):
            if any("/copy" in e for e in candidate.attrs["Config"]["Env"] or []) and (
                "backup" in candidate.attrs["Args"]
            ):
                helper[:] = [candidate]
                return True
        return False

    wait_for(backing_up, 120, interval=0.1, what="the backup of copy to start")
    # Midway: its first data packs are stored (a fixed pause could come after the end on a
    # quick machine, or before the first pack on a loaded one).
    wait_for(
        lambda: pack_bytes(host.server) > packed or running.poll() is not None,
        120,
        interval=0.2,
        what="the backup of copy to store a data pack",
    )
    assert running.poll() is None, "the backup ended before a data pack was seen stored"
    helper[0].kill(signal="SIGKILL")
    out, err = running.communicate(timeout=300)
    assert running.returncode == 1, (out, err)
    assert "restic was killed (SIGKILL) before it finished" in out
    assert snapshot_count(host, "copy") == count

    made = host.json("backup", "copy", "--tenant", TENANT)
    assert made["bytes"] >= 400_000_000
    assert snapshot_count(host, "copy") == count + 1
    checked = host.engine().maintain(backup.Repo(TENANT, "copy"), 100, 100, 100)
    assert checked.ok, checked.output
    assert "no errors were found" in checked.output
    as_agent(copy, "rm /workspace/big.bin")


def test_a_wrong_password_names_the_session_and_overwrites_nothing(
    host: Host, docker_client: docker.DockerClient
) -> None:
    copy = container_of(docker_client, host.json("show", "copy", "--tenant", TENANT))
    before = listing(copy)
    password_file = host.credentials / "passwords" / TENANT / "keep"
    right = password_file.read_text()
    password_file.write_text("not-the-password\n")
    try:
        result = host.run(
            "restore", "keep", "--into", "copy", "--force", "--tenant", TENANT, "--json"
        )
        assert result.returncode == 1
        (message,) = json.loads(result.stdout)["error"]["problems"]
        assert message.startswith(f"session keep (stack {TENANT}): listing snapshots failed")
        assert "wrong password or no key found" in message
        assert "nothing was changed" in message
        assert listing(copy) == before
        refused = host.run("backup", "keep", "--tenant", TENANT, "--json")
        assert refused.returncode == 1
        assert "session keep" in refused.stdout
        assert "wrong password" in refused.stdout
    finally:
        password_file.write_text(right)
    assert host.json("backup", "keep", "--tenant", TENANT)["snapshot"]


# --- hooks: refresh, idle stop, power-off ---------------------------------------------------


def test_refresh_backs_up_before_it_recreates(host: Host) -> None:
    count = snapshot_count(host, "copy")
    result = host.run("refresh", "copy", "--tenant", TENANT, "--json")
    assert result.returncode == 0, result.stderr
    snapshots = host.snapshots("copy")
    assert len(snapshots) == count + 1
    assert snapshots[-1]["tags"] == ["dockyard", "refresh"]


def test_idle_monitor_backs_up_before_stopping_and_before_power_off(
    host: Host, docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    label = f"dockyard.stack={TENANT}"
    marker = tmp_path / "powered-off"
    config = tmp_path / "idle.json"
    t0 = 1_800_000_000.0

    def monitor(state: str, **extra: Any) -> int:
        config.write_text(
            json.dumps(
                {
                    "state_file": str(tmp_path / state),
                    "label": label,
                    "idle_minutes": 30,
                    "cpu_threshold": 50,
                    "action": "poweroff",
                    "poweroff_command": ["touch", str(marker)],
                    "backup_command": host.hook(),
                    **extra,
                }
            )
        )
        environ = os.environ.copy()
        os.environ.update(host.env)
        try:
            idle.main(["--config", str(config)], clock=lambda: t0)
            return int(idle.main(["--config", str(config)], clock=lambda: t0 + 31 * 60))
        finally:
            os.environ.clear()
            os.environ.update(environ)

    counts = {s: snapshot_count(host, s) for s in ("keep", "copy")}
    host.gate.down()
    try:
        assert monitor("a.json") == 1
        assert not marker.exists(), "powered off although the backups failed"
    finally:
        host.gate.up()
    assert {s: snapshot_count(host, s) for s in counts} == counts

    assert monitor("b.json") == 0
    assert marker.exists()
    for session, count in counts.items():
        snapshots = host.snapshots(session)
        assert len(snapshots) == count + 1
        assert snapshots[-1]["tags"] == ["dockyard", "poweroff"]
        # Backed up before the power-off command ran.
        assert parse_time(snapshots[-1]["time"]) <= marker.stat().st_mtime

    marker.unlink()
    host.gate.down()
    try:
        assert monitor("c.json", poweroff_without_backup=True) == 1
        assert marker.exists(), "told to power off anyway, it did not"
    finally:
        host.gate.up()

    # action: stop backs each one up first, then stops it.
    copy = docker_client.containers.get(
        host.json("show", "copy", "--tenant", TENANT)["container"]["id"]
    )
    count = snapshot_count(host, "copy")
    assert (
        monitor(
            "d.json",
            action="stop",
            label=f"dockyard.environment={copy.labels['dockyard.environment']}",
        )
        == 0
    )
    copy.reload()
    assert copy.status == "exited"
    last = host.snapshots("copy")[-1]
    assert len(host.snapshots("copy")) == count + 1
    assert last["tags"] == ["dockyard", "idle-stop"]
    stopped_at = parse_time(copy.attrs["State"]["FinishedAt"])
    assert parse_time(last["time"]) <= stopped_at
    # The schedule backs a stopped environment up once more (what it wrote between the
    # hook's backup and its stop), then skips it while it stays stopped.
    for _ in range(2):
        scheduled = host.host_command("run")
        assert scheduled.returncode == 0, scheduled.stderr
    assert f"{TENANT}/copy: unchanged since its last backup (stopped)" in scheduled.stdout
    assert f"{TENANT}/keep: snapshot " in scheduled.stdout
    copy.start()


def parse_time(text: str) -> float:
    from datetime import datetime

    base, _, fraction = text.rstrip("Z").partition(".")
    digits = (fraction.split("+")[0].split("-")[0] + "000000")[:6]
    return datetime.fromisoformat(f"{base}.{digits}+00:00").timestamp()


def test_health_refresh_backs_up_first(
    host: Host, docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    count = snapshot_count(host, "keep")
    # The engine's own name for it (a tenant's session: dockyard-t.<tenant>.keep).
    keep = docker_client.containers.get(
        host.json("show", "keep", "--tenant", TENANT)["container"]["id"]
    )
    config = tmp_path / "health.json"
    config.write_text(
        json.dumps(
            {
                "label": f"dockyard.environment={keep.labels['dockyard.environment']}",
                "report_file": str(tmp_path / "report.json"),
                "refresh": True,
                "max_age_hours": 0.0001,
                "refresh_backup_command": host.hook(),
            }
        )
    )
    environ = os.environ.copy()
    os.environ.update(host.env)
    try:
        code = health.main(["--config", str(config)])
    finally:
        os.environ.clear()
        os.environ.update(environ)
    report = json.loads((tmp_path / "report.json").read_text())
    actions = {e["name"]: e["action"] for e in report["environments"]}
    assert code == 0, actions
    assert any(a.startswith("refreshed as") for a in actions.values()), actions
    snapshots = host.snapshots("keep")
    assert len(snapshots) >= count + 1
    assert ["dockyard", "refresh"] in [s["tags"] for s in snapshots[count:]]
