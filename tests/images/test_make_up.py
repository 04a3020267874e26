"""`make up`, the README's first command, drives the Pulumi CLI as documented. The CLI
cannot be installed on CI machines, so a recording stand-in takes its place on PATH."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.support.images import REPO

pytestmark = pytest.mark.docker  # `make up` makes sure the base image exists first

FAKE_PULUMI = """#!/usr/bin/env bash
echo "pulumi $* | passphrase_file=${PULUMI_CONFIG_PASSPHRASE_FILE:-} passphrase=${PULUMI_CONFIG_PASSPHRASE:+set}" >> "$PULUMI_LOG"
"""


def make_up(tmp_path: Path, **env: str) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "pulumi"
    fake.write_text(FAKE_PULUMI)
    fake.chmod(0o755)
    log = tmp_path / "pulumi.log"
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("PULUMI_")}
    result = subprocess.run(
        ["make", "--no-print-directory", "up", "PULUMI_ARGS=--yes"],
        cwd=REPO,
        env={
            **base_env,
            "HOME": str(tmp_path / "home"),
            "PATH": f"{bin_dir}:{os.environ['PATH']}",
            "PULUMI_LOG": str(log),
            **env,
        },
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    return result, log.read_text().splitlines() if log.exists() else []


def test_make_up_creates_the_dev_stack_with_a_passphrase_and_runs_up(tmp_path: Path) -> None:
    result, calls = make_up(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    passphrase = tmp_path / "home" / ".config" / "dockyard" / "pulumi-passphrase"
    assert oct(passphrase.stat().st_mode & 0o777) == "0o600"
    assert len(passphrase.read_text().strip()) >= 32
    suffix = f" | passphrase_file={passphrase} passphrase="
    assert [c for c in calls if not c.startswith("pulumi version")] == [
        f"pulumi stack select --create --secrets-provider passphrase dev{suffix}",
        f"pulumi up --stack dev --yes{suffix}",
    ]
    # A second run keeps the passphrase (it decrypts the stack's secrets).
    first = passphrase.read_text()
    assert make_up(tmp_path)[0].returncode == 0
    assert passphrase.read_text() == first


def test_make_up_uses_the_users_own_passphrase(tmp_path: Path) -> None:
    result, calls = make_up(tmp_path, PULUMI_CONFIG_PASSPHRASE="correct horse")
    assert result.returncode == 0, result.stdout + result.stderr
    assert not (tmp_path / "home" / ".config" / "dockyard").exists()
    assert calls[-1] == "pulumi up --stack dev --yes | passphrase_file= passphrase=set"
