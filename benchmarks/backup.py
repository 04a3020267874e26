"""Workspace backups with restic against ``tar | gzip`` of the same tree, in the same run.

A workspace volume of mixed files (default 1 GiB, ``DOCKYARD_BENCH_BACKUP_MB``): 40 %
random binaries, 25 % a dependency tree copied several times (``node_modules``-like),
20 % source-like text in 8 KiB files, 15 % logs. Storage: moto's S3 server on loopback
(tests/support/s3.py), objects on local disk. Figures, each against its baseline:

- first backup (restic to S3) vs ``tar -c | gzip`` of the tree to a local file;
- incremental backup after changing 1 MiB vs the same ``tar | gzip`` again (an archive
  has no incremental: it is all written again);
- full restore into an empty workspace (the ``dockyard restore`` path: snapshot listing,
  restore, verification of file count and bytes) vs ``gunzip | tar -x``;
- bytes stored after the incremental vs two archives (the first and the second).

Both sides read the volume through a helper container; gzip is single-threaded and
restic uses every core (2 here): that is the comparison a user makes. The machine is
shared and the S3 server is Python: read the times as ±30 %.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.common import RUNS, engine, stat_row, summary, table, write_result

SIZE_MB = int(os.environ.get("DOCKYARD_BENCH_BACKUP_MB", "1024"))
SAMPLES = int(os.environ.get("DOCKYARD_BENCH_BACKUP_RUNS", str(RUNS)))
IMAGE = "debian:bookworm-slim"
BUCKET = "dockyard-bench"

# As the agent (uid 1000) leaves a workspace; $1 is the size in MiB.
POPULATE = r"""
set -eu
cd /data
mb=$1
mkdir -p bin src logs node_modules
n=$((mb * 40 / 100)); i=0
while [ "$n" -gt 0 ]; do
  s=$((n > 48 ? 48 : n)); head -c "${s}M" /dev/urandom > "bin/blob$i.bin"; n=$((n - s)); i=$((i + 1))
done
# Source-like text, 8 KiB files.
seq 1 $((mb * 20 * 1024 * 1024 / 100 / 32)) | sed 's/^/    total = total + value_/' > /tmp/src.txt
split -b 8192 -a 5 /tmp/src.txt src/mod_ && rm /tmp/src.txt
# One 4 MiB package of small files, copied: dependency trees repeat themselves.
mkdir -p /tmp/pkg && head -c 3M /dev/urandom | base64 > /tmp/pkg.txt
split -b 10240 -a 4 /tmp/pkg.txt /tmp/pkg/f_ && rm /tmp/pkg.txt
copies=$((mb * 25 / 100 / 4)); c=0
while [ "$c" -lt "$copies" ]; do cp -r /tmp/pkg "node_modules/pkg$c"; c=$((c + 1)); done
yes '2026-11-23T10:00:00.000Z INFO request handled path=/api/items status=200 ms=12' \
  | head -c "$((mb * 15 / 100))M" > logs/app.log
