"""Disk bounds under mocks (issue 25 item 4): what the program declares for every writable
path of an environment, from the stack's ``limits.disk`` and the profiles' defaults."""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pulumi
import pytest

from dockyard import storage
from tests.support.program import ProgramRun, RecordingMocks, record, run_program

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def hosted_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("hosted-workspace")
    os.chown(directory, 1000, 1000)
    return directory


@pytest.fixture(scope="module")
def run(hosted_dir: Path) -> ProgramRun:
    values = {
        "bindRoots": [str(hosted_dir.parent)],
        "limits": {"disk": {"workspace": "2g", "tmp": "64m"}},
        "environments": [
            {"sessionId": "small", "limits": {"disk": {"home": 100}}},
            {"sessionId": "big", "profile": "large"},
            {"sessionId": "hosted", "workspaceHostPath": str(hosted_dir)},
        ],
    }
    return record(values, {})


def images(run: ProgramRun, session: str) -> dict[str, Any]:
    """The environment's one disks command (make, attach, mount; unmount, remove)."""
    return run.named(f"env-{session}-disk-mounts").inputs


def helper_argv(text: str) -> list[str]:
    return shlex.split(text)


def exec_argv(text: str) -> list[str]:
    """What the command runs in the disks keeper: ``docker exec`` to its stderr file."""
    call = text[text.index('docker exec "$i"') :]
    return shlex.split(call[: call.index(' 2>"$e"')])


def test_sizes_come_from_defaults_profile_stack_and_environment(run: ProgramRun) -> None:
    small = exec_argv(images(run, "small")["create"])[-10::2]
    secrets = f"{storage.secrets_role([])}:16"
    # stack workspace 2g, environment home 100 MB, standard profile's config/checkpoints
    assert small == [
        "workspace:2048", "config:512", "checkpoints:4096", "home:100", secrets
    ], small  # fmt: skip
    big = exec_argv(images(run, "big")["create"])[-10::2]
    # large profile: workspace 100 GiB, but the stack's 2g wins (stack < environment only)
    assert big == [
        "workspace:2048", "config:512", "checkpoints:16384", "home:8192", secrets
    ], big  # fmt: skip


def test_a_workspace_bound_to_a_host_directory_stays_that_directory(
    run: ProgramRun, hosted_dir: Path
) -> None:
    hosted = helper_argv(images(run, "hosted")["create"])
    assert not any(a.startswith("workspace:") for a in hosted), hosted
    volume = run.named("env-hosted-workspace").inputs
    assert volume["driverOpts"] == {"type": "none", "o": "bind", "device": str(hosted_dir)}


def test_bounded_volumes_are_plain_and_the_helper_mounts_the_images_on_them(
    run: ProgramRun,
) -> None:
    """No mount options: the engine's local driver does not count a plain volume's mounts
    (its count of live-restored containers is lost at an engine restart, 20.10.24). The
    helper mounts each image on its volume's directory, before the container exists, and
    unmounts it before the volumes go."""
    prefix = "dockyard-dev-small"
    roles = (*storage.DISK_ROLES, storage.secrets_role([]))
    for role in roles:
        volume = run.named(f"env-small-{role}").inputs
        assert "driverOpts" not in volume, volume
    mounts_command = run.named("env-small-disk-mounts")
    create, delete = mounts_command.inputs["create"], mounts_command.inputs["delete"]
    # One look-up of all the volumes' directories on the engine, each passed with its role;
    # the keeper sees them where the engine has them (its volumes directory, rshared).
    names = " ".join(f"{prefix}-{role}" for role in roles)
    for text in (create, delete):
        assert text.count("docker volume inspect") == 1, text
        assert f"docker volume inspect --format '{{{{.Name}}}} {{{{.Mountpoint}}}}' {names}" in text
        assert '-v "$r":"$r":rshared' in text
    sizes = ["workspace:2048", "config:512", "checkpoints:4096", "home:100", f"{roles[-1]}:16"]
    places = [f"{storage.DISKS_DIR}/{prefix}", f"{storage.LINKS_DIR}/{prefix}"]
    pairs = [f"$v{i}" for i in range(len(roles))]
    created = exec_argv(create)
    assert created[-2 * len(roles) - 2 :] == [
        *places, *(a for pair in zip(sizes, pairs, strict=True) for a in pair)
    ]  # fmt: skip
    assert "mount -t ext4 -o nodev,nosuid" in create
    assert "mkfs.ext4" in create
    assert "umount" in delete
    assert "losetup -d" in delete
    assert exec_argv(delete)[-2 * len(roles) - 2 :] == [
        *places, *(a for pair in zip(roles, pairs, strict=True) for a in pair)
    ]  # fmt: skip
    container = run.named("env-small-container").inputs
    mounts = {v["containerPath"]: v.get("volumeName") for v in container["volumes"]}
    assert mounts["/home/agent"] == f"{prefix}-home"
    assert mounts["/run/secrets"] == f"{prefix}-{storage.secrets_role([])}"
    assert {mounts[f"/{r}"] for r in ("workspace", "config", "checkpoints")} == {
        f"{prefix}-{r}" for r in ("workspace", "config", "checkpoints")
    }


