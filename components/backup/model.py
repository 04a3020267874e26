"""What the restic engine works with: its settings, the names of one session's repository
and workspace, its errors and its results (standard library only).

The grammar of a repository location and the defaults are :mod:`dockyard.contract`'s (the
configuration and the workspace_backup role check the same); the engine labels are the
contract's too.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import errors
from ..contract import (
    BACKUP_CACHE_DIR,
    BACKUP_CREDENTIALS_DIR,
    BACKUP_IMAGE,
    BACKUP_REGION,
    BACKUP_REGION_ALLOWED,
    BACKUP_REPOSITORY,
    BACKUP_REPOSITORY_ALLOWED,
    BACKUP_RESTIC,
    LABEL_KEY,
    SELECTOR_VALUE,
    backup_repository_ok,
)

# What dockyard.backup offers its callers of this module (the rest is the engine's).
__all__ = [
    "CREDENTIALS_FILE",
    "DEFAULT_CACHE_DIR",
    "DEFAULT_CA_FILE",
    "DEFAULT_CREDENTIALS_DIR",
    "DEFAULT_IMAGE",
    "DEFAULT_RESTIC",
    "NAME",
    "NAME_ALLOWED",
    "READ_DATA_SUBSET",
    "REASONS",
    "REGION",
    "REGION_ALLOWED",
    "REPOSITORY",
    "REPOSITORY_ALLOWED",
    "BackupError",
    "BackupResult",
    "Busy",
    "CheckResult",
    "ConfigError",
    "NotEmpty",
    "NotFound",
    "PasswordError",
    "Repo",
    "RestoreResult",
    "Settings",
    "Snapshot",
    "StorageError",
    "VerifyError",
    "Workspace",
    "check_selector",
    "repository_ok",
]

DEFAULT_CREDENTIALS_DIR = BACKUP_CREDENTIALS_DIR
DEFAULT_CACHE_DIR = BACKUP_CACHE_DIR
DEFAULT_IMAGE = BACKUP_IMAGE
DEFAULT_RESTIC = BACKUP_RESTIC
DEFAULT_CA_FILE = "/etc/ssl/certs/ca-certificates.crt"
CREDENTIALS_FILE = "s3-credentials"

# Inside the helper container.
HELPER_DATA = "/data"
HELPER_RESTIC = "/usr/local/bin/restic"
HELPER_CACHE = "/cache"
HELPER_CA = "/etc/ssl/certs/ca-certificates.crt"
# KEY=VALUE lines from stdin up to an empty line become the environment, then the command
# runs with the rest of stdin (restic reads the repository password from it). dash reads
# a pipe byte by byte, so nothing past the empty line is consumed here.
HELPER_PRELUDE = (
    'while IFS= read -r line && [ -n "$line" ]; do export "$line"; done; exec "$0" "$@"'
)
HELPER_UID = 0
"""The helper's uid: root with DAC_READ_SEARCH only (a reader) or the writer's four
capabilities, never a uid a host user may have (issue 25.9)."""
# What restoring owners, modes and times of another uid's files takes, and no more.
WRITER_CAPABILITIES = ("CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID")
STORAGE_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy")

# --- Grammar ------------------------------------------------------------------------------

REPOSITORY = BACKUP_REPOSITORY
REPOSITORY_ALLOWED = BACKUP_REPOSITORY_ALLOWED
REGION = BACKUP_REGION
REGION_ALLOWED = BACKUP_REGION_ALLOWED
repository_ok = backup_repository_ok
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}", re.ASCII)
NAME_ALLOWED = "letters, digits, '_', '.', '-', starting with a letter or digit"
READ_DATA_SUBSET = re.compile(
    r"(?:[0-9]{1,2}(?:\.[0-9]{1,2})?%|100%|[1-9][0-9]{0,3}/[1-9][0-9]{0,3})?"
)
# restic's reason tags on snapshots.
REASONS = ("manual", "scheduled", "idle-stop", "poweroff", "refresh", "destroy", "pre-restore")


# --- Errors ---------------------------------------------------------------------------------
# Kinds of the one error root (dockyard.errors): every face reports them with the same code.


class BackupError(errors.Failed):
    """A backup, restore or check did not happen; the message names the session and why."""


class ConfigError(BackupError, errors.InvalidInput, ValueError):
    """A setting is not allowed (the message names it and what is allowed)."""


class StorageError(BackupError):
    """The storage cannot be reached, or refused the keys."""


class PasswordError(BackupError):
    """The repository does not open with the session's password (or it is missing)."""


class NotFound(BackupError, errors.NotFound):
    """No such workspace, repository or snapshot."""


class NotEmpty(BackupError, errors.Conflict):
    """A restore would write over a workspace that holds files."""


class Busy(BackupError, errors.Conflict):
    """Another backup of the same session holds its lock."""


class VerifyError(BackupError):
    """What was restored is not what the snapshot holds."""


class Uninitialised(BackupError):
    """The repository does not exist yet (inside the engine: a backup then creates it)."""


