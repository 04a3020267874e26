"""The in-environment daemon (images/core/envd.py) driven by the e2b SDK 2.63 itself.

The daemon runs in a subprocess on the host, as an unprivileged user when the tests run
as root (it refuses root), with a temporary directory as its home. The SDK's own
``Sandbox`` talks to it in debug mode with ``sandbox_url`` pointing at it: no control
plane is involved, so this proves the in-sandbox protocol only (process and filesystem
Connect RPCs with the SDK's JSON codec, /files uploads and downloads, /health). The daemon
always runs with an access token: it refuses to start without one (review 4, F3).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import grp
import hashlib
import io
import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from e2b import (
    AsyncSandbox,
    CommandExitException,
    FilesystemEventType,
    FileType,
    PtySize,
    Sandbox,
)
from e2b.connection_config import ConnectionConfig
from e2b.exceptions import (
    AuthenticationException,
    InvalidArgumentException,
    NotFoundException,
    SandboxException,
)
from packaging.version import Version

from dockyard.sessions.e2b import ENVD_VERSION
from tests.support.envd import envd_sandbox
from tests.support.scripts import load_file

ENVD = Path(__file__).resolve().parents[2] / "images" / "core" / "envd.py"
UNPRIVILEGED = 65534  # nobody
TOKEN_ENV = "DOCKYARD_ENVD_ACCESS_TOKEN"
TOKEN = "envd-unit-test-" + os.urandom(8).hex()


def load_envd() -> types.ModuleType:
    return load_file("dockyard_envd", ENVD)


def as_daemon_user() -> dict[str, Any]:
    """subprocess keywords that run a child as nobody when the tests run as root."""
    as_root = os.geteuid() == 0
    return {
        "user": UNPRIVILEGED if as_root else None,
        "group": UNPRIVILEGED if as_root else None,
        "extra_groups": [] if as_root else None,
    }


@functools.cache
def python_for_daemon() -> str:
    """A Python 3.11+ the daemon's user can run: the image has Debian's; a virtualenv's
    interpreter under /root is out of reach for nobody."""
    candidates = [c for c in ("/usr/bin/python3", sys.executable, shutil.which("python3")) if c]
    as_root = os.geteuid() == 0
    for candidate in candidates:
        ran = subprocess.run(
            [candidate, "-c", "import sys; sys.exit(sys.version_info < (3, 11))"],
            capture_output=True,
            user=UNPRIVILEGED if as_root else None,
            group=UNPRIVILEGED if as_root else None,
            extra_groups=[] if as_root else None,
            cwd="/",
            check=False,
        )
        if ran.returncode == 0:
            return candidate
    raise AssertionError(f"no Python >= 3.11 that uid {UNPRIVILEGED} may run among {candidates}")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Daemon:
    def __init__(self, home: Path, env: dict[str, str] | None = None, token: str = TOKEN) -> None:
        self.home = home
        self.token = token
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        as_root = os.geteuid() == 0
        if as_root:
            os.chown(home, UNPRIVILEGED, UNPRIVILEGED)
        self.user = pwd.getpwuid(UNPRIVILEGED if as_root else os.getuid()).pw_name
        run_env = {"PATH": "/usr/bin:/bin", "HOME": str(home), TOKEN_ENV: token, **(env or {})}
        self.proc = subprocess.Popen(
            [python_for_daemon(), str(ENVD), "--host=127.0.0.1", f"--port={self.port}"],
            env=run_env,
            cwd=home,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            user=UNPRIVILEGED if as_root else None,
            group=UNPRIVILEGED if as_root else None,
            extra_groups=[] if as_root else None,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 204:
                    return
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"envd did not answer /health: {self.output()}")
            time.sleep(0.05)

    def output(self) -> str:
        if self.proc.poll() is None:
            return "(still running)"
        assert self.proc.stdout is not None
        return self.proc.stdout.read().decode(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def sandbox(self, token: str | None = None) -> Sandbox:
        return envd_sandbox(self.url, token, "envd-test")


def new_home() -> Path:
    # Not under pytest's tmp_path: as root that is 0700 and the daemon's user could not
    # reach its own home.
    return Path(tempfile.mkdtemp(prefix="dockyard-envd-home-"))


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    home = new_home()
    running = Daemon(home)
    yield running
    running.stop()
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="module")
def sandbox(daemon: Daemon) -> Sandbox:
    return daemon.sandbox(daemon.token)


def test_run_streams_output_to_callbacks_and_reports_the_exit(
    sandbox: Sandbox, daemon: Daemon
) -> None:
    out: list[str] = []
    err: list[str] = []
    result = sandbox.commands.run(
        "echo hi; echo oops >&2", on_stdout=out.append, on_stderr=err.append
    )
    assert (result.exit_code, result.stdout, result.stderr) == (0, "hi\n", "oops\n")
    assert "".join(out) == "hi\n"
    assert "".join(err) == "oops\n"
    # Runs as the daemon's own (unprivileged) user, in its home, with env and cwd honoured.
    who = sandbox.commands.run('id -un; pwd; echo "$GREETING"', envs={"GREETING": "ahoy"})
    assert who.stdout.split("\n")[:3] == [daemon.user, str(daemon.home), "ahoy"]
    with pytest.raises(CommandExitException) as failed:
        sandbox.commands.run("exit 3")
    assert failed.value.exit_code == 3


def test_background_command_is_listed_then_killed(sandbox: Sandbox) -> None:
    handle = sandbox.commands.run("sleep 60", background=True)
    assert handle.pid in [p.pid for p in sandbox.commands.list()]
    # A second client attaches to the running process by pid.
    attached = sandbox.commands.connect(handle.pid)
    assert sandbox.commands.kill(handle.pid) is True
    with pytest.raises(CommandExitException) as killed:
        handle.wait()
    assert killed.value.exit_code == -1
    assert killed.value.error == "signal: killed"
    with pytest.raises(CommandExitException):
        attached.wait()
    assert handle.pid not in [p.pid for p in sandbox.commands.list()]
    assert sandbox.commands.kill(handle.pid) is False


def test_kill_reaches_the_commands_children(sandbox: Sandbox, daemon: Daemon) -> None:
    marker = daemon.home / "child-survived"
    forked = daemon.home / "child-forked"
    handle = sandbox.commands.run(
        f"(sleep 1; touch {marker}) & touch {forked}; wait", background=True
    )
    deadline = time.monotonic() + 10
    while not forked.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    sandbox.commands.kill(handle.pid)
    with pytest.raises(CommandExitException):
        handle.wait()
    time.sleep(1.5)
    assert not marker.exists(), "the killed command's child ran on"


def test_a_child_left_in_the_background_does_not_hold_the_end(sandbox: Sandbox) -> None:
    # `server &` keeps the pipes open; the command still ends when its shell exits, with
    # everything the shell wrote (a large burst included).
    result = sandbox.commands.run("sleep 20 & echo $!; head -c 3000000 /dev/zero | tr '\\0' x")
    child = int(result.stdout.split("\n", 1)[0])
    assert len(result.stdout) == len(f"{child}\n") + 3_000_000
    # Still sleeping (not a zombie nobody reaped) when the command's result came.
    state = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[0]
    assert state == "S", f"the background child is in state {state}, not running"
    os.kill(child, 9)


def test_stdin_reaches_the_process_and_close_ends_it(sandbox: Sandbox) -> None:
    handle = sandbox.commands.run("cat; echo done", background=True, stdin=True)
    sandbox.commands.send_stdin(handle.pid, "line one\n")
    sandbox.commands.send_stdin(handle.pid, b"\x00\xffbytes\n")
    # StreamInput (one client stream, input kept in order).
    sandbox.commands.stream_input(handle.pid, [f"chunk {i}," for i in range(50)] + ["\n"])
    sandbox.commands.close_stdin(handle.pid)
    result = handle.wait()
    assert result.stdout.encode("utf-8", "surrogateescape").startswith(b"line one\n")
    assert result.stdout.endswith(
        "bytes\n" + "".join(f"chunk {i}," for i in range(50)) + "\ndone\n"
    )
    with pytest.raises(NotFoundException):
        sandbox.commands.stream_input(handle.pid, ["too late"])
    without = sandbox.commands.run("sleep 5", background=True)
    with pytest.raises(SandboxException, match="no open stdin"):
        sandbox.commands.send_stdin(without.pid, "x")
    sandbox.commands.kill(without.pid)


def test_files_write_read_list_stat_move_remove(sandbox: Sandbox, daemon: Daemon) -> None:
    info = sandbox.files.write("notes/a.txt", "hello")
    assert info.path == str(daemon.home / "notes" / "a.txt")
    assert sandbox.files.read("notes/a.txt") == "hello"
    assert sandbox.files.read(str(daemon.home / "notes" / "a.txt"), format="bytes") == b"hello"
    sandbox.files.write_files(
        [{"path": "notes/b.bin", "data": b"\x00\x01"}, {"path": "~/notes/c", "data": "c"}]
    )
    assert sorted(e.name for e in sandbox.files.list("notes")) == ["a.txt", "b.bin", "c"]
    stat = sandbox.files.get_info("notes/a.txt")
    assert stat.type is not None
    assert (stat.size, stat.type.value, stat.owner, stat.permissions) == (
        5,
        "file",
        daemon.user,
        "-rw-r--r--",
    )
    assert sandbox.files.make_dir("notes/deep/er") is True
    assert sandbox.files.make_dir("notes/deep/er") is False
    assert [
        e.name for e in sandbox.files.list("notes", depth=3) if e.type and e.type.value == "dir"
    ] == [
        "deep",
        "er",
    ]
    moved = sandbox.files.rename("notes/a.txt", "notes/deep/moved.txt")
    assert moved.path == str(daemon.home / "notes" / "deep" / "moved.txt")
    assert (sandbox.files.exists("notes/a.txt"), sandbox.files.exists("notes/deep/moved.txt")) == (
        False,
        True,
    )
    sandbox.files.remove("notes")
    assert not (daemon.home / "notes").exists()
    sandbox.files.remove("notes")  # already removed: nothing to do, as E2B's daemon answers
    sandbox.files.remove("never/there.txt")
    with pytest.raises(NotFoundException):
        sandbox.files.read("notes/deep/moved.txt")
    with pytest.raises(NotFoundException):
        sandbox.files.get_info("notes")
    with pytest.raises(NotFoundException):
        sandbox.files.list("notes")


def test_file_metadata_and_entry_info_as_envd_0_6_4_gives_them(
    sandbox: Sandbox, daemon: Daemon
) -> None:
    """EntryInfo carries size, mode, permissions, owner, group, modified time, a link's
    target and the file's user metadata (``X-Metadata-*`` on upload -> ``user.e2b.*``
    xattrs, keys lowercased); an overwrite replaces the metadata, a rename keeps it, a
    symlink's own entry never shows its target's metadata, and metadata over the limits
    is refused with the old file left as it was."""
    before = time.time()
    written = sandbox.files.write("meta/a.txt", "hello", metadata={"Author": "mish", "k": "v"})
    assert written.metadata == {"author": "mish", "k": "v"}
    path = daemon.home / "meta" / "a.txt"
    assert os.getxattr(path, "user.e2b.author") == b"mish"
    info = sandbox.files.get_info("meta/a.txt")
    assert info.metadata == {"author": "mish", "k": "v"}
    assert (info.size, info.mode, info.permissions, info.owner) == (
        5,
        0o644,
        "-rw-r--r--",
        daemon.user,
    )
    assert info.group == grp.getgrgid(path.stat().st_gid).gr_name
    assert before - 2 <= info.modified_time.timestamp() <= time.time() + 2
    assert info.symlink_target is None
    # Streamed (octet-stream) uploads carry metadata too; list shows it per entry.
    sandbox.files.write("meta/b.bin", io.BytesIO(b"bb"), metadata={"x": "1"})
    listed = {e.name: e.metadata for e in sandbox.files.list("meta")}
    assert listed == {"a.txt": {"author": "mish", "k": "v"}, "b.bin": {"x": "1"}}
    # A symlink: its target named, its type the target's, its own (no) metadata shown.
    os.symlink(path, daemon.home / "meta" / "link")
    link = sandbox.files.get_info("meta/link")
    assert (link.type, link.symlink_target, link.metadata) == (
        FileType.SYMLINK,
        str(path),
        None,
    )
    moved = sandbox.files.rename("meta/a.txt", "meta/c.txt")
    assert moved.metadata == {"author": "mish", "k": "v"}
    assert sandbox.files.write("meta/c.txt", "new").metadata is None
    assert sandbox.files.get_info("meta/c.txt").metadata is None
    # Over the 4 KiB budget (names with their prefix + values): 400, nothing changed.
    sandbox.files.write("meta/c.txt", "kept", metadata={"small": "1"})
    with pytest.raises(InvalidArgumentException, match="allowed: at most 4096"):
        sandbox.files.write("meta/c.txt", "lost", metadata={"big": "v" * 4100})
    assert (daemon.home / "meta" / "c.txt").read_text() == "kept"
    assert sandbox.files.get_info("meta/c.txt").metadata == {"small": "1"}
    sandbox.files.remove("meta")


def test_metadata_headers_and_read_back_are_bounded(tmp_path: Path) -> None:
    envd = load_envd()
    assert envd.metadata_from({"X-Metadata-A": "1", "x-metadata-": "dropped", "Other": "2"}) == {
        "a": "1"
    }
    for bad, said in (
        ({"X-Metadata-k": "tab\there"}, "printable ASCII"),
        ({"X-Metadata-" + "k" * 247: "v"}, "allowed: at most 246"),
    ):
        with pytest.raises(envd.RpcError, match=said) as refused:
            envd.metadata_from(bad)
        assert refused.value.code == "invalid_argument"
    target = tmp_path / "f"
    target.write_text("x")
    os.setxattr(target, "user.e2b.ok", b"yes")
    os.setxattr(target, "user.e2b.bin", b"\xff\x00")  # set with setfattr: not shown
    os.setxattr(target, "user.other", b"not ours")
    for n in range(envd.MAX_METADATA_KEYS + 5):
        os.setxattr(target, f"user.e2b.z{n:03d}", b"v")
    shown = envd.read_metadata(str(target))
    assert shown["ok"] == "yes"
    assert "bin" not in shown
    assert "other" not in shown
    assert len(shown) == envd.MAX_METADATA_KEYS
    # A symlink's metadata is its own (none), never its target's.
    (tmp_path / "l").symlink_to(target)
    assert envd.read_metadata(str(tmp_path / "l")) == {}


def test_watches_refuse_network_mounts_unless_allowed(
    sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    envd = load_envd()
    monkeypatch.setattr(envd, "network_filesystem", lambda _path: "nfs4")
    with pytest.raises(envd.RpcError, match=r"on nfs4 .*allow_network_mounts") as refused:
        envd.Watcher(str(tmp_path), False, False)
    assert refused.value.code == "invalid_argument"
    envd.Watcher(str(tmp_path), False, False, network=True).stopped.set()
    monkeypatch.undo()
    assert envd.network_filesystem(str(tmp_path)) is None  # this machine's /tmp is local
    mountinfo = (
        "22 1 8:1 / / rw - ext4 /dev/sda1 rw\n"
        "30 22 0:40 / /mnt/share rw - nfs4 srv:/x rw\n"
        "31 22 0:41 / /mnt/my\\040drive rw - fuse.sshfs host:/ rw\n"
    )
    assert envd.mount_of("/mnt/share/sub", mountinfo) == ("/mnt/share", "nfs4")
    assert envd.mount_of("/mnt/shared", mountinfo) == ("/", "ext4")
    assert envd.mount_of("/mnt/my drive/a", mountinfo) == ("/mnt/my drive", "fuse.sshfs")
    # A local directory: watched either way (the flag of envd 0.6.4 accepted), events
    # with their EntryInfo when asked (0.6.3), metadata included.
    sandbox.files.make_dir("watch-local")
    handle = sandbox.files.watch_dir("watch-local", allow_network_mounts=False)
    handle.stop()
    handle = sandbox.files.watch_dir("watch-local", include_entry=True, allow_network_mounts=True)
    sandbox.files.write("watch-local/e.txt", "abc", metadata={"m": "1"})
    created: list[Any] = []
    deadline = time.monotonic() + 30
    while not created and time.monotonic() < deadline:
        time.sleep(0.3)
        events = handle.get_new_events()
        created = [e for e in events if e.type == FilesystemEventType.CREATE and e.name == "e.txt"]
    handle.stop()
    assert created, "no create event within 30 s"
    entry = created[0].entry
    assert entry is not None
    assert (entry.name, entry.size, entry.metadata) == ("e.txt", 3, {"m": "1"})
    sandbox.files.remove("watch-local")


def test_files_the_user_cannot_touch_answer_an_error(sandbox: Sandbox) -> None:
    if os.geteuid() != 0:
        pytest.skip(
            "only as root is the daemon's user distinct from the test's"
        )  # pragma: no cover
    with pytest.raises(SandboxException, match="permission denied"):
        sandbox.files.read("/etc/shadow")
    with pytest.raises(SandboxException, match="permission denied"):
        sandbox.files.write("/root/planted", "x")
    assert not os.path.exists("/root/planted")


def test_fifty_megabytes_up_and_down_streamed_and_multipart(
    sandbox: Sandbox, daemon: Daemon
) -> None:
    payload = os.urandom(1024 * 1024) * 50
    digest = hashlib.sha256(payload).hexdigest()
    # A binary file object goes as a streamed application/octet-stream upload.
    sandbox.files.write("big/stream.bin", io.BytesIO(payload))
    # Bytes go as multipart/form-data.
    sandbox.files.write("big/multi.bin", payload)
    for name in ("stream.bin", "multi.bin"):
        assert hashlib.sha256((daemon.home / "big" / name).read_bytes()).hexdigest() == digest
    assert (
        hashlib.sha256(bytes(sandbox.files.read("big/multi.bin", format="bytes"))).hexdigest()
        == digest
    )
    streamed = hashlib.sha256()
    for chunk in sandbox.files.read("big/stream.bin", format="stream"):
        streamed.update(chunk)
    assert streamed.hexdigest() == digest
    sandbox.files.write("big/packed.bin", io.BytesIO(payload[:1000]), gzip=True)
    assert (daemon.home / "big" / "packed.bin").read_bytes() == payload[:1000]
    sandbox.files.remove("big")


def test_watch_dir_reports_create_write_remove(sandbox: Sandbox, daemon: Daemon) -> None:
    sandbox.files.make_dir("watched")
    handle = sandbox.files.watch_dir("watched")
    sandbox.files.write("watched/f.txt", "1")
    time.sleep(0.5)
    sandbox.commands.run("echo more >> ~/watched/f.txt")
    time.sleep(0.5)
    sandbox.files.remove("watched/f.txt")
    time.sleep(0.5)
    seen = {(e.name, e.type) for e in handle.get_new_events()}
    handle.stop()
    assert ("f.txt", FilesystemEventType.CREATE) in seen
    assert ("f.txt", FilesystemEventType.REMOVE) in seen
    with pytest.raises(NotFoundException):
        sandbox.files.watch_dir("no-such-dir")


def test_another_user_is_refused_not_silently_mapped(sandbox: Sandbox, daemon: Daemon) -> None:
    with pytest.raises(SandboxException, match="user 'root' is not available"):
        sandbox.commands.run("id -u", user="root")
    with pytest.raises(SandboxException, match="user 'root' is not available"):
        sandbox.files.read("x", user="root")
    assert sandbox.commands.run("id -un", user=daemon.user).stdout.strip() == daemon.user  # type: ignore[arg-type]


def test_bad_requests_answer_errors_that_say_what_is_allowed(
    sandbox: Sandbox, daemon: Daemon
) -> None:
    with pytest.raises(InvalidArgumentException, match="not an existing directory"):
        sandbox.commands.run("true", cwd="/no/such/dir")
    raw = httpx.post(
        f"{daemon.url}/process.Process/List",
        content=b"[1]",
        headers={"Content-Type": "application/json", "X-Access-Token": daemon.token},
    )
    assert raw.status_code == 400
    assert raw.json()["code"] == "invalid_argument"
    unknown = httpx.post(
        f"{daemon.url}/process.Process/Nope",
        content=b"{}",
        headers={"X-Access-Token": daemon.token},
    )
    assert unknown.status_code == 501
    assert unknown.json()["code"] == "unimplemented"
    # A FIFO is refused at once instead of holding a thread until a writer comes.
    sandbox.commands.run("mkfifo ~/pipe")
    with pytest.raises(InvalidArgumentException, match="not a regular file"):
        sandbox.files.read("pipe", request_timeout=5)
    missing = httpx.get(
        f"{daemon.url}/files", params={"path": "nope"}, headers={"X-Access-Token": daemon.token}
    )
    assert missing.status_code == 404
    assert "does not exist" in missing.json()["message"]


def test_the_sdk_without_the_token_is_refused(daemon: Daemon) -> None:
    with pytest.raises(AuthenticationException):
        daemon.sandbox().commands.run("true")
    with pytest.raises(AuthenticationException):
        daemon.sandbox(token="wrong").files.write("x", "y")
    assert not (daemon.home / "x").exists()
    allowed = daemon.sandbox(token=daemon.token)
    # The token is not handed on to the processes the daemon starts.
    result = allowed.commands.run(f"echo ${{{TOKEN_ENV}:-unset}}")
    assert result.stdout == "unset\n"


def test_every_route_but_health_answers_401_without_the_right_token(daemon: Daemon) -> None:
    """Every route the daemon has (each RPC of its table, /files both ways) and unknown
    ones, with no, an empty, a wrong, a prefix-of-the-right and a longer token."""
    envd = load_envd()
    targets = [("GET", "/files?path=/etc/hostname"), ("POST", "/files?path=planted")]
    targets += [("POST", route) for route in envd.RPC]
    targets += [("GET", "/"), ("GET", "/nope"), ("POST", "/nope"), ("POST", "/health")]
    wrong: list[dict[str, str]] = [
        {},
        {"X-Access-Token": ""},
        {"X-Access-Token": "wrong"},
        {"X-Access-Token": daemon.token[:-1]},
        {"X-Access-Token": daemon.token + "x"},
    ]
    answers: dict[tuple[str, str, str], int] = {}
    with httpx.Client(base_url=daemon.url, timeout=5) as client:
        for method, target in targets:
            for headers in wrong:
                body = b'{"path": "/", "cmd": "touch", "args": ["planted"]}'
                content = body if method == "POST" else None
                got = client.request(method, target, content=content, headers=headers)
                answers[(method, target, headers.get("X-Access-Token", "-"))] = got.status_code
        assert client.get("/health").status_code == 204
    assert {key: code for key, code in answers.items() if code != 401} == {}
    assert not (daemon.home / "planted").exists()


def test_a_get_body_is_not_read_as_the_next_request(daemon: Daemon) -> None:
    """A GET's unread body must not become a second request on the connection (which
    would answer whoever sends the next request over it, e.g. through a pooled proxy)."""
    inner = b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n"
    outer = b"GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(inner)
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=5) as conn:
        conn.sendall(outer + inner)
        got = b""
        with contextlib.suppress(TimeoutError):
            while chunk := conn.recv(65536):
                got += chunk
    assert got.startswith(b"HTTP/1.1 204 ")
    assert got.count(b"HTTP/1.1 ") == 1, got


def test_authorized_denies_everything_without_a_usable_token() -> None:
    """The check itself fails closed, whatever the daemon object holds."""
    envd = load_envd()

    def allowed(token: object, headers: dict[str, str]) -> bool:
        handler = types.SimpleNamespace(daemon=types.SimpleNamespace(token=token), headers=headers)
        return bool(envd.Handler.authorized(handler))

    for token in (None, "", "short", " " * 20):
        for given in ({}, {"X-Access-Token": ""}, {"X-Access-Token": str(token)}):
            assert not allowed(token, given), (token, given)
    assert not allowed(TOKEN, {})
    assert not allowed(TOKEN, {"X-Access-Token": ""})
    assert allowed(TOKEN, {"X-Access-Token": TOKEN})
    handler = types.SimpleNamespace(headers={"X-Access-Token": ""})  # no daemon at all
    assert not envd.Handler.authorized(handler)
    with pytest.raises(ValueError, match=TOKEN_ENV):
        envd.Daemon("")


@pytest.mark.parametrize(
    ("token", "problem"),
    [
        (None, "missing"),
        ("", "missing"),
        ("x" * 15, "15 characters"),
        ("sixteen chars ok", "has characters other than visible ASCII"),
    ],
    ids=["unset", "empty", "15-chars", "with-spaces"],
)
def test_refuses_to_start_without_a_usable_token(token: str | None, problem: str) -> None:
    port = free_port()
    env = {"PATH": "/usr/bin:/bin", "HOME": "/tmp"}
    if token is not None:
        env[TOKEN_ENV] = token
    proc = subprocess.Popen(
        [python_for_daemon(), str(ENVD), "--host=127.0.0.1", f"--port={port}"],
        env=env,
        cwd="/",
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        **as_daemon_user(),
    )
    try:
        _, err = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        with socket.socket() as probe:
            listening = probe.connect_ex(("127.0.0.1", port)) == 0
        proc.kill()
        proc.communicate()
        raise AssertionError(f"envd kept running (listening: {listening}) with {token!r}") from None
    assert proc.returncode == 1
    assert f"ERROR: {TOKEN_ENV}: {problem}" in err
    assert "at least 16" in err
    if token:
        assert token not in err, "the error must not echo the token"
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0, "something listens on its port"


def test_refuses_to_run_as_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to try")  # pragma: no cover
    ran = subprocess.run(
        [python_for_daemon(), str(ENVD), "--host=127.0.0.1", f"--port={free_port()}"],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    assert ran.returncode == 1
    assert "must not run as root" in ran.stderr


def test_async_sdk_streams_a_command_and_a_directory_watch(daemon: Daemon) -> None:
    """The async SDK uses the streaming WatchDir RPC (the sync one polls a watcher)."""

    async def scenario() -> tuple[list[str], set[tuple[str, FilesystemEventType]]]:
        sandbox = AsyncSandbox(
            sandbox_id="envd-test",
            sandbox_domain=None,
            envd_version=Version(ENVD_VERSION),
            envd_access_token=daemon.token,
            traffic_access_token=None,
            connection_config=ConnectionConfig(
                debug=True,
                sandbox_url=daemon.url,
                extra_sandbox_headers={"X-Access-Token": daemon.token},
            ),
        )
        await sandbox.files.make_dir("streamed")
        seen: set[tuple[str, FilesystemEventType]] = set()
        watch = await sandbox.files.watch_dir(
            "streamed", on_event=lambda e: seen.add((e.name, e.type))
        )
        chunks: list[str] = []
        await sandbox.commands.run(
            "for i in 1 2 3; do echo $i; touch ~/streamed/f$i; sleep 0.3; done",
            on_stdout=chunks.append,
        )
        await asyncio.sleep(0.5)
        await watch.stop()
        return chunks, seen

    chunks, seen = asyncio.run(scenario())
    # Output arrived as it was printed, not in one piece at the end.
    assert chunks == ["1\n", "2\n", "3\n"]
    assert {("f1", FilesystemEventType.CREATE), ("f3", FilesystemEventType.CREATE)} <= seen


def test_the_end_waits_until_read_output_is_handed_on() -> None:
    """Pump.drained (the end event's gate): output already read from a pipe but not yet
    handed to a slow subscriber holds the end; an empty pipe whose writer lives on (a
    background child) does not."""
    envd = load_envd()

    class SlowProc:
        end = None

        def __init__(self) -> None:
            self.gate = threading.Event()
            self.got: list[bytes] = []

        def publish(self, event: dict[str, dict[str, str]]) -> None:
            self.gate.wait(10)
            self.got.append(base64.b64decode(event["data"]["stdout"]))

    proc = SlowProc()
    read_end, write_end = os.pipe()
    try:
        os.write(write_end, b"x" * 50_000)
        pump = envd.Pump(proc, "stdout", os.fdopen(read_end, "rb", buffering=0))
        pump.thread.start()
        time.sleep(0.1)
        assert not pump.drained(), "read output not handed on yet must hold the end"
        proc.gate.set()
        deadline = time.monotonic() + 5
        while not pump.drained():
            assert time.monotonic() < deadline, (
                "an empty pipe with a live writer must not hold the end"
            )
            time.sleep(0.01)
        assert b"".join(proc.got) == b"x" * 50_000
    finally:
        os.close(write_end)
    pump.thread.join(5)


def test_a_terminal_runs_an_interactive_shell_and_resizes(sandbox: Sandbox) -> None:
    def session(script: bytes, resize: PtySize | None = None) -> tuple[int, str]:
        handle = sandbox.pty.create(PtySize(rows=24, cols=80))
        if resize is not None:
            sandbox.pty.resize(handle.pid, resize)
        sandbox.pty.send_stdin(handle.pid, script)
        out: list[bytes] = []
        try:
            handle.wait(on_pty=out.append)
        except CommandExitException as ended:
            return ended.exit_code, b"".join(out).decode(errors="replace")
        return 0, b"".join(out).decode(errors="replace")

    code, text = session(b"stty size; tty; echo $((6*7)); exit 5\n")
    assert code == 5
    assert "24 80\r\n" in text
    assert "/dev/pts/" in text
    assert "\r\n42\r\n" in text
    code, text = session(b"stty size; exit\n", resize=PtySize(rows=30, cols=100))
    assert code == 0
    assert "30 100\r\n" in text
    # A terminal takes no plain stdin close; Ctrl+D is its end of input.
    shell = sandbox.pty.create(PtySize(rows=10, cols=10))
    with pytest.raises(SandboxException, match="Ctrl\\+D"):
        sandbox.commands.close_stdin(shell.pid)
    assert sandbox.pty.kill(shell.pid) is True


NODE_SDK = Path(__file__).resolve().parents[2] / ".venv" / "node-tools" / "node_modules" / "e2b"
NODE_SCRIPT = r"""
import crypto from 'node:crypto'
const { Sandbox } = await import(process.argv[2])
// Debug connect sends no token: build the handle the way connect does, with the token.
const sbx = new Sandbox({
  sandboxId: 'envd-node', envdVersion: process.argv[5], debug: true,
  sandboxUrl: process.argv[3], envdAccessToken: process.argv[4],
})
const report = {}
const out = []
const run = await sbx.commands.run('echo hi; echo oops >&2', { onStdout: (d) => out.push(d) })
report.run = [run.exitCode, run.stdout, run.stderr, out.join('')]
const bg = await sbx.commands.run('sleep 60', { background: true })
report.listed = (await sbx.commands.list()).some((p) => p.pid === bg.pid)
report.killed = await bg.kill()
try { await bg.wait() } catch (e) { report.killedExit = [e.exitCode, e.error] }
const cat = await sbx.commands.run('cat', { background: true, stdin: true })
await sbx.commands.sendStdin(cat.pid, 'typed\n')
await sbx.commands.closeStdin(cat.pid)
report.stdin = (await cat.wait()).stdout
await sbx.files.write('node/a.txt', 'hello', { metadata: { Lang: 'js' } })
report.metadata = (await sbx.files.getInfo('node/a.txt')).metadata
report.read = await sbx.files.read('node/a.txt')
report.list = (await sbx.files.list('node')).map((e) => e.name)
await sbx.files.rename('node/a.txt', 'node/b.txt')
report.moved = [await sbx.files.exists('node/a.txt'), await sbx.files.exists('node/b.txt')]
const big = crypto.randomBytes(50 * 1024 * 1024)
await sbx.files.write('node/big.bin', new Blob([big]))
const back = Buffer.from(await sbx.files.read('node/big.bin', { format: 'bytes' }))
report.big = crypto.createHash('sha256').update(back).digest('hex') ===
  crypto.createHash('sha256').update(big).digest('hex')
await sbx.files.remove('node')
report.removed = await sbx.files.exists('node')
const typed = []
const term = await sbx.pty.create({ rows: 24, cols: 80, onData: (d) => typed.push(Buffer.from(d).toString()) })
await sbx.pty.sendInput(term.pid, new TextEncoder().encode('stty size; exit\n'))
await term.wait()
report.pty = typed.join('').includes('24 80')
console.log(JSON.stringify(report))
"""


def test_the_node_sdk_drives_the_daemon_too(daemon: Daemon, tmp_path: Path) -> None:
    """The npm SDK (pinned in the Makefile's setup-dev) speaks the same protocol through
    its own Connect client (connect-web, JSON) and fetch-based uploads."""
    node = shutil.which("node")
    if node is None or not (NODE_SDK / "package.json").is_file():
        message = f"needs node and the npm e2b SDK at {NODE_SDK} (make setup-dev)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)  # pragma: no cover
    script = tmp_path / "probe.mjs"
    script.write_text(NODE_SCRIPT)
    entry = (NODE_SDK / "dist" / "index.mjs").as_uri()
    ran = subprocess.run(
        [node, str(script), entry, daemon.url, daemon.token, ENVD_VERSION],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert ran.returncode == 0, ran.stderr[-3000:]
    report = json.loads(ran.stdout.strip().splitlines()[-1])
    assert report == {
        "run": [0, "hi\n", "oops\n", "hi\n"],
        "listed": True,
        "killed": True,
        "killedExit": [-1, "signal: killed"],
        "stdin": "typed\n",
        "metadata": {"lang": "js"},
        "read": "hello",
        "list": ["a.txt"],
        "moved": [False, True],
        "big": True,
        "removed": False,
        "pty": True,
    }


def test_secret_files_reach_each_new_process_as_the_entrypoint_exports_them(
    tmp_path: Path,
) -> None:
    """A warm pool's claim writes the session's secrets into the running environment after
    the daemon started: each process start reads them (the token excepted, a name that is
    not a variable name, a link, a directory, an oversized or binary file skipped)."""
    envd = load_envd()
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "API_KEY").write_text("k-1\n\n")
    (secrets / "_x2").write_text("two\nlines")
    (secrets / envd.TOKEN_ENV).write_text("t" * 32)
    (secrets / "9BAD").write_text("x")
    (secrets / "BAD-NAME").write_text("x")
    (secrets / "LINK").symlink_to(secrets / "API_KEY")
    (secrets / "DIR").mkdir()
    (secrets / "BIG").write_bytes(b"x" * (envd.SECRET_FILE_MAX + 1))
    (secrets / "BIN").write_bytes(b"a\0b")
    assert envd.secrets_now(str(secrets)) == {"API_KEY": "k-1", "_x2": "two\nlines"}
    assert envd.secrets_now(None) == {}
    assert envd.secrets_now(str(tmp_path / "missing")) == {}


def test_a_fifo_or_a_flood_in_the_secrets_directory_never_holds_a_start(tmp_path: Path) -> None:
    envd = load_envd()
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    os.mkfifo(secrets / "A_FIFO")
    (secrets / "B").write_text("b")
    for index in range(envd.SECRET_FILES_MAX + 10):
        (secrets / f"Z{index:04d}").write_text("z" * 8192)
    started = time.monotonic()
    found = envd.secrets_now(str(secrets))
    assert time.monotonic() - started < 5
    assert found["B"] == "b"
    assert "A_FIFO" not in found
    assert sum(len(v) for v in found.values()) <= envd.SECRETS_TOTAL_MAX
    assert len(found) < envd.SECRET_FILES_MAX