def test_container_layer_paths_are_capped_tmpfs_and_no_file_outgrows_the_largest_bound(
    run: ProgramRun,
) -> None:
    container = run.named("env-small-container").inputs
    assert container["tmpfs"] == dict.fromkeys(
        ("/tmp", "/var/tmp", "/run/lock"), "size=64m,mode=1777,nodev,nosuid"
    )
    fsize = [u for u in container["ulimits"] if u["name"] == "fsize"]
    assert fsize == [{"name": "fsize", "soft": 4096.0 * MIB, "hard": 4096.0 * MIB}]


def test_the_helper_has_only_what_losetup_and_mkfs_need(run: ProgramRun) -> None:
    argv = helper_argv(images(run, "small")["create"])
    caps = [argv[i + 1] for i, a in enumerate(argv) if a == "--cap-add"]
    # and chattr's, for the immutable empty directory under each mount (MOUNT_SCRIPT)
    assert sorted(caps) == sorted([*storage.HELPER_CAPABILITIES, "LINUX_IMMUTABLE"])
    assert "--privileged" not in argv
    assert argv[argv.index("--cap-drop") + 1] == "ALL"
    rules = [argv[i + 1] for i, a in enumerate(argv) if a == "--device-cgroup-rule"]
    assert rules == ["b 7:* rwm", "c 10:237 rwm"]
    assert argv[argv.index("--network") + 1] == "none"
    delete = exec_argv(images(run, "small")["delete"])
    assert delete[-12:-10] == [
        f"{storage.DISKS_DIR}/dockyard-dev-small",
        f"{storage.LINKS_DIR}/dockyard-dev-small",
    ]


def test_the_secrets_volume_follows_the_set_of_secret_names_never_their_values() -> None:
    one = storage.secrets_role(["B", "A"])
    assert one == storage.secrets_role(["A", "B", "A"])
    assert one != storage.secrets_role(["A"])
    assert storage.mount_path(one) == "/run/secrets"
    assert storage.DiskBounds().size_mb(one) == 16


def test_one_disks_command_per_environment_after_its_volumes_before_its_container(
    run: ProgramRun,
) -> None:
    """Issue 29: one exec in the disks keeper each way per environment (a helper
    container each way made teardown 3x a bare container's). The mocks see a resource only after what it depends on resolved."""
    commands = [r.name for r in run.of_type("command:local:Command")]
    assert [c for c in commands if c.startswith("env-small-disk")] == ["env-small-disk-mounts"]
    order = [r.name for r in run.resources]
    assert order.index("env-small-workspace") < order.index("env-small-disk-mounts")
    assert order.index("env-small-disk-mounts") < order.index("env-small-container")


