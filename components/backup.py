#!/usr/bin/env python3
"""Encrypted workspace backups: one restic repository per session in S3-compatible storage.

Each session's workspace volume is backed up with restic (Debian's package on the Docker
host; restic does the encryption, chunking and deduplication) to its own repository,
``<repository>/<stack>/<session>``, under its own random password. Passwords and storage
keys stay on the host, in a private directory (``credentials_dir``, 0700, files 0600):

- ``passwords/<stack>/<session>``: the repository password, created at the first backup;
- ``s3-credentials``: the storage keys, AWS shared-credentials format (``[default]``
  ``aws_access_key_id`` / ``aws_secret_access_key`` / ``aws_session_token``). Without it,
  the caller's ``AWS_*`` variables, else restic's own chain (an instance role).

How restic reaches a workspace: a short-lived **helper container** from ``image`` with the
workspace volume at ``/data`` (read-only for a backup) and the host's restic binary mounted
in. The engine mounts the volume, so every kind works the same — a plain named volume, one
bound to ``workspaceHostPath`` (whose host mountpoint is empty while no container uses
it), a stopped environment's — and snapshots always hold ``/data``, so any session's
snapshot restores into any other's workspace. The helper runs as the agent's uid (1000)
with no capabilities, a read-only root and ``no-new-privileges``: it has exactly the
agent's rights over the agent's own files. It shares the host's network (loopback
endpoints work as they do for restic on the host), PID and UTS namespaces: restic's lock
records then name a host process, so a backup killed with SIGKILL leaves a lock that
``restic unlock`` knows to be stale, exactly as for restic run on the host.

Secrets never appear in an argv, an environment entry of any container, a mount or a
label: the helper's shell reads ``KEY=VALUE`` lines (the storage keys) from its stdin up
to an empty line into restic's environment, and restic reads the password from the rest
of stdin. The environment itself gets nothing of this.

Stdlib only: ``roles/workspace_backup`` installs this file on Docker hosts as the
``workspace-backup`` command (scheduled runs, the idle monitor's and the refresh path's
hooks); the ``dockyard`` command uses it as ``dockyard.backup``.
"""

from __future__ import annotations

import argparse
import configparser
import contextlib
import fcntl
import json
import os
import re
import secrets
import stat
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

AGENT_UID = 1000
DEFAULT_CREDENTIALS_DIR = "/etc/dockyard/backup"
DEFAULT_CACHE_DIR = "/var/cache/dockyard/backup"
DEFAULT_IMAGE = "debian:bookworm-slim"
DEFAULT_RESTIC = "/usr/bin/restic"
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
# What restoring owners, modes and times of another uid's files takes, and no more.
WRITER_CAPABILITIES = ("CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID")
STORAGE_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy")

# The engine labels the components put on every workspace volume (components/environment.py;
# the host library's constants, tests/unit/test_backup_role.py keeps them equal).
LABEL_MANAGED = "dockyard.managed"
LABEL_VOLUME = "dockyard.volume"
LABEL_SESSION = "dockyard.session"
LABEL_STACK = "dockyard.stack"
LABEL_TENANT = "dockyard.tenant"
WORKSPACE_SELECTOR = f"{LABEL_VOLUME}=workspace"
MANAGED_SELECTOR = f"{LABEL_MANAGED}=true"
WORKSPACE_MOUNT = "/workspace"

# --- Grammar ------------------------------------------------------------------------------

_HOST = r"(?:[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?|\[[0-9A-Fa-f:]{2,39}\])"
REPOSITORY = re.compile(
    rf"s3:(?:(?P<scheme>https?)://)?(?P<host>{_HOST})(?::(?P<port>[0-9]{{1,5}}))?"
    r"/(?P<bucket>[a-z0-9][a-z0-9.-]{1,61}[a-z0-9])(?P<prefix>(?:/[A-Za-z0-9_.-]{1,128}){0,16})/?",
    re.ASCII,
)
REPOSITORY_ALLOWED = (
    "an S3-compatible restic location s3:[http[s]://]host[:port]/bucket[/prefix] (bucket "
    "3-63 of a-z 0-9 . -; no user name or key in it: keys go in the credentials directory)"
)
REGION = re.compile(r"[a-z0-9][a-z0-9-]{0,31}", re.ASCII)
REGION_ALLOWED = "a region name of lower-case letters, digits and '-' (e.g. us-east-1, auto)"
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}", re.ASCII)
NAME_ALLOWED = "letters, digits, '_', '.', '-', starting with a letter or digit"
# The host library's label selector grammar (dockyard_host.parse_selector).
LABEL_KEY = re.compile(r"[a-z0-9](?:[a-z0-9._/-]{0,126}[a-z0-9])?", re.ASCII)
SELECTOR_VALUE = re.compile(r"[A-Za-z0-9._/:-]{0,255}", re.ASCII)
READ_DATA_SUBSET = re.compile(
    r"(?:[0-9]{1,2}(?:\.[0-9]{1,2})?%|100%|[1-9][0-9]{0,3}/[1-9][0-9]{0,3})?"
)
# restic's reason tags on snapshots.
REASONS = ("manual", "scheduled", "idle-stop", "poweroff", "refresh", "destroy", "pre-restore")

# --- Errors ---------------------------------------------------------------------------------


class BackupError(RuntimeError):
    """A backup, restore or check did not happen; the message names the session and why."""


class ConfigError(BackupError, ValueError):
    """A setting is not allowed (the message names it and what is allowed)."""


class StorageError(BackupError):
    """The storage cannot be reached, or refused the keys."""


class PasswordError(BackupError):
    """The repository does not open with the session's password (or it is missing)."""


