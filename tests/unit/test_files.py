"""dockyard.files: the package's one reader of JSON objects and its synced writes (the
host library, the workspace-backup command and the restic engine share them)."""

from __future__ import annotations

import os
from pathlib import Path

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
