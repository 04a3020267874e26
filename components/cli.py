"""``dockyard``: sessions from the command line.

Exit codes (also in docs/sessions.md): 0 done; 1 failed (engine, driver, Pulumi);
2 invalid input (a request, stack file or flag — every problem listed); 3 a quota would
be passed; 4 no such session. ``--json`` prints data as JSON on stdout and nothing else
there; progress and errors go to stderr.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table
from typer.core import TyperGroup

from . import modal_plan, ssh
from .api.commands import keys_app, serve
from .config import ConfigError, stack_file
from .errors import FAILED, INVALID, KIND_OF_CODE, OK, DockyardError
from .sessions import DriverError, Sessions
from .sessions import audit as audit_log
from .sessions import backups as backup_sessions
from .sessions.request import SESSIONS_STACK

DEBUG_VARIABLE = "DOCKYARD_DEBUG"


class _Faces(TyperGroup):
    """The root command: every verb, whatever sub-app it is in, runs inside one handler.

    A :class:`DockyardError` prints its lines (or the ``--json`` error object) and exits
    with its code. Anything else that escapes is a bug of dockyard's (every layer turns
    what it knows into a DockyardError): the last resort prints one line and exits 1; the
    traceback only with DOCKYARD_DEBUG=1."""

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: Any = None,
        **extra: Any,
    ) -> Any:
        self._argv = list(args)
        _flag_help(self)
        return super().make_context(info_name, args, parent, **extra)

    def invoke(self, ctx: Any) -> Any:
        as_json = "--json" in getattr(self, "_argv", [])
        try:
            return super().invoke(ctx)
        except typer.TyperException as error:
            # A usage error (exit 2): with --json, the error object like any other.
            if as_json and hasattr(error, "format_message"):
                _fail(getattr(error, "exit_code", INVALID), error.format_message(), True)
            raise
        except (typer.Exit, typer.Abort):
            raise  # --help, --version, a verb's own exit
        except DockyardError as error:
            _fail(error.exit_code, error.problems, as_json, error.kind)
        except Exception as error:
            _unexpected(error, as_json)


def _flag_help(command: Any) -> None:
    """Flags (``--help``, ``--json``, every on/off option of every sub-app) are shown
    without a value type (Typer shows ``<bool>``)."""
    option = command.get_help_option(typer.Context(command))
    for param in [*getattr(command, "params", []), option]:
        if param is not None and getattr(param, "is_flag", False):
            param.metavar = ""
    for child in (getattr(command, "commands", None) or {}).values():
        _flag_help(child)


def _unexpected(error: BaseException, as_json: bool) -> NoReturn:
    if os.environ.get(DEBUG_VARIABLE) == "1":
        traceback.print_exception(error, file=sys.stderr)
    _fail(
        FAILED,
        f"unexpected error ({type(error).__name__}): this is a bug in dockyard; run again "
        f"with {DEBUG_VARIABLE}=1 for the traceback and report it",
        as_json,
    )


def _version(value: bool) -> None:
    if value:
        try:
            version = metadata.version("dockyard")
        except metadata.PackageNotFoundError:
            version = "unknown (not installed as a package)"
        print(f"dockyard {version}")
        raise typer.Exit(OK)


app = typer.Typer(
    name="dockyard",
    cls=_Faces,
    help="Isolated container environments for AI coding agent sessions.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
plan_app = typer.Typer(
    help="Preview the next deployment phase (creates nothing).", no_args_is_help=True
)
image_app = typer.Typer(help="The host's core image.", no_args_is_help=True)
app.add_typer(plan_app, name="plan")
app.add_typer(image_app, name="image")
app.add_typer(keys_app, name="keys")
app.command("serve")(serve)


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            help="Print dockyard's version and exit.",
            callback=_version,
            is_eager=True,
            metavar="",
        ),
    ] = False,
) -> None:
    """Isolated container environments for AI coding agent sessions."""


err = Console(stderr=True, highlight=False)
out = Console(highlight=False)

JsonFlag = Annotated[bool, typer.Option("--json", help="Print the result as JSON.", metavar="")]
TenantOption = Annotated[str | None, typer.Option("--tenant", help="The session's tenant.")]


def _fail(code: int, lines: list[str] | str, as_json: bool, kind: str | None = None) -> NoReturn:
    problems = [lines] if isinstance(lines, str) else lines
    if as_json:
        # The error object every face prints (DockyardError.as_dict; the HTTP API adds
        # its request id).
        found = kind or KIND_OF_CODE.get(code, "failed")
        print(json.dumps({"error": {"code": code, "kind": found, "problems": problems}}))
    else:
        for line in problems:
            err.print(f"[red]ERROR[/red]: {line}", markup=True, soft_wrap=True)
    raise typer.Exit(code)


@contextmanager
def _errors(as_json: bool) -> Iterator[None]:
    """Every failure a user can act on is a DockyardError: its exit code and its lines."""
    try:
        yield
    except DockyardError as error:
        _fail(error.exit_code, error.problems, as_json, error.kind)


def _progress(as_json: bool) -> Callable[[str], None]:
    """Engine output as it comes, on stderr (stdout stays the result, JSON or table)."""

    def show(line: str) -> None:
        err.print(line.rstrip("\n"), markup=False, highlight=False, soft_wrap=True)

    return show


def _sessions() -> Sessions:
    # A DriverError (or an unusable state directory) is a DockyardError: the handler prints
    # it the way the verb was asked (--json: the error object).
    return Sessions.default()


def _emit(data: Any, as_json: bool, table: Callable[[Any], None]) -> None:
    if as_json:
        print(json.dumps(data, indent=2, sort_keys=False))
    else:
        table(data)


def _manifest_table(manifest: dict[str, Any]) -> None:
    grid = Table(show_header=False, box=None)
    grid.add_row("session", manifest["sessionId"])
    grid.add_row("backend", manifest["backend"])
    grid.add_row(
        "container", f"{manifest['container']['name']} ({manifest['container']['id'][:12]})"
    )
    grid.add_row("image", manifest["image"])
    grid.add_row("cwd", manifest["cwd"])
    ports = ", ".join(
        f"{p['containerPort']} -> {p['hostPort']}" for p in manifest["container"]["portMappings"]
    )
    grid.add_row("ports", ports or "-")
    grid.add_row("created", manifest["createdAt"])
    out.print(grid)


def _read_request(path: str) -> dict[str, Any]:
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            "request", [f"--request {path}: cannot be read ({exc.strerror})"]
        ) from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            "request", [f"--request {path}: not JSON (line {exc.lineno}: {exc.msg})"]
        ) from None
    if not isinstance(document, dict):
        raise ConfigError("request", [f"--request {path}: not a JSON object"])
    return document


def _request_from_flags(
    request_file: str | None,
    session: str | None,
    cwd: str | None,
    backend: str | None,
    image: str | None,
    ports: list[int],
    volumes: list[str],
    env: list[str],
    secrets: list[str],
    tenant: str | None,
    profile: str | None,
) -> dict[str, Any]:
    request = _read_request(request_file) if request_file else {}
    container = (
        dict(request.get("container") or {}) if isinstance(request.get("container"), dict) else {}
    )
    for key, value in (
        ("sessionId", session),
        ("backend", backend),
        ("tenant", tenant),
        ("profile", profile),
    ):
        if value is not None:
            request[key] = value
    if cwd is not None or "cwd" not in request:
        request["cwd"] = str(Path(cwd or os.getcwd()).resolve())
    if image is not None:
        container["image"] = image
    if ports:
        container["ports"] = ports
    if volumes:
        container["volumes"] = volumes
    if env:
        variables = dict(container.get("env") or {})
        for item in env:
            name, sep, value = item.partition("=")
            if not sep:
                raise ConfigError("request", ["--env: expects NAME=value (allowed: NAME=value)"])
            variables[name] = value
        container["env"] = variables
    if secrets:
        request["secrets"] = secrets
    if container or "container" in request:
        request["container"] = container
    return request


@app.command()
def up(
    request_file: Annotated[
        str | None, typer.Option("--request", "-r", help="A request JSON file ('-': stdin).")
    ] = None,
    session: Annotated[str | None, typer.Option("--session", "-s", help="Session id.")] = None,
    cwd: Annotated[str | None, typer.Option(help="Project directory (default: here).")] = None,
    backend: Annotated[str | None, typer.Option(help="claude or codex.")] = None,
    image: Annotated[
        str | None, typer.Option(help="Image reference (default: the host's).")
    ] = None,
    port: Annotated[
        list[int] | None, typer.Option("--port", "-p", help="Container port to publish (repeat).")
    ] = None,
    volume: Annotated[
        list[str] | None, typer.Option("--volume", "-v", help="source:target[:ro] (repeat).")
    ] = None,
    env: Annotated[
        list[str] | None, typer.Option("--env", "-e", help="NAME=value (repeat).")
    ] = None,
    secret: Annotated[
        list[str] | None,
        typer.Option("--secret", help="Secret name, value from the environment (repeat)."),
    ] = None,
    tenant: TenantOption = None,
    profile: Annotated[str | None, typer.Option(help="Resource profile.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Create a session (or converge an existing one) and print its manifest."""
    with _errors(as_json):
        request = _request_from_flags(
            request_file,
            session,
            cwd,
            backend,
            image,
            port or [],
            volume or [],
            env or [],
            secret or [],
            tenant,
            profile,
        )
        sessions = _sessions()
        try:
            with (
                err.status("creating the session…") if err.is_terminal and not as_json else _null()
            ):
                manifest = sessions.create(request, progress=_progress(as_json))
        except ConfigError as error:
            if "sessionId" in request:
                raise
            # No -s and no sessionId in a request file: name the flag a user types.
            raise ConfigError(
                error.stack,
                [
                    SESSION_FLAG_MISSING if p.startswith(SESSION_MISSING) else p
                    for p in error.problems
                ],
            ) from None
        _emit(manifest, as_json, _manifest_table)


