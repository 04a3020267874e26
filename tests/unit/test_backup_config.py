"""Hostile and valid ``dockyard:backup`` / ``restore`` configurations (issue 15).

Every bad case names the key path it must be reported at and a fragment of what is
allowed; every case is also held to what every problem line must be: a ConfigError, a
``dockyard:`` key, an ``(allowed: …)`` form, no Python wording, and never a canary that
stands for a key or a password pasted into a value.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from dockyard import backup
from dockyard.config import ConfigError, parse
from dockyard.program import environment_args
from dockyard.sessions.request import plan

CWD = "/home/u/project"
CANARY = "c4n4ry"
GOOD = "s3:https://s3.eu-west-1.amazonaws.com/acme-dockyard/backups"
PYTHON_WORDING = re.compile(
    r"invalid literal|Input should|Traceback|Value error|object has no attribute|could not "
    r"convert|unhashable|pydantic"
)


def stack(backup_value: Any = None, restore: Any = None, **top: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {f"dockyard:{k}": v for k, v in top.items()}
    if backup_value is not None:
        raw["dockyard:backup"] = backup_value
    environment: dict[str, Any] = {"sessionId": "s1"}
    if restore is not None:
        environment["restore"] = restore
    raw["dockyard:environments"] = [environment]
    return raw


# (name, raw config, [(key path, fragment of the line)])
BAD: list[tuple[str, dict[str, Any], list[tuple[str, str]]]] = [
    (
        "key pasted as URL user info",
        stack({"repository": f"s3:https://AKIA{CANARY}:{CANARY}secret@s3.example.com/bkt"}),
        [("dockyard:backup.repository", "no user name or key in it")],
    ),
    (
        "key pasted as a query string",
        stack({"repository": f"s3:https://s3.example.com/bkt?X-Amz-Signature={CANARY}"}),
        [("dockyard:backup.repository", "s3:[http[s]://]host[:port]/bucket")],
    ),
    (
        "key pasted after the bucket with a colon",
        stack({"repository": f"s3:https://s3.example.com/bkt:{CANARY}+/x"}),
        [("dockyard:backup.repository", "S3-compatible restic location")],
    ),
    (
        "a local path is not S3",
        stack({"repository": f"/srv/{CANARY}"}),
        [("dockyard:backup.repository", "S3-compatible")],
    ),
    (
        "a two-letter bucket",
        stack({"repository": "s3:http://127.0.0.1:9000/bk"}),
        [("dockyard:backup.repository", "bucket 3-63")],
    ),
    (
        "a port out of range",
        stack({"repository": "s3:http://127.0.0.1:70000/bucket"}),
        [("dockyard:backup.repository", "S3-compatible")],
    ),
    (
        "a prefix that climbs",
        stack({"repository": "s3:https://s3.example.com/bucket/../other"}),
        [("dockyard:backup.repository", "S3-compatible")],
    ),
    (
        "a repository that is not a string",
        stack({"repository": ["s3:https://s3.example.com/bucket"]}),
        [("dockyard:backup.repository", "S3-compatible")],
    ),
    (
        "repository missing",
        stack({"region": "us-east-1"}),
        [("dockyard:backup.repository", "missing")],
    ),
    (
        "backup is not a mapping",
        stack(GOOD),
        [("dockyard:backup", "a mapping")],
    ),
    (
        "every other key wrong at once",
        stack(
            {
                "repository": GOOD,
                "region": "EU WEST",
                "credentialsDir": "etc/dockyard",
                "cacheDir": "/var/../cache",
                "image": "Not An Image",
                "restic": "restic",
                "onDestroy": "yes",
                "keepLast": 3,
            }
        ),
        [
            ("dockyard:backup.region", "lower-case letters"),
            ("dockyard:backup.credentialsDir", "absolute host directory"),
            ("dockyard:backup.cacheDir", "absolute host directory"),
            ("dockyard:backup.image", "image reference"),
            ("dockyard:backup.restic", "absolute host directory"),
            ("dockyard:backup.onDestroy", "true or false"),
            ("dockyard:backup.keepLast", "unknown key"),
        ],
    ),
    (
        "restore latest without a backup",
        stack(restore="latest"),
        [("dockyard:environments[0].restore", "with dockyard:backup set")],
    ),
    (
        "restore something else",
        stack({"repository": GOOD}, restore="earliest"),
        [("dockyard:environments[0].restore", "'none' or 'latest'")],
    ),
    (
        "restore not a string",
        stack({"repository": GOOD}, restore=True),
        [("dockyard:environments[0].restore", "'none' or 'latest'")],
    ),
    (
        "backups with a remote engine",
        stack({"repository": GOOD}, dockerHost="ssh://agent@team.example"),
        [("dockyard:backup.repository", "backups run on the Docker host itself")],
    ),
    (
        "backups with several engines, one remote",
        stack(
            {"repository": GOOD},
            dockerHosts={"here": "unix:///var/run/docker.sock", "east": "tcp://east:2376"},
        ),
        [("dockyard:backup.repository", "remote dockerHost or dockerHosts")],
    ),
    (
        "backups on kubernetes",
        stack({"repository": GOOD}, backend="kubernetes", image={"ref": "ghcr.io/a/b:1"}),
        [("dockyard:backup.repository", "backend kubernetes")],
    ),
]


@pytest.mark.parametrize(("name", "raw", "expected"), BAD, ids=[case[0] for case in BAD])
def test_bad_backup_settings_are_refused_where_they_are(
    name: str, raw: dict[str, Any], expected: list[tuple[str, str]]
) -> None:
    with pytest.raises(ConfigError) as caught:
        parse(raw, stack="dev", cwd=CWD)
    problems = caught.value.problems
    for key, fragment in expected:
        lines = [p for p in problems if p.startswith(f"{key}:")]
        assert lines, f"{name}: nothing reported at {key}: {problems}"
        assert any(fragment in line for line in lines), f"{name}: {lines}"
    for line in problems:
        assert line.startswith("dockyard:"), line
        assert "(allowed: " in line, line
        assert CANARY not in line, f"{name}: a pasted key is echoed: {line}"
        assert not PYTHON_WORDING.search(line), line
        assert not any(ord(c) < 32 for c in line), line
    assert CANARY not in str(caught.value)


def test_a_repository_is_never_echoed_whatever_it_holds() -> None:
    """Even a value that reads like a plain URL: the line names its size, not its text."""
    with pytest.raises(ConfigError) as caught:
        parse(stack({"repository": "s3:https://host.example/Bucket_Upper"}), stack="d", cwd=CWD)
    (line,) = caught.value.problems
    assert "Bucket_Upper" not in line
    assert "<a string of 36 characters>" in line


GOOD_FORMS = [
    "s3:s3.amazonaws.com/acme-dockyard",
    "s3:https://s3.eu-west-1.amazonaws.com/acme-dockyard/backups/team",
    "s3:https://0123abcd.r2.cloudflarestorage.com/dockyard",
    "s3:http://127.0.0.1:9000/dockyard/ci",
    "s3:http://minio.internal:9000/dockyard.backups/",
    "s3:https://[fd00::5]:9000/bucket",
]


@pytest.mark.parametrize("repository", GOOD_FORMS)
def test_documented_repositories_are_accepted(repository: str) -> None:
    config = parse(stack({"repository": repository}, restore="latest"), stack="dev", cwd=CWD)
    assert config.backup is not None
    assert config.backup.repository == repository
    assert config.environments[0].restore == "latest"
    assert backup.repository_ok(repository)


def test_defaults_and_what_the_program_hands_to_the_restore_command() -> None:
    config = parse(
        stack({"repository": GOOD, "region": "auto", "credentialsDir": "/srv/keys//"}, "latest"),
        stack="dev",
        cwd=CWD,
    )
    assert config.backup is not None
    assert config.backup.on_destroy is True
    assert config.backup.credentials_dir == "/srv/keys"
    args = environment_args(config, config.environments[0], "img", "img", {})
    assert args.restore_from is not None
    settings = backup.Settings.from_mapping(json.loads(args.restore_from))
    assert settings == backup.Settings(
        repository=GOOD,
        region="auto",
        credentials_dir="/srv/keys",
        cache_dir=backup.DEFAULT_CACHE_DIR,
        image=backup.DEFAULT_IMAGE,
        restic=backup.DEFAULT_RESTIC,
    )
    # Without restore: latest, the program declares no restore command at all.
    plain = parse(stack({"repository": GOOD}), stack="dev", cwd=CWD)
    assert environment_args(plain, plain.environments[0], "i", "i", {}).restore_from is None
    assert plain.environments[0].restore == "none"


def test_a_session_request_takes_restore_at_its_top_level() -> None:
    settings = {"backup": {"repository": GOOD}}
    session = plan({"sessionId": "s1", "cwd": CWD, "restore": "latest"}, settings)
    assert session.environment.restore == "latest"
    with pytest.raises(ConfigError) as caught:
        plan({"sessionId": "s1", "cwd": CWD, "restore": "latest"}, {})
    assert caught.value.problems == [
        "request.restore: 'latest' is not allowed (allowed: none, or latest with "
        "dockyard:backup set (where the session's backups are))"
    ]
    with pytest.raises(ConfigError) as caught:
        plan({"sessionId": "s1", "cwd": CWD}, {"backup": {"repository": f"{GOOD}?k={CANARY}"}})
    assert CANARY not in str(caught.value.problems)


def test_engine_settings_refuse_what_the_model_refuses() -> None:
    """The host command reads the same settings from JSON: same grammar, same secrecy."""
    grammar = [
        (name, raw["dockyard:backup"]["repository"])
        for name, raw, _ in BAD
        if isinstance(raw.get("dockyard:backup"), dict)
        and raw["dockyard:backup"].get("repository", GOOD) != GOOD
    ]
    assert len(grammar) == 8
    for name, repository in grammar:
        with pytest.raises(backup.ConfigError) as caught:
            backup.Settings(repository=repository)
        assert CANARY not in str(caught.value), name
    for repository in GOOD_FORMS:
        backup.Settings(repository=repository)
