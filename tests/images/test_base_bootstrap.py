"""images/base/bootstrap.sh: the air-gapped base image (R-IMG-4)."""

from __future__ import annotations

import os
import subprocess

import docker
import pytest

from tests.support.images import DEFAULT_BASE, REPO

SCRIPT = REPO / "images" / "base" / "bootstrap.sh"


def bootstrap(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
        check=False,
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--mirror", "ftp://mirror"],
            "mirror 'ftp://mirror' is not a URL (allowed: http://, https:// or file:// URL of a Debian mirror)",
        ),
        (["--suite", "Bookworm!"], "suite 'Bookworm!' is not a Debian suite name (e.g. bookworm)"),
        (
            ["--tag", "Bad Tag"],
            "tag 'Bad Tag' is not a valid image reference (e.g. debian:bookworm-slim)",
        ),
        (
            ["--colour"],
            "unknown argument '--colour' (allowed: --mirror URL, --suite NAME, --tag REF, --force)",
        ),
        (["--mirror"], "--mirror needs a URL"),
    ],
)
def test_bad_arguments_fail_with_clear_message(args: list[str], message: str) -> None:
    result = bootstrap(*args)
    assert result.returncode == 1
    assert result.stderr.strip() == f"ERROR: {message}"


def test_missing_daemon_is_reported(tmp_path: os.PathLike[str]) -> None:
    result = bootstrap(env={"DOCKER_HOST": f"unix://{tmp_path}/no-daemon.sock"})
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"ERROR: no Docker daemon answers at unix://{tmp_path}/no-daemon.sock; start dockerd first"
    )


@pytest.mark.docker
def test_existing_tag_is_skipped(docker_client: docker.DockerClient) -> None:
    docker_client.images.get(DEFAULT_BASE)
    result = bootstrap("--tag", DEFAULT_BASE)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (
        f"base image {DEFAULT_BASE} already present; skipping (use --force to rebuild)"
    )


@pytest.mark.docker
def test_missing_debootstrap_is_reported(docker_client: docker.DockerClient) -> None:
    # /usr/sbin holds debootstrap; /usr/bin still has a docker client.
    result = bootstrap(
        "--force", "--tag", "dockyard-test/never-built:1", env={"PATH": "/usr/bin:/bin"}
    )
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "ERROR: debootstrap is not installed (Debian: apt-get install debootstrap)"
    )
    assert not docker_client.images.list(name="dockyard-test/never-built")


@pytest.mark.docker
def test_bootstrapped_base_is_trimmed_debian(docker_client: docker.DockerClient) -> None:
    labels = docker_client.images.get(DEFAULT_BASE).labels or {}
    if "dockyard.base.suite" not in labels:
        if os.environ.get("DOCKYARD_REQUIRE_DOCKER") == "1":
            pytest.fail(f"{DEFAULT_BASE} was not made by images/base/bootstrap.sh in CI")
        pytest.skip(f"{DEFAULT_BASE} was pulled from a registry, not bootstrapped here")
    assert labels["dockyard.base.suite"] == "bookworm"
    script = (
        ". /etc/os-release; echo $VERSION_CODENAME; "
        "ls -A /usr/share/locale | grep -vx locale.alias | wc -l; "
        "ls -A /usr/share/man | wc -l; head -n 1 /etc/dpkg/dpkg.cfg.d/docker-slim"
    )
    out = docker_client.containers.run(DEFAULT_BASE, ["sh", "-c", script], remove=True)
    assert out.decode().splitlines() == [
        "bookworm",
        "0",
        "0",
        "path-exclude /usr/share/doc/*",
    ]