SESSION_MISSING = "request.sessionId: missing"
SESSION_FLAG_MISSING = (
    "--session (-s): missing (allowed: a session id, e.g. -s my-session, or sessionId in the "
    "--request file)"
)


@contextmanager
def _null() -> Iterator[None]:
    yield


@app.command()
def down(
    session: str,
    tenant: TenantOption = None,
    no_backup: Annotated[
        bool,
        typer.Option("--no-backup", help="Skip the final backup (backup.onDestroy).", metavar=""),
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Destroy a session: container, network, volumes, manifest and its stack."""
    with _errors(as_json):
        _sessions().destroy(
            session, tenant, progress=_progress(as_json), final_backup=not no_backup
        )
        _emit(
            {"sessionId": session, "destroyed": True},
            as_json,
            lambda d: out.print(f"destroyed {session}"),
        )


@app.command("ls")
def list_sessions(tenant: TenantOption = None, as_json: JsonFlag = False) -> None:
    """List this machine's sessions."""
    with _errors(as_json):
        rows = _sessions().list(tenant)

        def table(data: list[dict[str, Any]]) -> None:
            grid = Table("session", "tenant", "container", "ports", "created")
            for row in data:
                ports = ", ".join(
                    f"{p['containerPort']}->{p['hostPort']}" for p in row.get("ports", [])
                )
                grid.add_row(
                    row["sessionId"],
                    row["tenant"] or "-",
                    row.get("container", "?"),
                    ports or "-",
                    row["createdAt"],
                )
            out.print(grid)

        _emit(rows, as_json, table)


@app.command()
def show(session: str, tenant: TenantOption = None, as_json: JsonFlag = False) -> None:
    """Print a session's manifest."""
    with _errors(as_json):
        _emit(_sessions().get(session, tenant), as_json, _manifest_table)


def _docker(host: str) -> list[str]:
    docker = shutil.which("docker")
    if docker is None:
        raise DriverError("the docker CLI is not on PATH")
    return [docker, *([] if host == "local" else ["-H", host])]


@app.command()
def attach(session: str, tenant: TenantOption = None) -> None:
    """Attach to the session's tmux session `main` (docker exec)."""
    with _errors(False):
        sessions = _sessions()
        _, manifest = sessions.locate(session, tenant)  # checked against the engine
        record = sessions.audit_attach(session, tenant)
        argv = [
            *_docker(record.host),
            "exec",
            "-it",
            manifest["container"]["id"],
            "tmux",
            "attach",
            "-t",
            "main",
        ]
        os.execv(argv[0], argv)  # noqa: S606 - an argv list, no shell: the terminal becomes docker's


@app.command("ssh", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def ssh_session(
    ctx: typer.Context,
    session: str,
    identity: Annotated[
        Path, typer.Option("--identity", "-i", help="Your private key; its .pub gets signed.")
    ] = Path("~/.ssh/id_ed25519"),
    minutes: Annotated[
        int, typer.Option(help=f"Certificate lifetime (1-{ssh.MAX_MINUTES} minutes).")
    ] = ssh.DEFAULT_MINUTES,
    host: Annotated[
        str, typer.Option(help="Address the session's ports are published on.")
    ] = "127.0.0.1",
    print_only: Annotated[
        bool,
        typer.Option("--print", help="Issue the certificate, print the ssh command.", metavar=""),
    ] = False,
    command: Annotated[
        str | None, typer.Option("--command", help="Run this instead of a login shell.")
    ] = None,
    tenant: TenantOption = None,
) -> None:
    """SSH into a session (ssh: true) with a certificate valid for minutes, bound to your
    key and the session; extra arguments are ssh options (-L/-R/-D forwards, -N, -o)."""
    with _errors(False):
        sessions = _sessions()
        record, manifest = sessions.locate(session, tenant)  # checked against the engine
        key = identity.expanduser()
        options, remote = ssh.split_command(list(ctx.args))
        if command and remote:
            raise ssh.SshOptionError("give the remote command once: --command CMD or -- CMD")
        ssh.check_options(options)  # before a certificate is issued
        port = ssh.host_port(manifest)
        with audit_log.recorded(
            sessions.where.audit_log,
            "ssh-certificate",
            session=session,
            tenant=record.tenant,
            host=record.host,
            stack=record.stack_name,
        ) as entry:
            # The CA is the stack configuration's: one per tenant (or "sessions").
            cert = ssh.issue(
                record.tenant or SESSIONS_STACK,
                session,
                key.with_name(key.name + ".pub"),
                minutes,
                caller=audit_log.actor(),
            )
            # The audit line's free-text field: what was issued, never key material.
            entry["detail"] = (
                f"key id {cert.key_id}, principal {cert.principal}, {cert.minutes} min"
            )
        argv = ssh.ssh_argv(
            key,
            cert.path,
            host,
            port,
            sessions.where.state / "ssh_known_hosts",
            options,
            [command] if command else remote,
        )
        if print_only:
            print(" ".join(argv))
            return
        os.execv(argv[0], argv)  # noqa: S606 - an argv list, no shell: the terminal becomes ssh's


@app.command()
def logs(
    session: str,
    tenant: TenantOption = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new lines.", metavar="")
    ] = False,
    tail: Annotated[int | None, typer.Option(help="Last N lines.")] = None,
) -> None:
    """Print the session container's logs."""
    with _errors(False):
        sessions = _sessions()
        record, manifest = sessions.locate(session, tenant)  # checked against the engine
        argv = [
            *_docker(record.host),
            "logs",
            *(["--follow"] if follow else []),
            *(["--tail", str(tail)] if tail is not None else []),
            manifest["container"]["id"],
        ]
        os.execv(argv[0], argv)  # noqa: S606 - an argv list, no shell: the terminal becomes docker's


@app.command()
def refresh(session: str, tenant: TenantOption = None, as_json: JsonFlag = False) -> None:
    """Recreate the session's container, keeping its workspace."""
    with _errors(as_json):
        manifest = _sessions().refresh(session, tenant, progress=_progress(as_json))
        _emit(manifest, as_json, _manifest_table)


@app.command()
def validate(
    request_file: Annotated[
        str | None, typer.Option("--request", "-r", help="A request JSON file ('-': stdin).")
    ] = None,
    stack: Annotated[
        str | None, typer.Option("--stack", help="A stacks/Pulumi.<stack>.yaml file.")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Check a request or a stack file; list every problem at once. Creates nothing."""
    if (request_file is None) == (stack is None):
        _fail(INVALID, "give exactly one of --request FILE or --stack FILE", as_json)
    with _errors(as_json):
        if stack is not None:
            config = stack_file(stack, check_secrets=False, label=f"--stack {stack}")
            # A named secret that is not set yet: the file is valid, the run would stop
            # (docs/stacks.md); the only difference of the second check is that one.
            try:
                stack_file(stack, label=f"--stack {stack}")
                unset: list[str] = []
            except ConfigError as error:
                unset = error.problems
            for line in unset:
                err.print(f"[yellow]WARNING[/yellow]: {line}", markup=True, soft_wrap=True)
            result = {
                "valid": True,
                "stack": config.stack,
                "sessions": [e.session_id for e in config.environments],
                "warnings": unset,
            }
        else:
            session_plan, _ = _sessions().plan(_read_request(str(request_file)))
            result = {
                "valid": True,
                "stack": session_plan.stack_name,
                "sessions": [session_plan.session_id],
                "warnings": [],
            }
        _emit(result, as_json, lambda d: out.print("valid"))


@plan_app.command("modal")
def plan_modal(
    manifest: Annotated[str, typer.Argument(help="A session's manifest file (v1).")],
    stack: Annotated[str | None, typer.Option(help="Stack file for limits and GPU.")] = None,
    cpus: Annotated[
        float | None, typer.Option(help="CPUs (default: the stack's, else dockyard's).")
    ] = None,
    memory: Annotated[
        str | None, typer.Option(help="Memory: MB or with a unit (8192, 8g).")
    ] = None,
    gpu: Annotated[str | None, typer.Option(help=modal_plan.GPU_FLAG_ALLOWED)] = None,
) -> None:
    """Preview the Modal sandbox equivalent of a manifest (creates nothing)."""
    argv = [manifest]
    for flag, value in (("--stack", stack), ("--cpus", cpus), ("--memory", memory), ("--gpu", gpu)):
        if value is not None:
            argv += [flag, str(value)]
    code = modal_plan.main(argv)
    raise typer.Exit(INVALID if code else OK)


@image_app.command("build")
def image_build(as_json: JsonFlag = False) -> None:
    """Build the core image once on this host; sessions use it from then on."""
    with _errors(as_json):
        reference = _sessions().build_image(progress=_progress(as_json))
        _emit({"imageRef": reference}, as_json, lambda d: out.print(reference))


@app.command()
def audit(
    session: Annotated[str | None, typer.Option(help="Only this session.")] = None,
    tenant: TenantOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Show the audit trail (JSON lines of every lifecycle action)."""
    sessions = _sessions()
    entries = audit_log.read(sessions.where.audit_log, session=session, tenant=tenant)

    def table(data: list[dict[str, Any]]) -> None:
        grid = Table("time", "actor", "action", "session", "tenant", "result", "ms")
        for entry in data:
            grid.add_row(
                *(
                    str(entry.get(k) if entry.get(k) is not None else "-")
                    for k in (
                        "time",
                        "actor",
                        "action",
                        "session",
                        "tenant",
                        "result",
                        "duration_ms",
                    )
                )
            )
        out.print(grid)

    _emit(entries, as_json, table)


StackFileOption = Annotated[
    str | None,
    typer.Option("--stack", help="A stack's environment: its stacks/Pulumi.<stack>.yaml file."),
]


@app.command("backup")
def backup_now(
    session: str,
    tenant: TenantOption = None,
    stack: StackFileOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Back the session's workspace up now (encrypted, to its own restic repository)."""
    with _errors(as_json):
        who = backup_sessions.target(_sessions(), session, tenant, stack)
        result = backup_sessions.run_backup(_sessions(), who, progress=_progress(as_json))
        _emit(
            backup_sessions.as_dict(result),
            as_json,
            lambda r: out.print(
                f"{session}: snapshot {r['snapshot']} ({r['files']} files, {r['bytes']} bytes, "
                f"{r['added_bytes']} new)"
            ),
        )


@app.command()
def restore(
    session: str,
    snapshot: Annotated[str, typer.Option(help="A snapshot id (prefix) or latest.")] = "latest",
    into: Annotated[
        str | None, typer.Option("--into", help="Restore into this session's workspace instead.")
    ] = None,
    force: Annotated[
        bool,
        typer.Option(
            help="Replace a non-empty workspace (its content is backed up first).", metavar=""
        ),
    ] = False,
    tenant: TenantOption = None,
    stack: StackFileOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Restore a backup into the session's workspace (or --into another's), verified."""
    with _errors(as_json):
        sessions = _sessions()
        who = backup_sessions.target(sessions, session, tenant, stack)
        other = backup_sessions.target(sessions, into, tenant, stack) if into else None
        result = backup_sessions.restore(
            sessions, who, snapshot, other, force, progress=_progress(as_json)
        )
        _emit(
            backup_sessions.as_dict(result),
            as_json,
            lambda r: out.print(
                f"{r['session']}: restored snapshot {r['snapshot'][:8]} of {r['source']} "
                f"({r['files']} files, {r['bytes']} bytes, verified)"
            ),
        )


@app.command()
def snapshots(
    session: str,
    tenant: TenantOption = None,
    stack: StackFileOption = None,
    as_json: JsonFlag = False,
) -> None:
    """List the session's backups, oldest first."""
    with _errors(as_json):
        who = backup_sessions.target(_sessions(), session, tenant, stack)
        found = [backup_sessions.as_dict(s) for s in backup_sessions.snapshots(who)]

        def table(rows: list[dict[str, Any]]) -> None:
            grid = Table("snapshot", "time", "tags")
            for row in rows:
                grid.add_row(row["short_id"], row["time"], ", ".join(row["tags"]))
            out.print(grid)

        _emit(found, as_json, table)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