class NotFound(BackupError):
    """No such workspace, repository or snapshot."""


class NotEmpty(BackupError):
    """A restore would write over a workspace that holds files."""


class Busy(BackupError):
    """Another backup of the same session holds its lock."""


class VerifyError(BackupError):
    """What was restored is not what the snapshot holds."""


class _Uninitialised(BackupError):
    """The repository does not exist yet (internal: a backup then creates it)."""


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

    def __post_init__(self) -> None:
        problems = []
        if not repository_ok(self.repository):
            # Never echoed: a pasted URL may carry a key.
            problems.append(f"repository: <a value> is not allowed (allowed: {REPOSITORY_ALLOWED})")
        if self.region and not REGION.fullmatch(self.region):
            problems.append(f"region: {self.region!r} is not allowed (allowed: {REGION_ALLOWED})")
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
            problems.append(f"image: {self.image!r} is not allowed (allowed: an image reference)")
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


def repository_ok(value: Any) -> bool:
    """``value`` is an allowed repository location (REPOSITORY_ALLOWED)."""
    if not isinstance(value, str) or len(value) > 512:
        return False
    match = REPOSITORY.fullmatch(value)
    if match is None:
        return False
    port = match.group("port")
    segments = match.group("prefix").split("/")
    return (port is None or 1 <= int(port) <= 65535) and not any(
        part in (".", "..") for part in segments
    )


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


Runner = Callable[..., "subprocess.CompletedProcess[str]"]


def _last(text: str, lines: int = 3) -> str:
    kept = [line.strip() for line in text.strip().splitlines() if line.strip()]
    # restic says where it reads the password from: noise in an error message.
    kept = [line for line in kept if not line.startswith("reading repository password")]
    return " | ".join(kept[-lines:])[:600]


def _line_with(text: str, markers: Sequence[str]) -> str:
    """The first line of ``text`` naming one of ``markers`` (restic's reason)."""
    for line in text.splitlines():
        if any(marker in line for marker in markers):
            return line.strip().removeprefix("Fatal: ")[:300]
    return _last(text, 1)


UNINITIALISED = ("Is there a repository at the following location?",)
UNREACHABLE = (
    "connection refused",
    "no such host",
    "i/o timeout",
    "network is unreachable",
    "no route to host",
    "tls: ",
    "x509: ",
    "connection reset",
    "Client.Timeout",
    "EOF",
)
REFUSED = (
    "Access Denied",
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "Access Key Id you provided does not exist",
    "InvalidToken",
    "ExpiredToken",
)


# --- The engine and the helper ---------------------------------------------------------------


