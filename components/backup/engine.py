"""The restic engine: backups, restores and checks of workspace volumes on the local
Docker engine, restic running in a short-lived helper container (see :mod:`dockyard.backup`
for the design; standard library only). It knows volumes, repositories and snapshots;
who asked, and the audit trail, are its callers' business."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..contract import (
    LABEL_MANAGED,
    LABEL_SESSION,
    LABEL_STACK,
    LABEL_TENANT,
    LABEL_VOLUME,
    MANAGED_SELECTOR,
    MANAGED_VALUE,
    WORKSPACE_MOUNT,
    WORKSPACE_SELECTOR,
    WORKSPACE_VOLUME,
)
from . import restic_output
from .host_files import HostFiles
from .model import (
    HELPER_CA,
    HELPER_CACHE,
    HELPER_DATA,
    HELPER_PRELUDE,
    HELPER_RESTIC,
    PROXY_VARIABLES,
    REASONS,
    WRITER_CAPABILITIES,
    BackupError,
    BackupResult,
    Busy,
    CheckResult,
    ConfigError,
    NotEmpty,
    NotFound,
    PasswordError,
    Repo,
    RestoreResult,
    Settings,
    Snapshot,
    StorageError,
    Uninitialised,
    VerifyError,
    Workspace,
    check_selector,
)
from .restic_output import json_list, json_stream, last, summary

Runner = Callable[..., "subprocess.CompletedProcess[str]"]
# find's arguments for the workspace's top entries (a filesystem's lost+found is not one).
_TOP_ENTRIES = ("-mindepth", "1", "-maxdepth", "1", "!", "-name", "lost+found")


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
        self.files = HostFiles(settings, self.environ)
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
            raise BackupError(f"docker {' '.join(args[:2])} failed: {last(result.stderr)}")
        return result.stdout

    def _inspect_present(self, kind: str, names: Sequence[str]) -> list[dict[str, Any]]:
        """Like :meth:`_inspect`, leaving out what went away since it was listed (a backup
        helper that mounted the volume is removed as it exits)."""
        try:
            return self._inspect(kind, names)
        except BackupError:
            found = []
            for name in names:
                with contextlib.suppress(BackupError):
                    found += self._inspect(kind, [name])
            return found

    def _inspect(self, kind: str, names: Sequence[str]) -> list[dict[str, Any]]:
        if not names:
            return []
        return list(json.loads(self._docker(kind, "inspect", *names)))

    def workspaces(self, selector: str = MANAGED_SELECTOR) -> list[Workspace]:
        """Every workspace volume carrying ``selector`` (and ``dockyard.volume=workspace``)."""
        check_selector(selector)
        names = self._docker(
            "volume", "ls", "-q", "--filter", f"label={WORKSPACE_SELECTOR}", "--filter",
            f"label={selector}",
        ).split()  # fmt: skip
        return [self._workspace(v) for v in self._inspect("volume", sorted(names))]

    def workspace(self, session: str, stack: str | None = None) -> Workspace:
        """The workspace of ``session`` (of ``stack``, when several stacks have one)."""
        selector = f"{LABEL_SESSION}={session}"
        check_selector(selector)
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
        if labels.get(LABEL_VOLUME) != WORKSPACE_VOLUME or not labels.get(LABEL_SESSION):
            raise NotFound(
                f"volume {name}: not a dockyard workspace (no {WORKSPACE_SELECTOR} label)"
            )
        repo = Repo(str(labels.get(LABEL_STACK) or "default"), str(labels[LABEL_SESSION]))
        if container is None:
            ids = self._docker("ps", "-a", "-q", "--filter", f"volume={name}").split()
            users = [
                c for c in self._inspect_present("container", ids)
                if (c.get("Config", {}).get("Labels") or {}).get(LABEL_MANAGED) == MANAGED_VALUE
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
            # Bounded like an environment: a workspace full of holes or a hostile snapshot
            # costs at most this, never the host (docs/backup.md).
            "--cpu-period", "100000", "--cpu-quota", str(round(settings.helper_cpus * 100000)),
            "--memory", f"{settings.helper_memory_mb}m",
            "--memory-swap", f"{settings.helper_memory_mb}m",
            "--pids-limit", str(settings.helper_pids),
        ]  # fmt: skip
        if writer:
            # A new volume's root is root's until restic gives it the snapshot's owner.
            argv += ["--user", "0:0"]
            argv += [a for cap in WRITER_CAPABILITIES for a in ("--cap-add", cap)]
        else:
            # Root with one capability: it reads every workspace file, whatever its mode,
            # and writes nothing it does not own. Not the agent's uid: /proc/<pid>/environ
            # of a uid-1000 process (restic, holding the storage keys from stdin) is open
            # to the host's uid 1000, on Debian the first login user (issue 25.9).
            argv += ["--user", "0:0", "--cap-add", "DAC_READ_SEARCH", "--pid", "host"]
        # The host's namespaces (network, uts, pid) need it on an engine with userns-remap.
        argv += ["--userns", "host"]
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
            cache = None if writer else self.files.restic_cache()
            if cache is not None:
                argv += ["-v", f"{cache}:{HELPER_CACHE}", "-e", f"RESTIC_CACHE_DIR={HELPER_CACHE}"]
            else:
                options.append("--no-cache")
            stdin = "".join(f"{k}={v}\n" for k, v in self.files.storage_keys().items())
        for mount in mounts:
            argv += ["-v", mount]
        limit = timeout or settings.timeout_s
        # The helper ends itself at the limit (TERM, then KILL 10 s later), so it cannot
        # outlive a caller that was killed before its own timeout fired.
        argv += [settings.image, "timeout", "-k", "10", f"{limit:.0f}"]
        argv += ["sh", "-c", HELPER_PRELUDE, command]
        argv += [*(options if command == "restic" else []), *args]
        stdin += "\n" + (f"{password}\n" if password is not None else "")
        what = f"session {repo.session}: " if repo else ""
        overrun = BackupError(f"{what}{command} {args[0]} did not finish within {limit:g} s")
        started = time.monotonic()
        try:
            # The helper's own `timeout` fires first; this one is for an engine that hangs.
            result = self.runner(
                argv, input=stdin, capture_output=True, text=True, timeout=limit + 60,
                check=False,
            )  # fmt: skip
        except FileNotFoundError:
            raise BackupError(f"the docker CLI ({argv[0]}) is not installed") from None
        except subprocess.TimeoutExpired:
            with contextlib.suppress(Exception):
                self.runner(
                    [*settings.docker, "kill", name], capture_output=True, text=True,
                    timeout=60, check=False,
                )  # fmt: skip
            raise overrun from None
        # 124: `timeout` stopped it; 137: killed after the grace period.
        if result.returncode in (124, 137) and time.monotonic() - started >= limit:
            raise overrun
        return result

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
        return restic_output.error(self.settings, repo, action, result)

    # --- repositories ------------------------------------------------------------------------

    def _open_or_create(self, repo: Repo) -> str:
        """The password of ``repo``'s repository, creating both the first time. A missing
        password file for a repository that exists is an error, never a new password."""
        path = repo.password_file(self.settings)
        self.files.credentials_dir(create=True)
        if path.exists():
            return self.files.password(repo)
        probe = self._helper(["cat", "config"], repo=repo, password=secrets.token_urlsafe(16))
        error = self._error(repo, "opening the repository", probe)
        if not isinstance(error, Uninitialised):
            if isinstance(error, PasswordError):
                raise PasswordError(
                    f"session {repo.session} (stack {repo.stack}): its repository "
                    f"{repo.url(self.settings)} exists but the password file {path} is "
                    "missing — restore it from your copy of the credentials directory; "
                    "nothing was changed"
                )
            raise error
        password = self.files.new_password(repo)
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
        with self.files.locked(workspace.repo, wait_s):
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
        except Uninitialised:
            return []
        return [
            Snapshot(s["id"], s.get("short_id", s["id"][:8]), s["time"], list(s.get("tags") or []))
            for s in sorted(json_list(result.stdout), key=lambda s: s["time"])
        ]

    def _password_if_any(self, repo: Repo) -> str | None:
        """The password, or None when the session has neither password nor repository."""
        if repo.password_file(self.settings).exists():
            return self.files.password(repo)
        self.files.credentials_dir(create=False)
        probe = self._helper(["cat", "config"], repo=repo, password=secrets.token_urlsafe(16))
        error = self._error(repo, "opening the repository", probe)
        if isinstance(error, Uninitialised):
            return None
        if isinstance(error, PasswordError):
            return self.files.password(repo)  # raises: the file is missing
        raise error

    def _snapshot(self, repo: Repo, password: str, wanted: str) -> Snapshot:
        try:
            result = self._restic(repo, password, "listing snapshots", ["snapshots", "--json"])
        except Uninitialised:
            raise NotFound(f"session {repo.session} (stack {repo.stack}): no backup yet") from None
        found = sorted(json_list(result.stdout), key=lambda s: s["time"])
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
        for node in json_stream(result.stdout):
            if node.get("struct_type") == "node" and node.get("type") == "file":
                files += 1
                size += int(node.get("size") or 0)
        return files, size

    def _measure(self, volume: str) -> tuple[int, int]:
        """(files, bytes) in the workspace volume now."""
        found = self._find(
            volume, ["-type", "f", "-printf", "%s\\n"], "cannot be measured", read_only=True
        )
        sizes = [int(line) for line in found.split()]
        return len(sizes), sum(sizes)

    def is_empty(self, volume: str) -> bool:
        """No entry in the workspace (a filesystem's lost+found does not count)."""
        self._volume_exists(volume)
        found = self._find(
            volume, [*_TOP_ENTRIES, "-print", "-quit"], "cannot be read",
            read_only=True, writer=False, timeout=None,
        )  # fmt: skip
        return found.strip() == ""

    def _wipe(self, volume: str) -> None:
        self._find(
            volume, [*_TOP_ENTRIES, "-exec", "rm", "-rf", "--", "{}", "+"], "cannot be emptied"
        )

    def _find(
        self,
        volume: str,
        args: Sequence[str],
        failed: str,
        *,
        read_only: bool = False,
        writer: bool = True,
        timeout: float | None = 3600,
    ) -> str:
        """``find /data args`` in a helper over ``volume``; its output, or
        :class:`BackupError` saying what the volume ``failed`` at."""
        result = self._helper(
            [HELPER_DATA, *args],
            mounts=[f"{volume}:{HELPER_DATA}{':ro' if read_only else ''}"],
            command="find",
            timeout=timeout,
            writer=writer,
        )
        if result.returncode != 0:
            raise BackupError(f"volume {volume}: {failed}: {last(result.stderr)}")
        return result.stdout

    def _sparsify(self, volume: str) -> None:
        """Give restored files their holes back: restic 0.14 writes a sparse file's holes
        as zeros (``restore --sparse`` came with 0.15), so every run of zeros of 4 KiB
        and more in a file above 1 MiB is punched out again (``fallocate --dig-holes``)."""
        self._find(
            volume,
            ["-xdev", "-type", "f", "-size", "+1M",
             "-exec", "fallocate", "--dig-holes", "{}", ";"],  # one file per call
            "holes not restored",
        )  # fmt: skip

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
            stack.enter_context(self.files.locked(source, wait_s))
            if into.repo != source:
                stack.enter_context(self.files.locked(into.repo, wait_s))
            password = self.files.password(source)
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
            self._sparsify(into.volume)
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
            "--exclude-larger-than", f"{self.settings.max_file_mb}M",
        ]  # fmt: skip
        mounts = [f"{workspace.volume}:{HELPER_DATA}:ro"]
        try:
            result = self._restic(repo, password, "backup", args, mounts=mounts)
        except Uninitialised:  # the password file outlived its repository
            self._init(repo, password)
            result = self._restic(repo, password, "backup", args, mounts=mounts)
        totals = summary(result.stdout)
        return BackupResult(
            session=repo.session,
            stack=repo.stack,
            snapshot=str(totals.get("snapshot_id", "")),
            reason=reason,
            files=int(totals.get("total_files_processed", 0)),
            bytes=int(totals.get("total_bytes_processed", 0)),
            added_bytes=int(totals.get("data_added", 0)),
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
        with self.files.locked(repo, wait_s):
            password = self.files.password(repo)
            self._restic(repo, password, "removing stale locks", ["unlock"])
            keep = [
                "--keep-last", str(keep_last), "--keep-daily", str(keep_daily),
                "--keep-weekly", str(keep_weekly),
            ]  # fmt: skip
            forgot = self._restic(
                repo, password, "retention", ["forget", "--prune", "--json", *keep]
            )
            removed = sum(len(group.get("remove") or []) for group in json_list(forgot.stdout))
            args = ["check"] + (
                [f"--read-data-subset={read_data_subset}"] if read_data_subset else []
            )
            checked = self._helper(args, repo=repo, password=password)
            if checked.returncode != 0:
                error = self._error(repo, "check", checked)
                # Not reaching the repository is this run's failure; anything else that
                # fails the check is the repository's, reported as such.
                if isinstance(error, StorageError | PasswordError | Busy | Uninitialised):
                    raise error
            return CheckResult(
                repo.session,
                repo.stack,
                removed,
                ok=checked.returncode == 0 and "no errors were found" in checked.stdout,
                output=last(checked.stdout + "\n" + checked.stderr, 6),
            )