du -sm /data | cut -f1
"""

# 1 MiB changed: 256 KiB rewritten inside a binary, 512 KiB appended to the log, a
# 256 KiB new file.
CHANGE = r"""
set -eu
cd /data
dd if=/dev/urandom of=bin/blob0.bin bs=262144 count=1 seek=7 conv=notrunc status=none
head -c 524288 /dev/urandom | base64 -w0 | head -c 524288 >> logs/app.log
head -c 262144 /dev/urandom > src/new_module.bin
"""


def helper(
    volume: str, script: str, *args: str, mounts: tuple[str, ...] = (), user: str = "0:0"
) -> str:
    argv = ["docker", "run", "--rm", "--user", user, "-v", f"{volume}:/data"]
    for mount in mounts:
        argv += ["-v", mount]
    argv += [IMAGE, "sh", "-c", script, "sh", *args]
    return subprocess.run(argv, capture_output=True, text=True, check=True, timeout=7200).stdout


def clocked(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[float, Any]:
    started = time.perf_counter()
    value = fn(*args, **kwargs)
    return time.perf_counter() - started, value


def main() -> int:
    from dockyard import backup
    from tests.support.s3 import s3_server

    client = engine()
    tag = f"benchbk{int(time.time()) % 100000}"
    labels = {
        "dockyard.volume": "workspace",
        "dockyard.stack": tag,
        "dockyard.managed": "true",
    }
    results: dict[str, list[float]] = {
        "tar_gzip": [],
        "first": [],
        "tar_gzip_again": [],
        "incremental": [],
        "untar": [],
        "restore": [],
    }
    stored: list[int] = []
    archives: list[int] = []
    counts: dict[str, Any] = {}
    volumes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="dockyard-bench-backup-") as base:
        work = Path(base)
        credentials = work / "credentials"
        credentials.mkdir(mode=0o700)
        keys = credentials / "s3-credentials"
        keys.write_text("[default]\naws_access_key_id = bench\naws_secret_access_key = bench\n")
        keys.chmod(0o600)
        out = work / "out"
        out.mkdir()
        environ = {
            **os.environ,
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
        }
        try:
            with s3_server("bench", "bench", BUCKET) as (server, _gate):
                settings = backup.Settings(
                    repository=f"s3:http://127.0.0.1:{server.port}/{BUCKET}/dockyard",
                    credentials_dir=str(credentials),
                    cache_dir=str(work / "cache"),
                )
                engines = backup.Backups(settings, environ=environ)
                for run in range(SAMPLES):
                    session = f"w{run}"
                    volume = f"dockyard-{tag}-{session}-workspace"
                    client.volumes.create(volume, labels={**labels, "dockyard.session": session})
                    volumes.append(volume)
                    helper(volume, "chown 1000:1000 /data")
                    size_mb = helper(volume, POPULATE, str(SIZE_MB), user="1000:1000")
                    counts["workspace_mb"] = int(size_mb.split()[-1])
                    workspace = engines.workspace(session, stack=tag)
                    archive = "tar -C /data -cf - . | gzip -c > /out/ws.tar.gz"
                    mount = (f"{out}:/out",)
                    seconds, _ = clocked(helper, volume, archive, mounts=mount)
                    results["tar_gzip"].append(seconds)
                    archives.append((out / "ws.tar.gz").stat().st_size)
                    seconds, first = clocked(engines.backup, workspace)
                    results["first"].append(seconds)
                    counts["files"] = first.files
                    helper(volume, CHANGE, user="1000:1000")
                    seconds, _ = clocked(helper, volume, archive, mounts=mount)
                    results["tar_gzip_again"].append(seconds)
                    archives.append((out / "ws.tar.gz").stat().st_size)
                    seconds, second = clocked(engines.backup, workspace)
                    results["incremental"].append(seconds)
                    counts["incremental_added_bytes"] = second.added_bytes
                    stored.append(server.stored_bytes(BUCKET, f"dockyard/{tag}/{session}/"))
                    target = f"dockyard-{tag}-r{run}-workspace"
                    client.volumes.create(target, labels={**labels, "dockyard.session": f"r{run}"})
                    volumes.append(target)
                    untar = "gunzip -c /out/ws.tar.gz | tar -C /data -xf -"
                    seconds, _ = clocked(helper, target, untar, mounts=mount)
                    results["untar"].append(seconds)
                    helper(target, "find /data -mindepth 1 -delete")
                    into = engines.workspace(f"r{run}", stack=tag)
                    seconds, _ = clocked(engines.restore, workspace.repo, into)
                    results["restore"].append(seconds)
                    for name in (volume, target):
                        client.volumes.get(name).remove(force=True)
                        volumes.remove(name)
                    print(f"run {run + 1}/{SAMPLES} done", file=sys.stderr)
        finally:
            for volume in client.volumes.list(filters={"label": f"dockyard.stack={tag}"}):
                volume.remove(force=True)
            # The cache belongs to the helper's uid; the temporary directory goes as root.
            subprocess.run(["rm", "-rf", str(work / "cache")], check=False)

    medians = {name: summary(samples)["median"] for name, samples in results.items()}
    tgz = summary([float(a) for a in archives[0::2]])["median"]
    tgz_again = summary([float(a) for a in archives[1::2]])["median"]
    repo = summary([float(s) for s in stored])["median"]
    print(
        table(
            ["figure (s)", "median", "min", "max", "x baseline"],
            [
                stat_row("tar | gzip (first)", results["tar_gzip"]),
                stat_row("restic first backup", results["first"], medians["tar_gzip"]),
                stat_row("tar | gzip (after 1 MiB change)", results["tar_gzip_again"]),
                stat_row(
                    "restic incremental (1 MiB changed)",
                    results["incremental"],
                    medians["tar_gzip_again"],
                ),
                stat_row("gunzip | tar -x", results["untar"]),
                stat_row("restic full restore + verify", results["restore"], medians["untar"]),
            ],
        )
    )
    print(
        f"workspace {counts['workspace_mb']} MiB, {counts['files']} files; archive "
        f"{tgz / 2**20:.0f} MiB; repository after the incremental {repo / 2**20:.0f} MiB "
        f"({repo / (tgz + tgz_again):.2f}x two archives, {repo / tgz:.2f}x one); the "
        f"incremental added {counts['incremental_added_bytes'] / 2**20:.2f} MiB"
    )
    write_result(
        "backup",
        {
            "samples": SAMPLES,
            "workspace_mb": counts["workspace_mb"],
            "files": counts["files"],
            "seconds": {name: summary(s) for name, s in results.items()},
            "ratios": {
                "first_backup_vs_tar_gzip": medians["first"] / medians["tar_gzip"],
                "incremental_vs_tar_gzip": medians["incremental"] / medians["tar_gzip_again"],
                "restore_vs_untar": medians["restore"] / medians["untar"],
                "stored_vs_two_archives": repo / (tgz + tgz_again),
                "stored_vs_one_archive": repo / tgz,
            },
            "bytes": {
                "archive": tgz,
                "archive_after_change": tgz_again,
                "repository_after_incremental": repo,
                "incremental_added": counts["incremental_added_bytes"],
            },
            "note": "shared 2-core machine, S3 is moto (Python) on loopback: +-30 %",
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