class Backups:
    """Backups of workspaces on one Docker engine (the local one: the helper mounts host
    paths, so this runs on the Docker host)."""

    def __init__(
        self,
        settings: Settings,
        environ: Mapping[str, str] | None = None,
        runner: Runner = subprocess.run,
        log: Callable[[str], None] = lambda _line: None,
    ) -> None:
        self.settings = settings
        self.environ = dict(os.environ if environ is None else environ)
        self.runner = runner
        self.log = log
        host = self.environ.get("DOCKER_HOST", "")
        if host and not host.startswith("unix://"):
            raise ConfigError(
                f"DOCKER_HOST={host} is not allowed for backups (allowed: the local engine, "
                "unix://…): the helper mounts host paths, so backups run on the Docker host "
                "itself — install the workspace_backup role there and run dockyard on it"
            )

    # --- docker ------------------------------------------------------------------------------

    def _docker(self, *args: str, timeout: float = 120, stdin: str | None = None) -> str:
        argv = [*self.settings.docker, *args]
        try:
            result = self.runner(
                argv, input=stdin, capture_output=True, text=True, timeout=timeout, check=False
            )
        except FileNotFoundError:
            raise BackupError(f"the docker CLI ({argv[0]}) is not installed") from None
        except subprocess.TimeoutExpired:
            raise BackupError(f"docker {args[0]}: no answer within {timeout:g} s") from None
        if result.returncode != 0:
            raise BackupError(f"docker {' '.join(args[:2])} failed: {_last(result.stderr)}")
        return result.stdout

    def _inspect(self, kind: str, names: Sequence[str]) -> list[dict[str, Any]]:
        if not names:
            return []
        return list(json.loads(self._docker(kind, "inspect", *names)))

    def workspaces(self, selector: str = MANAGED_SELECTOR) -> list[Workspace]:
        """Every workspace volume carrying ``selector`` (and ``dockyard.volume=workspace``)."""
        _check_selector(selector)
        names = self._docker(
            "volume", "ls", "-q", "--filter", f"label={WORKSPACE_SELECTOR}", "--filter",
            f"label={selector}",
        ).split()  # fmt: skip
        return [self._workspace(v) for v in self._inspect("volume", sorted(names))]

    def workspace(self, session: str, stack: str | None = None) -> Workspace:
        """The workspace of ``session`` (of ``stack``, when several stacks have one)."""
        selector = f"{LABEL_SESSION}={session}"
        _check_selector(selector)
        found = [w for w in self.workspaces(selector) if stack is None or w.repo.stack == stack]
        if not found:
            scope = f" of stack {stack}" if stack else ""
            raise NotFound(f"session {session}{scope}: no workspace volume on this engine")
        if len(found) > 1:
            stacks = ", ".join(sorted(w.repo.stack for w in found))
            raise NotFound(f"session {session}: workspaces in several stacks ({stacks}): name one")
        return found[0]

    def workspace_of_container(self, container: str) -> Workspace:
        """The workspace volume mounted at /workspace in ``container``."""
        try:
            (info,) = self._inspect("container", [container])
        except BackupError:
            raise NotFound(f"container {container}: not found on this engine") from None
        for mount in info.get("Mounts") or []:
            if mount.get("Destination") == WORKSPACE_MOUNT and mount.get("Type") == "volume":
                return self._workspace(self._inspect("volume", [mount["Name"]])[0], info)
        raise NotFound(f"container {container}: no workspace volume at {WORKSPACE_MOUNT}")

    def _workspace(
        self, volume: Mapping[str, Any], container: Mapping[str, Any] | None = None
    ) -> Workspace:
        labels = volume.get("Labels") or {}
        name = str(volume["Name"])
        if labels.get(LABEL_VOLUME) != "workspace" or not labels.get(LABEL_SESSION):
            raise NotFound(
                f"volume {name}: not a dockyard workspace (no {WORKSPACE_SELECTOR} label)"
            )
        repo = Repo(str(labels.get(LABEL_STACK) or "default"), str(labels[LABEL_SESSION]))
        if container is None:
            ids = self._docker("ps", "-a", "-q", "--filter", f"volume={name}").split()
            users = [
                c for c in self._inspect("container", ids)
                if (c.get("Config", {}).get("Labels") or {}).get(LABEL_MANAGED) == "true"
            ]  # fmt: skip
            container = users[0] if users else None
        tenant = labels.get(LABEL_TENANT) or None
        if container is None:
            return Workspace(name, repo, tenant=tenant)
        state = container.get("State") or {}
        running = bool(state.get("Running"))
        return Workspace(
            name,
            repo,
            container=str(container.get("Name", "")).lstrip("/") or None,
            running=running,
            finished_at="" if running else str(state.get("FinishedAt", "")),
            tenant=tenant,
        )

    def _helper(
        self,
        args: Sequence[str],
        *,
        repo: Repo | None = None,
        password: str | None = None,
        mounts: Sequence[str] = (),
        timeout: float | None = None,
        command: str = "restic",
        writer: bool = False,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``command args`` in a helper container (see the module docstring).
        ``writer``: one that writes a workspace (restore, empty it), as root with only
        the capabilities that restoring owners and modes takes."""
        settings = self.settings
        name = f"dockyard-backup-{uuid.uuid4().hex[:12]}"
        argv = [
            *settings.docker, "run", "--rm", "-i", "--name", name, "--cap-drop", "ALL",
            "--security-opt", "no-new-privileges", "--read-only", "--tmpfs", "/tmp",  # noqa: S108 - the helper's own tmpfs
            "--network", "host", "--uts", "host",
            "-v", f"{settings.restic}:{HELPER_RESTIC}:ro",
        ]  # fmt: skip
        if writer:
            # A new volume's root is root's until restic gives it the snapshot's owner.
            argv += ["--user", "0:0"]
            argv += [a for cap in WRITER_CAPABILITIES for a in ("--cap-add", cap)]
        else:
            argv += ["--user", f"{AGENT_UID}:{AGENT_UID}", "--pid", "host"]
        if Path(settings.ca_file).is_file():
            argv += ["-v", f"{settings.ca_file}:{HELPER_CA}:ro"]
        for variable in PROXY_VARIABLES:
            if self.environ.get(variable):
                argv += ["-e", f"{variable}={self.environ[variable]}"]
        stdin = ""
        options: list[str] = [f"s3.region={settings.region}"] if settings.region else []
        options = [word for option in options for word in ("-o", option)]
        if repo is not None:
            argv += ["-e", f"RESTIC_REPOSITORY={repo.url(settings)}"]
            # The cache is the helper uid's; a root writer would leave files it cannot use.
            cache = None if writer else self._restic_cache()
            if cache is not None:
                argv += ["-v", f"{cache}:{HELPER_CACHE}", "-e", f"RESTIC_CACHE_DIR={HELPER_CACHE}"]
            else:
                options.append("--no-cache")
            stdin = "".join(f"{k}={v}\n" for k, v in self._storage_keys().items())
        for mount in mounts:
            argv += ["-v", mount]
        argv += [settings.image, "sh", "-c", HELPER_PRELUDE, command]
        argv += [*(options if command == "restic" else []), *args]
        stdin += "\n" + (f"{password}\n" if password is not None else "")
        limit = timeout or settings.timeout_s
        try:
            return self.runner(
                argv, input=stdin, capture_output=True, text=True, timeout=limit, check=False
            )
        except FileNotFoundError:
            raise BackupError(f"the docker CLI ({argv[0]}) is not installed") from None
        except subprocess.TimeoutExpired:
            with contextlib.suppress(Exception):
                self.runner(
                    [*settings.docker, "kill", name], capture_output=True, text=True,
                    timeout=60, check=False,
                )  # fmt: skip
            what = f"session {repo.session}: " if repo else ""
            raise BackupError(
                f"{what}{command} {args[0]} did not finish within {limit:g} s"
            ) from None

    def _restic(
        self, repo: Repo, password: str, action: str, args: Sequence[str], **kwargs: Any
    ) -> subprocess.CompletedProcess[str]:
        result = self._helper(args, repo=repo, password=password, **kwargs)
        if result.returncode != 0:
            raise self._error(repo, action, result)
        return result

    def _error(
        self, repo: Repo, action: str, result: subprocess.CompletedProcess[str]
    ) -> BackupError:
        text = result.stderr or ""
        head = f"session {repo.session} (stack {repo.stack}): {action} failed"
        url = repo.url(self.settings)
        if "wrong password or no key found" in text:
            return PasswordError(
                f"{head}: the repository {url} does not open with the password in "
                f"{repo.password_file(self.settings)} (wrong password or no key found); "
                "nothing was changed"
            )
        if any(marker in text for marker in UNINITIALISED) and not any(
            marker in text for marker in (*UNREACHABLE, *REFUSED)
        ):
            return _Uninitialised(f"{head}: no repository at {url} yet")
        if any(marker in text for marker in REFUSED):
            return StorageError(
                f"{head}: the storage at {self.settings.endpoint} refused the keys "
                f"({_line_with(text, REFUSED)}); nothing was changed"
            )
        if any(marker in text for marker in UNREACHABLE):
            return StorageError(
                f"{head}: the storage at {self.settings.endpoint} is unreachable "
                f"({_line_with(text, UNREACHABLE)}); the workspace is untouched"
            )
        if "repository is already locked" in text:
            return Busy(f"{head}: the repository is locked by another restic ({_last(text, 2)})")
        if result.returncode in (137, -9):
            return BackupError(f"{head}: restic was killed (SIGKILL) before it finished")
        return BackupError(f"{head} (restic exit {result.returncode}): {_last(text)}")

    # --- host-side files ------------------------------------------------------------------

    def _private_dir(self, path: Path, create: bool) -> Path:
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

    def _credentials_dir(self, create: bool = False) -> Path:
        return self._private_dir(Path(self.settings.credentials_dir), create)

    def _storage_keys(self) -> dict[str, str]:
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

    def _restic_cache(self) -> Path | None:
        """restic's cache (encrypted blobs only), owned by the helper's uid; None: none."""
        path = Path(self.settings.cache_dir) / "restic"
        try:
            path.mkdir(parents=True, exist_ok=True, mode=0o700)
            if path.stat().st_uid != AGENT_UID:
                os.chown(path, AGENT_UID, AGENT_UID)
        except OSError:
            return None
        return path

    @contextlib.contextmanager
    def _locked(self, repo: Repo, wait_s: float) -> Iterator[None]:
        """This host's lock on one session's repository (restic's own locks are in the
        repository; this one keeps two dockyard runs here from racing to create it)."""
        directory = self._private_dir(Path(self.settings.cache_dir) / "locks", create=True)
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

    def _password(self, repo: Repo) -> str:
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

    def _new_password(self, repo: Repo) -> str:
        """Create the session's password file (0600, exclusive: never replaces one)."""
        self._credentials_dir(create=True)
        path = repo.password_file(self.settings)
        # Each level private, not only the credentials directory (it may be shared).
        self._private_dir(path.parent.parent, create=True)
        self._private_dir(path.parent, create=True)
        password = secrets.token_urlsafe(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, (password + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        _fsync_dir(path.parent)
        return password

    # --- repositories ------------------------------------------------------------------------

    def _open_or_create(self, repo: Repo) -> str:
        """The password of ``repo``'s repository, creating both the first time. A missing
        password file for a repository that exists is an error, never a new password."""
        path = repo.password_file(self.settings)
        self._credentials_dir(create=True)
        if path.exists():
            return self._password(repo)
        probe = self._helper(["cat", "config"], repo=repo, password=secrets.token_urlsafe(16))
        error = self._error(repo, "opening the repository", probe)
        if not isinstance(error, _Uninitialised):
            if isinstance(error, PasswordError):
                raise PasswordError(
                    f"session {repo.session} (stack {repo.stack}): its repository "
                    f"{repo.url(self.settings)} exists but the password file {path} is "
                    "missing — restore it from your copy of the credentials directory; "
                    "nothing was changed"
                )
            raise error
        password = self._new_password(repo)
        self._init(repo, password)
        return password

    def _init(self, repo: Repo, password: str) -> None:
        self.log(f"session {repo.session}: creating its repository {repo.url(self.settings)}")
        self._restic(repo, password, "creating the repository", ["init"])

    # --- operations -------------------------------------------------------------------------

    def backup(
        self, workspace: Workspace, reason: str = "manual", wait_s: float = 600
    ) -> BackupResult:
        """Back up ``workspace`` (read-only mount). Creates the repository and its password
        the first time. Raises :class:`BackupError` (the workspace is never written)."""
        if reason not in REASONS:
            raise ConfigError(f"reason {reason!r} is not allowed (allowed: {', '.join(REASONS)})")
        with self._locked(workspace.repo, wait_s):
            return self._backup_locked(workspace, reason)

    def _volume_exists(self, volume: str) -> None:
        # `docker run -v name:/data` would create a missing volume: empty, and unlabelled.
        try:
            self._inspect("volume", [volume])
        except BackupError:
            raise NotFound(f"volume {volume}: not found on this engine") from None

    def snapshots(self, repo: Repo) -> list[Snapshot]:
        """The session's snapshots, oldest first; [] when it has no repository yet."""
        password = self._password_if_any(repo)
        if password is None:
            return []
        try:
            result = self._restic(repo, password, "listing snapshots", ["snapshots", "--json"])
        except _Uninitialised:
            return []
        return [
            Snapshot(s["id"], s.get("short_id", s["id"][:8]), s["time"], list(s.get("tags") or []))
            for s in sorted(_json_list(result.stdout), key=lambda s: s["time"])
        ]

    def _password_if_any(self, repo: Repo) -> str | None:
        """The password, or None when the session has neither password nor repository."""
        if repo.password_file(self.settings).exists():
            return self._password(repo)
        self._credentials_dir(create=False)
        probe = self._helper(["cat", "config"], repo=repo, password=secrets.token_urlsafe(16))
        error = self._error(repo, "opening the repository", probe)
        if isinstance(error, _Uninitialised):
            return None
        if isinstance(error, PasswordError):
            return self._password(repo)  # raises: the file is missing
        raise error

    def _snapshot(self, repo: Repo, password: str, wanted: str) -> Snapshot:
        try:
            result = self._restic(repo, password, "listing snapshots", ["snapshots", "--json"])
        except _Uninitialised:
            raise NotFound(f"session {repo.session} (stack {repo.stack}): no backup yet") from None
        found = sorted(_json_list(result.stdout), key=lambda s: s["time"])
        if wanted == "latest":
            chosen = found[-1:]
        else:
            chosen = [s for s in found if s["id"].startswith(wanted)] if wanted else []
        if not chosen:
            what = "no backup yet" if not found else f"no snapshot {wanted!r}"
            raise NotFound(f"session {repo.session} (stack {repo.stack}): {what}")
        if len(chosen) > 1:
            raise NotFound(f"session {repo.session}: snapshot id {wanted!r} is ambiguous")
        s = chosen[0]
        return Snapshot(
            s["id"], s.get("short_id", s["id"][:8]), s["time"], list(s.get("tags") or [])
        )

    def _contents(self, repo: Repo, password: str, snapshot: str) -> tuple[int, int]:
        """(files, bytes) the snapshot holds under /data."""
        result = self._restic(repo, password, "reading the snapshot", ["ls", "--json", snapshot])
        files = size = 0
        for node in _json_stream(result.stdout):
            if node.get("struct_type") == "node" and node.get("type") == "file":
                files += 1
                size += int(node.get("size") or 0)
        return files, size

    def _measure(self, volume: str) -> tuple[int, int]:
        """(files, bytes) in the workspace volume now."""
        result = self._helper(
            [HELPER_DATA, "-type", "f", "-printf", "%s\\n"],
            mounts=[f"{volume}:{HELPER_DATA}:ro"],
            command="find",
            timeout=3600,
            writer=True,
        )
        if result.returncode != 0:
            raise BackupError(f"volume {volume}: cannot be measured: {_last(result.stderr)}")
        sizes = [int(line) for line in result.stdout.split()]
        return len(sizes), sum(sizes)

    def is_empty(self, volume: str) -> bool:
        """No entry in the workspace (a filesystem's lost+found does not count)."""
        self._volume_exists(volume)
        result = self._helper(
            [HELPER_DATA, "-mindepth", "1", "-maxdepth", "1", "!", "-name", "lost+found",
             "-print", "-quit"],
            mounts=[f"{volume}:{HELPER_DATA}:ro"],
            command="find",
        )  # fmt: skip
        if result.returncode != 0:
            raise BackupError(f"volume {volume}: cannot be read: {_last(result.stderr)}")
        return result.stdout.strip() == ""

    def _wipe(self, volume: str) -> None:
        result = self._helper(
            [HELPER_DATA, "-mindepth", "1", "-maxdepth", "1", "!", "-name", "lost+found",
             "-exec", "rm", "-rf", "--", "{}", "+"],
            mounts=[f"{volume}:{HELPER_DATA}"],
            command="find",
            timeout=3600,
            writer=True,
        )  # fmt: skip
        if result.returncode != 0:
            raise BackupError(f"volume {volume}: cannot be emptied: {_last(result.stderr)}")

    def restore(
        self,
        source: Repo,
        into: Workspace,
        snapshot: str = "latest",
        force: bool = False,
        wait_s: float = 600,
    ) -> RestoreResult:
        """Restore ``snapshot`` of ``source``'s repository into ``into``'s workspace and
        verify it (file count and bytes, against the snapshot's own listing).

        Nothing is written before the repository has opened and the snapshot is known: a
        wrong password or unreachable storage leaves the workspace as it was. A non-empty
        workspace is refused unless ``force``; then its content is backed up first (to
        ``into``'s own repository, ``pre-restore``) and replaced. A running environment keeps
        running (stopping it would give its published ports new host ports); files it
        writes meanwhile show up as a failed verification."""
        started = time.monotonic()
        with contextlib.ExitStack() as stack:
            stack.enter_context(self._locked(source, wait_s))
            if into.repo != source:
                stack.enter_context(self._locked(into.repo, wait_s))
            password = self._password(source)
            chosen = self._snapshot(source, password, snapshot)
            expected = self._contents(source, password, chosen.id)
            empty = self.is_empty(into.volume)
            if not empty and not force:
                raise NotEmpty(
                    f"session {into.session}: its workspace {into.volume} is not empty; "
                    "nothing was restored (allowed: an empty workspace, or --force, which "
                    "backs the current content up first and replaces it)"
                )
            previous = None
            if not empty:
                saved = self._backup_locked(into, "pre-restore")
                previous = saved.snapshot
                self.log(f"session {into.session}: its content is saved as snapshot {previous}")
                self._wipe(into.volume)
            self._restic(
                source, password, "restore",
                ["restore", chosen.id, "--target", "/"],
                mounts=[f"{into.volume}:{HELPER_DATA}"],
                writer=True,
            )  # fmt: skip
            found = self._measure(into.volume)
            if found != expected:
                raise VerifyError(
                    f"session {into.session}: restored {found[0]} files / {found[1]} bytes, "
                    f"snapshot {chosen.short_id} holds {expected[0]} files / {expected[1]} bytes"
                )
        return RestoreResult(
            session=into.session,
            stack=into.repo.stack,
            source=str(source),
            snapshot=chosen.id,
            files=found[0],
            bytes=found[1],
            seconds=round(time.monotonic() - started, 2),
            previous_snapshot=previous,
        )

    def _backup_locked(self, workspace: Workspace, reason: str) -> BackupResult:
        """A backup while the caller holds ``workspace``'s lock."""
        repo = workspace.repo
        started = time.monotonic()
        self._volume_exists(workspace.volume)
        password = self._open_or_create(repo)
        args = [
            "backup", HELPER_DATA, "--json", "--host", repo.session,
            "--tag", "dockyard", "--tag", reason,
        ]  # fmt: skip
        mounts = [f"{workspace.volume}:{HELPER_DATA}:ro"]
        try:
            result = self._restic(repo, password, "backup", args, mounts=mounts)
        except _Uninitialised:  # the password file outlived its repository
            self._init(repo, password)
            result = self._restic(repo, password, "backup", args, mounts=mounts)
        summary = _summary(result.stdout)
        return BackupResult(
            session=repo.session,
            stack=repo.stack,
            snapshot=str(summary.get("snapshot_id", "")),
            reason=reason,
            files=int(summary.get("total_files_processed", 0)),
            bytes=int(summary.get("total_bytes_processed", 0)),
            added_bytes=int(summary.get("data_added", 0)),
            seconds=round(time.monotonic() - started, 2),
        )

    def restore_if_empty(self, workspace: Workspace) -> RestoreResult | None:
        """``restore: latest`` at create: the latest snapshot into an empty workspace.
        None (nothing done) when the workspace holds files or the session has no backup
        yet; an error when there is one that cannot be read (a new environment must not
        silently start empty over a backup it could not restore)."""
        if not self.is_empty(workspace.volume):
            self.log(f"session {workspace.session}: workspace not empty; nothing restored")
            return None
        password = self._password_if_any(workspace.repo)
        if password is None:
            self.log(f"session {workspace.session}: no backup yet; starting empty")
            return None
        try:
            return self.restore(workspace.repo, workspace, "latest")
        except NotFound as error:
            if "no backup yet" in str(error):
                self.log(f"session {workspace.session}: no backup yet; starting empty")
                return None
            raise

    def maintain(
        self,
        repo: Repo,
        keep_last: int,
        keep_daily: int,
        keep_weekly: int,
        read_data_subset: str = "",
        wait_s: float = 60,
    ) -> CheckResult:
        """Retention (``forget --prune``) and ``restic check``. Stale locks (a killed
        backup's) are removed first; a live one makes this :class:`Busy`."""
        with self._locked(repo, wait_s):
            password = self._password(repo)
            self._restic(repo, password, "removing stale locks", ["unlock"])
            keep = [
                "--keep-last", str(keep_last), "--keep-daily", str(keep_daily),
                "--keep-weekly", str(keep_weekly),
            ]  # fmt: skip
            forgot = self._restic(
                repo, password, "retention", ["forget", "--prune", "--json", *keep]
            )
            removed = sum(len(group.get("remove") or []) for group in _json_list(forgot.stdout))
            args = ["check"] + (
                [f"--read-data-subset={read_data_subset}"] if read_data_subset else []
            )
            checked = self._helper(args, repo=repo, password=password)
            if checked.returncode != 0:
                error = self._error(repo, "check", checked)
                # Not reaching the repository is this run's failure; anything else that
                # fails the check is the repository's, reported as such.
                if isinstance(error, StorageError | PasswordError | Busy | _Uninitialised):
                    raise error
            return CheckResult(
                repo.session,
                repo.stack,
                removed,
                ok=checked.returncode == 0 and "no errors were found" in checked.stdout,
                output=_last(checked.stdout + "\n" + checked.stderr, 6),
            )


def _private(path: Path, info: os.stat_result) -> None:
    """Refuse a secret's file or directory that others could read or that someone else owns."""
    if info.st_mode & 0o077:
        raise PasswordError(
            f"{path}: mode {stat.S_IMODE(info.st_mode):04o} lets others in (allowed: 0600 "
            "files / 0700 directories): chmod go-rwx it"
        )
    if info.st_uid not in (0, os.geteuid()):
        raise PasswordError(f"{path}: owned by uid {info.st_uid} (allowed: root or this user)")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _check_selector(text: str) -> None:
    key, sep, value = text.partition("=")
    if not LABEL_KEY.fullmatch(key) or (sep and not SELECTOR_VALUE.fullmatch(value)):
        raise ConfigError(
            f"label selector {text[:120]!r} is not allowed (allowed: key or key=value)"
        )


def _json_stream(text: str) -> Iterator[dict[str, Any]]:
    """The JSON objects in restic's --json output (one after another, whitespace or not;
    restic's own notes such as "reading repository password from stdin" are skipped)."""
    for value in _json_stream_any(text):
        if isinstance(value, dict):
            yield value


def _json_list(text: str) -> list[dict[str, Any]]:
    for value in _json_stream_any(text):
        if isinstance(value, list):
            return [v for v in value if isinstance(v, dict)]
    return []


def _json_stream_any(text: str) -> Iterator[Any]:
    decoder = json.JSONDecoder()
    index = 0
    while index < len(text):
        if text[index].isspace():
            index += 1
            continue
        try:
            value, index = decoder.raw_decode(text, index)
        except json.JSONDecodeError:
            index = text.find("\n", index) + 1 or len(text)
            continue
        yield value


def _summary(stdout: str) -> dict[str, Any]:
    for line in reversed(stdout.splitlines()):
        with contextlib.suppress(json.JSONDecodeError):
            message = json.loads(line)
            if isinstance(message, dict) and message.get("message_type") == "summary":
                return message
    return {}


# --- The host command: scheduled runs, hooks, restore at create -------------------------------

# The role's defaults (roles/workspace_backup/defaults/main.yml) are the same values;
# tests/unit/test_backup_role.py keeps them equal.
HOST_DEFAULTS: dict[str, Any] = {
    "repository": "",
    "region": "",
    "credentials_dir": DEFAULT_CREDENTIALS_DIR,
    "cache_dir": DEFAULT_CACHE_DIR,
    "image": DEFAULT_IMAGE,
    "restic": DEFAULT_RESTIC,
    "label": MANAGED_SELECTOR,
    "keep_last": 24,
    "keep_daily": 7,
    "keep_weekly": 4,
    "maintenance_hours": 24,
    "read_data_subset": "",
}


def load_host_config(path: str | None) -> tuple[Settings, dict[str, Any]]:
    """The host command's configuration: HOST_DEFAULTS, then the JSON object in ``path``."""
    config = dict(HOST_DEFAULTS)
    if path:
        try:
            loaded = json.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"{path}: cannot be read ({exc.strerror})") from None
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}: not JSON ({exc.msg} at line {exc.lineno})") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: not a JSON object")
        config.update(loaded)
    source = path or "config"
    unknown = sorted(set(config) - set(HOST_DEFAULTS))
    if unknown:
        raise ConfigError(f"{source}: unknown keys {unknown} (allowed: {', '.join(HOST_DEFAULTS)})")
    for key, default in HOST_DEFAULTS.items():
        value = config[key]
        if isinstance(default, int) and (not isinstance(value, int) or isinstance(value, bool)):
            raise ConfigError(
                f"{source}: {key}: {value!r} is not allowed (allowed: a whole number)"
            )
        if isinstance(default, str) and not isinstance(value, str):
            raise ConfigError(f"{source}: {key}: {value!r} is not allowed (allowed: a string)")
    for key in ("keep_last", "keep_daily", "keep_weekly"):
        if not 0 <= config[key] <= 100_000:
            raise ConfigError(f"{source}: {key}: {config[key]} is not allowed (allowed: 0-100000)")
    if sum(config[k] for k in ("keep_last", "keep_daily", "keep_weekly")) == 0:
        raise ConfigError(
            f"{source}: keep_last, keep_daily and keep_weekly are all 0 (allowed: at least one above 0, or every snapshot would go)"
        )
    if not 1 <= config["maintenance_hours"] <= 24 * 365:
        raise ConfigError(
            f"{source}: maintenance_hours: {config['maintenance_hours']} is not allowed (allowed: 1-8760)"
        )
    if not READ_DATA_SUBSET.fullmatch(config["read_data_subset"]):
        raise ConfigError(
            f"{source}: read_data_subset: {config['read_data_subset']!r} is not allowed "
            "(allowed: '' for none, a percentage such as 5% or a fraction such as 1/10)"
        )
    _check_selector(config["label"])
    settings = Settings.from_mapping(config)
    return settings, config


