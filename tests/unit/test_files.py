"""dockyard.files: the package's one reader of JSON objects and its synced writes (the
host library, the workspace-backup command and the restic engine share them)."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dockyard.files import read_json_object, write_synced
from dockyard.host.errors import ConfigError, ManifestError
from dockyard.host.manifests import read_manifest


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ('{"a": ', "not JSON (Expecting value at line 1)"),
        ("[1, 2]", "a JSON list is not allowed (allowed: a JSON object)"),
    ],
)
def test_a_file_that_is_no_json_object_is_refused_naming_it(
    tmp_path: Path, text: str, why: str
) -> None:
    path = tmp_path / "settings.json"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        read_json_object(path, ConfigError)
    assert str(caught.value) == f"{path}: {why}"


def test_a_missing_file_is_refused_with_the_callers_error(tmp_path: Path) -> None:
    missing = tmp_path / "gone.json"
    with pytest.raises(ManifestError, match=r"gone\.json: cannot be read \(No such file"):
        read_manifest(missing)
    (tmp_path / "ok.json").write_text('{"v": 1}')
    assert read_manifest(tmp_path / "ok.json") == {"v": 1}


def test_synced_writes_create_private_files_and_append(tmp_path: Path) -> None:
    path = tmp_path / "log"
    append = os.O_WRONLY | os.O_APPEND | os.O_CREAT
    write_synced(path, "one\n", append, 0o600)
    write_synced(path, "two\n", append, 0o600)
    assert path.read_text() == "one\ntwo\n"
    assert path.stat().st_mode & 0o777 == 0o600
    with pytest.raises(FileExistsError):
        write_synced(path, "x", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    assert path.read_text() == "one\ntwo\n"


def _short_then_full(real: Callable[[int, Any], int]) -> Callable[[int, Any], int]:
    """``os.write`` on a disk that fills up: half of the first buffer, then ENOSPC."""
    calls = {"n": 0}

    def write(fd: int, data: Any) -> int:
        calls["n"] += 1
        if calls["n"] == 1:
            return real(fd, bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, "No space left on device")

    return write


def test_a_short_write_leaves_the_file_as_it_was_and_raises(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "log"
    append = os.O_WRONLY | os.O_APPEND | os.O_CREAT
    write_synced(path, "one\n", append, 0o600)
    monkeypatch.setattr(os, "write", _short_then_full(os.write))
    with pytest.raises(OSError, match="No space left") as caught:
        write_synced(path, "two two two two\n" * 100, append, 0o600)
    assert caught.value.errno == errno.ENOSPC
    assert path.read_bytes() == b"one\n"  # no torn part stays


def test_a_write_that_makes_no_progress_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "log"
    path.write_text("one\n")
    monkeypatch.setattr(os, "write", lambda fd, data: 0)
    with pytest.raises(OSError, match="the write made no progress"):
        write_synced(path, "two\n", os.O_WRONLY | os.O_APPEND, 0o600)
    assert path.read_bytes() == b"one\n"


def test_a_write_the_system_splits_is_written_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: real(fd, bytes(data[:7])))
    path = tmp_path / "log"
    write_synced(path, "0123456789" * 5 + "\n", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    assert path.read_text() == "0123456789" * 5 + "\n"