# --- Settings ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """Where backups go and how restic is run. ``docker`` is the CLI argv prefix."""

    repository: str
    region: str = ""
    credentials_dir: str = DEFAULT_CREDENTIALS_DIR
    cache_dir: str = DEFAULT_CACHE_DIR
    image: str = DEFAULT_IMAGE
    restic: str = DEFAULT_RESTIC
    ca_file: str = DEFAULT_CA_FILE
    docker: tuple[str, ...] = ("docker",)
    timeout_s: float = 6 * 3600
    """Wall-clock bound of one helper run: enforced inside the helper too (``timeout``),
    so a helper whose caller died still ends."""
    helper_cpus: float = 1.0
    helper_memory_mb: int = 1024
    helper_pids: int = 256
    max_file_mb: int = 100 * 1024
    """Files longer than this are left out of a backup: environments cannot write one
    (the fsize rlimit is their largest disk bound, dockyard.storage), and restic 0.14 reads
    a sparse file's holes as data (an 8 TiB ``truncate`` would take hours)."""

    def __post_init__(self) -> None:
        problems = []
        for key, low, high in (
            ("timeout_s", 1, 7 * 24 * 3600),
            ("helper_cpus", 0.01, 1024),
            ("helper_memory_mb", 64, 1024 * 1024),
            ("helper_pids", 16, 1_000_000),
            ("max_file_mb", 1, 16 * 1024 * 1024),
        ):
            value = getattr(self, key)
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not (low <= value <= high)
            ):
                problems.append(
                    f"{key}: {errors.shown(value)} is not allowed (allowed: {low} to {high})"
                )
        if not repository_ok(self.repository):
            # Never echoed: a pasted URL may carry a key.
            problems.append(f"repository: <a value> is not allowed (allowed: {REPOSITORY_ALLOWED})")
        if self.region and not (isinstance(self.region, str) and REGION.fullmatch(self.region)):
            problems.append(
                f"region: {errors.shown(self.region)} is not allowed (allowed: {REGION_ALLOWED})"
            )
        for key in ("credentials_dir", "cache_dir", "restic", "ca_file"):
            value = getattr(self, key)
            if not _absolute(value):
                problems.append(
                    f"{key}: <a path> is not allowed (allowed: an absolute path without "
                    "'.' or '..' components)"
                )
        if not isinstance(self.image, str) or not re.fullmatch(
            r"[A-Za-z0-9][A-Za-z0-9._/:@-]{0,511}", self.image
        ):
            problems.append(
                f"image: {errors.shown(self.image)} is not allowed (allowed: an image reference)"
            )
        if problems:
            raise ConfigError("backup settings: " + "; ".join(problems))

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], **extra: Any) -> Settings:
        """From a mapping of these fields (snake_case); None values keep the defaults."""
        known = {f for f in cls.__dataclass_fields__ if f != "docker"}
        values = {k: v for k, v in data.items() if k in known and v is not None}
        return cls(**values, **extra)

    @property
    def endpoint(self) -> str:
        """``host[:port]`` of the storage (for messages: never holds a key)."""
        match = REPOSITORY.fullmatch(self.repository)
        assert match is not None
        return match.group("host") + (f":{match.group('port')}" if match.group("port") else "")


def _absolute(path: Any) -> bool:
    return (
        isinstance(path, str)
        and path.startswith("/")
        and len(path) <= 4096
        and not any(ord(c) < 32 for c in path)
        and not any(part in (".", "..") for part in path.split("/"))
    )


@dataclass(frozen=True)
class Repo:
    """One session's repository."""

    stack: str
    session: str

    def __post_init__(self) -> None:
        for key in ("stack", "session"):
            value = getattr(self, key)
            if not isinstance(value, str) or not NAME.fullmatch(value):
                raise ConfigError(f"{key}: {value!r} is not allowed (allowed: {NAME_ALLOWED})")

    def url(self, settings: Settings) -> str:
        return f"{settings.repository.rstrip('/')}/{self.stack}/{self.session}"

    def password_file(self, settings: Settings) -> Path:
        return Path(settings.credentials_dir) / "passwords" / self.stack / self.session

    def __str__(self) -> str:
        return f"{self.stack}/{self.session}"


@dataclass(frozen=True)
class Workspace:
    """A workspace volume on the engine, and the environment container using it (if any)."""

    volume: str
    repo: Repo
    container: str | None = None
    running: bool = False
    finished_at: str = ""
    """When the container last stopped (engine time), "" if running or none."""
    tenant: str | None = None

    @property
    def session(self) -> str:
        return self.repo.session


# --- Results ---------------------------------------------------------------------------------


@dataclass
class BackupResult:
    session: str
    stack: str
    snapshot: str
    reason: str
    files: int
    bytes: int
    added_bytes: int
    seconds: float


@dataclass
class Snapshot:
    id: str
    short_id: str
    time: str
    tags: list[str]


@dataclass
class RestoreResult:
    session: str
    stack: str
    source: str
    """``stack/session`` whose repository the snapshot came from."""
    snapshot: str
    files: int
    bytes: int
    seconds: float
    previous_snapshot: str | None = None
    """With ``force`` over a non-empty workspace: the snapshot of what was there before."""


@dataclass
class CheckResult:
    session: str
    stack: str
    removed_snapshots: int
    ok: bool
    output: str


def check_selector(text: str) -> None:
    """A label selector ``key`` or ``key=value`` in the host library's grammar."""
    key, sep, value = text.partition("=")
    if not LABEL_KEY.fullmatch(key) or (sep and not SELECTOR_VALUE.fullmatch(value)):
        raise ConfigError(
            f"label selector {text[:120]!r} is not allowed (allowed: key or key=value)"
        )