@dataclass
class HostState:
    """What the scheduled runs remember (``<cache_dir>/state.json``), per ``stack/session``."""

    last_success: dict[str, float] = field(default_factory=dict)
    last_failure: dict[str, str] = field(default_factory=dict)
    last_maintenance: dict[str, float] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> HostState:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return cls()
        known = {k: data.get(k) or {} for k in ("last_success", "last_failure", "last_maintenance")}
        return cls(**known)

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".state.", dir=path.parent)
        with os.fdopen(fd, "w") as handle:
            json.dump(asdict(self), handle, indent=2, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)


def _engine_time(value: str) -> float:
    base = value.partition(".")[0]
    try:
        moment = datetime.fromisoformat(base.rstrip("Z")).replace(tzinfo=UTC)
    except ValueError:
        return 0.0
    return moment.timestamp()


HostAudit = Callable[..., None]
ACTOR = "host:workspace-backup"


def host_audit() -> HostAudit | None:
    """The host library's audit trail (``dockyard_host.audit``): installed beside this
    command by the role; in a checkout, the host_common role's copy. None without it."""
    try:
        import dockyard_host  # type: ignore[import-not-found]
    except ImportError:
        checkout = Path(__file__).resolve().parents[1] / "roles" / "host_common" / "files"
        if not (checkout / "dockyard_host.py").is_file():
            return None
        sys.path.append(str(checkout))
        import dockyard_host
    return dockyard_host.audit  # type: ignore[no-any-return]


