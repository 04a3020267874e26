"""What the disk bounds cost an environment (issue 25 item 4), interleaved with baselines.

- images: the helper run that makes, formats and attaches the four images of the
  ``standard`` profile (dockyard.storage), against a bare ``docker run --rm`` of the same
  image: the step the bounds add before the container is created;
- start: ``docker run --rm`` (entrypoint ``true``) with the bounded mounts (four ext4
  volumes on loop devices, three size-capped tmpfs, the fsize rlimit) against the same
  with four plain named volumes: what the bounds add to every start.

Rounds interleave bare, images and both starts, so load that comes and goes moves all
alike. Runs: DOCKYARD_BENCH_RUNS (default 5). Budget: a bounded start within 1.15x of a
plain one (the env_ready budget's ratio).
"""

from __future__ import annotations

import subprocess
import uuid

from benchmarks.common import (
    RUNS,
    engine,
    ratio,
    stat_row,
    summary,
    table,
    timed,
    verdict,
    write_result,
)
from dockyard import storage

BUDGET_RATIO = 1.15
SPECS = ("workspace:20480", "config:512", "checkpoints:4096", "home:4096")
ROLES = tuple(spec.split(":")[0] for spec in SPECS)


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=300)


ROOTS = [(storage.DISKS_DIR, "rw"), (storage.LINKS_DIR, "rw")]
"""Removing an environment's directories writes their parents."""


def _own(places: tuple[str, str]) -> list[tuple[str, str]]:
    """The helper sees an environment's two directories on the engine's host (else it
    would make the images inside its own container, and they would go with it)."""
    return [(path, "rw") for path in places]


def _sh(script: str) -> None:
    done = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=300)
    if done.returncode != 0:  # the helper's own words, not the whole shell text
        raise SystemExit(f"ERROR: a disks helper failed (exit {done.returncode}): {done.stderr}")


def _start(image: str, prefix: str, bounded: bool) -> None:
    argv = ["docker", "run", "--rm", "--entrypoint", "true", "--user", "1000"]
    for role in ROLES:
        argv += ["-v", f"{prefix}-{role}:{storage.mount_path(role)}"]
    if bounded:
        for path, options in storage.tmpfs_mounts(storage.DiskBounds()).items():
            argv += ["--tmpfs", f"{path}:{options}"]
        largest = storage.DiskBounds().largest_file_bytes
        argv += ["--ulimit", f"fsize={largest}"]
    _run(*argv, image)


def main() -> int:
    client = engine()
    images = [t for i in client.images.list("dockyard-core") for t in i.tags]
    if not images:
        raise SystemExit("ERROR: no dockyard-core image on this engine: run `make image`")
    image = images[0]
    run = uuid.uuid4().hex[:8]
    kept = f"dockyard-bench-disks-{run}"
    kept_places = (storage.disk_dir(kept), storage.link_dir(kept))
    bounded, plain = f"benchdisk-b-{run}", f"benchdisk-p-{run}"
    mounted = {role: f"{bounded}-{role}" for role in ROLES}
    samples: dict[str, list[float]] = {"bare": [], "images": [], "plain": [], "bounded": []}
    try:
        _sh(
            storage.helper_command(
                image, storage.CREATE_SCRIPT, *kept_places, *SPECS, binds=_own(kept_places)
            )
        )
        for role in ROLES:
            _run("docker", "volume", "create", f"{bounded}-{role}")
            _run("docker", "volume", "create", f"{plain}-{role}")
        # As the program does: the images mounted on the (plain) volumes' directories.
        _sh(storage.keeper_command(image, storage.MOUNT_SCRIPT, kept_places[1], volumes=mounted))
        for index in range(RUNS + 1):  # the first round warms up and is not counted
            environment_id = f"dockyard-bench-disks-{run}-{index}"
            places = (storage.disk_dir(environment_id), storage.link_dir(environment_id))
            create = storage.helper_command(
                image, storage.CREATE_SCRIPT, *places, *SPECS, binds=_own(places)
            )
            delete = storage.helper_command(image, storage.DELETE_SCRIPT, *places, binds=ROOTS)
            round_ = {
                "bare": timed(lambda: _run("docker", "run", "--rm", "--entrypoint", "true", image)),
                "images": timed(lambda: _sh(create)),  # noqa: B023 - called at once
                "plain": timed(lambda: _start(image, plain, False)),
                "bounded": timed(lambda: _start(image, bounded, True)),
            }
            _sh(delete)
            if index:
                for key, value in round_.items():
                    samples[key].append(value)
                print(f"  round {index} of {RUNS} done", flush=True)
    finally:
        unmount = storage.keeper_command(
            image, storage.UNMOUNT_SCRIPT, volumes=mounted, missing_ok=True
        )
        subprocess.run(["sh", "-c", unmount], capture_output=True, timeout=300, check=False)
        for prefix in (bounded, plain):
            for role in ROLES:
                subprocess.run(["docker", "volume", "rm", f"{prefix}-{role}"], capture_output=True)
        _sh(storage.helper_command(image, storage.DELETE_SCRIPT, *kept_places, binds=ROOTS))
    bare, start = summary(samples["bare"])["median"], summary(samples["plain"])["median"]
    print(f"Disk bounds (seconds, median/min/max of {RUNS}; ratio of medians)")
    print(
        table(
            ("what", "median", "min", "max", "x baseline"),
            [
                stat_row("bare docker run --rm", samples["bare"], bare),
                stat_row("images: make + attach 4 (vs bare)", samples["images"], bare),
                stat_row("start, plain volumes", samples["plain"], start),
                stat_row("start, bounded mounts (vs plain)", samples["bounded"], start),
            ],
        )
    )
    start_ratio = ratio(summary(samples["bounded"])["median"], start)
    print(
        f"bounded start {start_ratio:.2f}x plain — {verdict(start_ratio, BUDGET_RATIO)} the "
        f"{BUDGET_RATIO}x budget; the images add "
        f"{summary(samples['images'])['median']:.2f} s before the container is created"
    )
    path = write_result("disk_bounds", {key: summary(value) for key, value in samples.items()})
    print(f"written {path}")
    return 0