def test_a_remote_engine_gets_the_helper_through_docker_host() -> None:
    values = {
        "dockerHost": "ssh://deploy@203.0.113.7",
        "environments": [{"sessionId": "far"}],
    }
    far = record(values, {})
    assert images(far, "far")["environment"]["DOCKER_HOST"] == "ssh://deploy@203.0.113.7"


@pytest.mark.parametrize(
    ("disk", "message"),
    [
        (
            {"workspace": "8"},
            "dockyard:limits.disk.workspace: '8' is not allowed (allowed: a size from 16 MB "
            "to 16 TiB",
        ),
        ({"tmp": "17t"}, "dockyard:limits.disk.tmp: '17t' is not allowed"),
        ({"home": True}, "dockyard:limits.disk.home: true is not allowed"),
        ({"swap": "1g"}, "dockyard:limits.disk.swap: unknown key (allowed: checkpoints, config,"),
    ],
)
def test_bad_disk_bounds_are_refused_naming_key_value_and_allowed(
    disk: dict[str, Any], message: str
) -> None:
    run = ProgramRun()
    with pytest.raises(pulumi.RunError) as info:
        run_program(
            RecordingMocks(run),
            {"limits": {"disk": disk}, "environments": [{"sessionId": "a"}]},
            recorder=run,
        )
    assert message in str(info.value)
    assert run.resources == []


def test_disk_bounds_refuse_sizes_outside_what_ext4_holds() -> None:
    with pytest.raises(ValueError, match=r"workspace_mb: 8 is not allowed \(allowed: a whole"):
        storage.DiskBounds(workspace_mb=8)


def test_the_storage_command_answers_in_one_line_without_an_engine(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`python -m dockyard.storage attach|prune` (boot and crash recovery): no docker CLI,
    or an engine that refuses, is one ERROR line and exit 1, never a traceback."""
    from dockyard import storage

    monkeypatch.setenv("PATH", "/nonexistent")
    assert storage.main(["prune"]) == 1
    assert capsys.readouterr().err.startswith("ERROR: prune failed: ")


def test_bounds_follow_every_resolved_disk_size() -> None:
    from dockyard.config import ResolvedLimits
    from dockyard.config.sections import ResolvedDisk

    sizes = {"workspace": 30000, "config": 600, "checkpoints": 5000, "home": 700, "tmp": 300}
    disk = ResolvedDisk(**sizes, secrets=32)
    bounds = storage.bounds_of(ResolvedLimits(disk=disk))
    assert {path: bounds.size_mb(path) for path in storage.DISK_PATHS} == {**sizes, "secrets": 32}


@pytest.mark.parametrize(
    "data",
    [
        "/etc/_data",  # outside the engine's volumes directory
        "/var/lib/docker/volumes/../../../etc/x/_data",  # climbs out
        "/var/lib/docker/volumes/./e1-workspace/_data",
        "/var/lib/docker/volumes/e1-workspace",  # not a volume's data directory
    ],
)
def test_the_scripts_touch_only_volume_directories_of_the_engine(data: str) -> None:
    """Defence in depth behind the engine's answers: mount and unmount refuse any
    directory that is not ``<engine volumes dir>/<volume>/_data`` as a plain path."""
    env = {**os.environ, "DOCKYARD_VOLUMES": "/var/lib/docker/volumes"}
    for script, args in (
        (storage.UNMOUNT_SCRIPT, ["workspace", data]),
        (storage.MOUNT_SCRIPT, ["/run/dockyard/disks/none", "workspace:16", data]),
    ):
        done = subprocess.run(
            ["sh", "-c", script, "disks", *args], env=env, capture_output=True, text=True,
            timeout=10, check=False,
        )  # fmt: skip
        assert done.returncode == 1, (script[:40], done)
        assert data in done.stderr
    # A plain volume directory that is not there (a gone volume): nothing to unmount.
    done = subprocess.run(
        ["sh", "-c", storage.UNMOUNT_SCRIPT, "disks", "workspace",
         "/var/lib/docker/volumes/e1-gone/_data", "home", ""],
        env=env, capture_output=True, text=True, timeout=10, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