def _audit_line(
    audit: HostAudit | None,
    action: str,
    workspace: Workspace,
    started: float,
    error: BaseException | None = None,
    detail: str = "",
) -> None:
    if audit is None:
        return
    labels = {LABEL_SESSION: workspace.session, LABEL_STACK: workspace.repo.stack}
    if workspace.tenant:
        labels[LABEL_TENANT] = workspace.tenant
    audit(
        action,
        actor=ACTOR,
        labels=labels,
        result="error" if error else "ok",
        duration_ms=round((time.monotonic() - started) * 1000),
        detail=str(error) if error else detail,
    )


def scheduled_run(
    backups: Backups,
    config: Mapping[str, Any],
    now: Callable[[], float] = time.time,
    audit: HostAudit | None = None,
) -> int:
    """Back up every workspace (those of stopped environments only when they changed
    since the last backup), then retention and check where due. A failure is reported
    and retried on the next run; returns the number of failures. Each backup and check
    is a line of the host's audit trail (``audit``)."""
    state_file = Path(backups.settings.cache_dir) / "state.json"
    state = HostState.load(state_file)
    failures = 0
    for workspace in backups.workspaces(str(config["label"])):
        key = str(workspace.repo)
        last = state.last_success.get(key, 0.0)
        stopped = workspace.container and not workspace.running and workspace.finished_at
        if stopped and _engine_time(workspace.finished_at) < last:
            print(f"workspace-backup: {key}: unchanged since its last backup (stopped)")
            continue
        started = time.monotonic()
        try:
            result = backups.backup(workspace, "scheduled", wait_s=0)
        except Busy as error:
            print(f"workspace-backup: {key}: skipped: {error}")
            continue
        except BackupError as error:
            failures += 1
            state.last_failure[key] = f"{datetime.now(UTC):%Y-%m-%dT%H:%M:%SZ} {error}"[:800]
            print(f"ERROR: workspace-backup: {error}", file=sys.stderr)
            _audit_line(audit, "backup", workspace, started, error)
            continue
        _audit_line(audit, "backup", workspace, started, detail=_described(result))
        state.last_success[key] = now()
        state.last_failure.pop(key, None)
        print(
            f"workspace-backup: {key}: snapshot {result.snapshot} ({result.files} files, "
            f"{result.bytes} bytes, {result.added_bytes} new) in {result.seconds:g} s"
        )
        if (
            now() - state.last_maintenance.get(key, 0.0)
            >= float(config["maintenance_hours"]) * 3600
        ):
            started = time.monotonic()
            try:
                checked = backups.maintain(
                    workspace.repo,
                    int(config["keep_last"]),
                    int(config["keep_daily"]),
                    int(config["keep_weekly"]),
                    str(config["read_data_subset"]),
                )
            except BackupError as error:
                failures += 1
                print(f"ERROR: workspace-backup: {error}", file=sys.stderr)
                _audit_line(audit, "backup-check", workspace, started, error)
                continue
            state.last_maintenance[key] = now()
            verdict = "check clean" if checked.ok else f"CHECK FAILED: {checked.output}"
            _audit_line(
                audit,
                "backup-check",
                workspace,
                started,
                None if checked.ok else BackupError(verdict),
                f"retention removed {checked.removed_snapshots} snapshots; {verdict}",
            )
            print(
                f"workspace-backup: {key}: retention removed {checked.removed_snapshots} snapshots; {verdict}"
            )
            if not checked.ok:
                failures += 1
    with contextlib.suppress(OSError):
        state.save(state_file)
    return failures


