"""The engine's files on the host: the private credentials directory (storage keys, one
password per session), restic's cache and this host's per-repository locks (standard
library only).

Secrets live in directories only their owner can enter (0700) and files only their owner
can read (0600); anything looser, or owned by someone else, is refused before it is read.
"""

from __future__ import annotations

import configparser
import contextlib
import fcntl
import os
import secrets
import stat
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

from ..files import fsync_directory, write_synced
from .model import (
    CREDENTIALS_FILE,
    HELPER_UID,
    STORAGE_VARIABLES,
    Busy,
    ConfigError,
    NotFound,
    PasswordError,
    Repo,
    Settings,
)


class HostFiles:
    """The host-side files of one :class:`Settings` (``environ``: the caller's, for the
    storage keys when there is no credentials file)."""

    def __init__(self, settings: Settings, environ: Mapping[str, str]) -> None:
        self.settings = settings
        self.environ = environ

    def private_dir(self, path: Path, create: bool) -> Path:
        """A directory only its owner (root, or this user) can enter."""
        if create and not path.is_dir():
            path.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileExistsError):
                path.mkdir(mode=0o700)
        try:
            info = path.stat()
        except FileNotFoundError:
            raise NotFound(f"{path}: no such directory") from None
        _private(path, info)
        return path

    def credentials_dir(self, create: bool = False) -> Path:
        return self.private_dir(Path(self.settings.credentials_dir), create)

    def storage_keys(self) -> dict[str, str]:
        """The storage keys: the credentials file, else the caller's AWS_* variables."""
        path = Path(self.settings.credentials_dir) / CREDENTIALS_FILE
        try:
            info = path.stat()
        except FileNotFoundError:
            return {k: self.environ[k] for k in STORAGE_VARIABLES if self.environ.get(k)}
        except PermissionError:
            raise PasswordError(
                f"{path}: cannot be read by this user (run as root, or as the owner of "
                f"{self.settings.credentials_dir})"
            ) from None
        _private(path, info)
        parser = configparser.ConfigParser(interpolation=None)
        try:
            parser.read_string(path.read_text(encoding="utf-8"), source=str(path))
        except (configparser.Error, UnicodeDecodeError):
            raise ConfigError(
                f"{path}: not an AWS credentials file (allowed: [default] with "
                "aws_access_key_id and aws_secret_access_key)"
            ) from None
        section = parser["default"] if parser.has_section("default") else {}
        keys = {
            name: section[name.lower()].strip()
            for name in STORAGE_VARIABLES
            if section.get(name.lower(), "").strip()
        }
        if any("\n" in value or "\r" in value for value in keys.values()):
            raise ConfigError(f"{path}: a value spans lines (allowed: one line per key)")
        return keys

    def restic_cache(self) -> Path | None:
        """restic's cache (encrypted blobs only), owned by the helper's uid (root: no
        host user's, issue 25.9); None: none."""
        path = Path(self.settings.cache_dir) / "restic"
        try:
            path.mkdir(parents=True, exist_ok=True, mode=0o700)
            if path.stat().st_uid != HELPER_UID:
                os.chown(path, HELPER_UID, HELPER_UID)
        except OSError:
            return None
        return path

    @contextlib.contextmanager
    def locked(self, repo: Repo, wait_s: float) -> Iterator[None]:
        """This host's lock on one session's repository (restic's own locks are in the
        repository; this one keeps two dockyard runs here from racing to create it)."""
        directory = self.private_dir(Path(self.settings.cache_dir) / "locks", create=True)
        path = directory / f"{repo.stack}.{repo.session}.lock"
        with open(path, "a") as handle:
            deadline = time.monotonic() + wait_s
            while True:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise Busy(
                            f"session {repo.session} (stack {repo.stack}): another backup or "
                            "restore of it is running on this host; retried on the next run"
                        ) from None
                    time.sleep(0.5)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def password(self, repo: Repo) -> str:
        path = repo.password_file(self.settings)
        try:
            info = path.stat()
        except FileNotFoundError:
            raise PasswordError(
                f"session {repo.session} (stack {repo.stack}): no password file {path} — it "
                "was never backed up from this host, or the credentials directory was not "
                "restored; nothing was changed"
            ) from None
        except PermissionError:
            raise PasswordError(
                f"session {repo.session}: {path} cannot be read by this user (run as root, "
                f"or as the owner of {self.settings.credentials_dir})"
            ) from None
        _private(path, info)
        text = path.read_text(encoding="utf-8").strip()
        if not text:
            raise PasswordError(f"session {repo.session}: the password file {path} is empty")
        return text

    def new_password(self, repo: Repo) -> str:
        """Create the session's password file (0600, exclusive: never replaces one)."""
        self.credentials_dir(create=True)
        path = repo.password_file(self.settings)
        # Each level private, not only the credentials directory (it may be shared).
        self.private_dir(path.parent.parent, create=True)
        self.private_dir(path.parent, create=True)
        password = secrets.token_urlsafe(32)
        write_synced(path, password + "\n", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        fsync_directory(path.parent)
        return password


def _private(path: Path, info: os.stat_result) -> None:
    """Refuse a secret's file or directory that others could read or that someone else owns."""
    if info.st_mode & 0o077:
        raise PasswordError(
            f"{path}: mode {stat.S_IMODE(info.st_mode):04o} lets others in (allowed: 0600 "
            "files / 0700 directories): chmod go-rwx it"
        )
    if info.st_uid not in (0, os.geteuid()):
        raise PasswordError(f"{path}: owned by uid {info.st_uid} (allowed: root or this user)")