def _described(result: BackupResult) -> str:
    return (
        f"{result.reason}: snapshot {result.snapshot}, {result.files} files, {result.bytes} bytes"
    )


def _audited(action: str, **fields: Any) -> contextlib.AbstractContextManager[dict[str, Any]]:
    """The sessions audit trail when this runs as part of the dockyard package (a Pulumi
    command at create); nothing on a host where it is installed as a script."""
    if not __package__:
        return contextlib.nullcontext({})
    from .sessions import audit
    from .sessions.settings import paths

    return audit.recorded(paths().audit_log, action, **fields)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="workspace-backup", description="dockyard encrypted workspace backups (restic)"
    )
    parser.add_argument("--config", help="JSON configuration (the workspace_backup role's)")
    parser.add_argument("--check-config", action="store_true", help="validate and exit")
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("run", help="scheduled: back up every workspace, retention and check")
    hook = commands.add_parser("hook", help="back up one environment's workspace now")
    hook.add_argument("container", help="the environment's container name or id")
    hook.add_argument("--reason", default="manual", choices=REASONS)
    commands.add_parser(
        "restore-if-empty",
        help="restore: latest at create (settings and volume from DOCKYARD_BACKUP_* variables)",
    )
    return parser


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    env = dict(os.environ if environ is None else environ)
    try:
        if args.command == "restore-if-empty":
            return _restore_at_create(env)
        settings, config = load_host_config(args.config)
        if args.check_config:
            return 0
        backups = Backups(settings, env, log=lambda line: print(f"workspace-backup: {line}"))
        if args.command == "hook":
            workspace = backups.workspace_of_container(args.container)
            started = time.monotonic()
            try:
                result = backups.backup(workspace, args.reason)
            except BackupError as error:
                _audit_line(host_audit(), "backup", workspace, started, error)
                raise
            _audit_line(host_audit(), "backup", workspace, started, detail=_described(result))
            print(
                f"workspace-backup: {workspace.repo}: snapshot {result.snapshot} before "
                f"{args.reason} ({result.files} files, {result.bytes} bytes)"
            )
            return 0
        if args.command == "run":
            return 1 if scheduled_run(backups, config, audit=host_audit()) else 0
        build_parser().print_usage(sys.stderr)
        return 2
    except ConfigError as error:
        print(f"ERROR: {error}", file=sys.stderr)
        return 2
    except BackupError as error:
        print(f"ERROR: {error}", file=sys.stderr)
        return 1


def _restore_at_create(env: Mapping[str, str]) -> int:
    """The Pulumi command a new environment with ``restore: latest`` runs between its
    workspace volume and its container."""
    try:
        settings = Settings.from_mapping(json.loads(env.get("DOCKYARD_BACKUP", "")))
    except (json.JSONDecodeError, TypeError):
        print("ERROR: DOCKYARD_BACKUP is not the backup settings as JSON", file=sys.stderr)
        return 2
    repo = Repo(env.get("DOCKYARD_BACKUP_STACK", ""), env.get("DOCKYARD_BACKUP_SESSION", ""))
    workspace = Workspace(env.get("DOCKYARD_BACKUP_VOLUME", ""), repo)
    backups = Backups(settings, env, log=lambda line: print(f"dockyard-restore: {line}"))
    with _audited("restore", session=repo.session, stack=repo.stack) as entry:
        restored = backups.restore_if_empty(workspace)
        entry["detail"] = (
            f"latest snapshot {restored.snapshot[:8]}: {restored.files} files, "
            f"{restored.bytes} bytes"
            if restored
            else "nothing to restore"
        )
    if restored is not None:
        print(
            f"dockyard-restore: session {repo.session}: restored snapshot {restored.snapshot[:8]} "
            f"({restored.files} files, {restored.bytes} bytes, verified)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
