"""The data plane's rules without an engine: paths, exec requests, signals, Docker's stream
framing, the helper's status lines, and the in-container file helper itself run here on a
temporary directory standing for /workspace, with the links a hostile agent plants."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import struct
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from dockyard.errors import Conflict, Failed, InvalidInput, NotFound
from dockyard.sessions import dataplane
from dockyard.sessions.dataplane import ExecRequest, Frames, Limits, workspace_path

# --- paths --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "parts"),
    [
        ("a/b.txt", ("a", "b.txt")),
        ("/workspace/a/b.txt", ("a", "b.txt")),
        ("/workspace", ()),
        ("./a//./b/", ("a", "b")),
        (".", ()),
        ("", ()),
        ("a..b/..c", ("a..b", "..c")),
    ],
)
def test_paths_under_the_workspace(path: str, parts: tuple[str, ...]) -> None:
    assert workspace_path(path) == parts


@pytest.mark.parametrize(
    ("path", "said"),
    [
        ("../etc/passwd", "holds '..'"),
        ("a/../../etc", "holds '..'"),
        ("/workspace/../etc/passwd", "holds '..'"),
        ("/etc/passwd", "is outside /workspace"),
        ("/workspacefoo/x", "is outside /workspace"),
        ("//etc", "is outside /workspace"),
        ("a\0b", "NUL"),
        ("a/" + "x" * 256, "a name over 255 bytes"),
        ("x/" * 2100, "over 4096 bytes"),
    ],
)
def test_paths_that_leave_the_workspace_are_refused(path: str, said: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        workspace_path(path)
    assert said in caught.value.problems[0]
    assert "allowed:" in caught.value.problems[0]


def test_the_workspace_itself_cannot_be_removed_or_written() -> None:
    with pytest.raises(InvalidInput) as caught:
        workspace_path("/workspace/.", allow_root=False)
    assert "is the workspace itself" in caught.value.problems[0]


# --- exec requests -----------------------------------------------------------------------


def test_an_exec_request_is_checked_at_once_with_every_problem() -> None:
    with pytest.raises(InvalidInput) as caught:
        ExecRequest(
            ("ls", "a\0b"),
            {"1BAD": "x", "OK": "a\0"},
            "../x",
            timeout=0,
            stdin=b"x" * 11,
        ).checked(Limits(stdin_bytes=10))
    problems = caught.value.problems
    assert problems == [
        "command: an argument holds a NUL byte",
        "env: '1BAD' is not a variable name (allowed: [A-Za-z_][A-Za-z0-9_]*)",
        "env.OK: not a string without NUL bytes",
        "cwd: '../x' holds '..' (allowed: a path relative to /workspace, or absolute under it, "
        "without '..')",
        "timeout: 0 s (allowed: more than 0, at most 86400)",
        "stdin: 11 bytes (allowed: at most 10)",
    ]


def test_an_exec_request_gets_an_absolute_cwd_and_the_default_timeout() -> None:
    checked = ExecRequest(("true",), cwd="src").checked(Limits(default_timeout_seconds=5))
    assert (checked.cwd, checked.timeout) == ("/workspace/src", 5)
    with pytest.raises(InvalidInput) as caught:
        ExecRequest(("true",), timeout=61).checked(Limits(timeout_seconds=60))
    assert caught.value.problems == ["timeout: 61 s (allowed: more than 0, at most 60)"]
    with pytest.raises(InvalidInput) as caught:
        ExecRequest(()).checked(Limits())
    assert "command: empty" in caught.value.problems[0]


@pytest.mark.parametrize(("given", "name"), [("term", "TERM"), ("SIGKILL", "KILL")])
def test_signals_by_name(given: str, name: str) -> None:
    assert dataplane.signal_name(given) == name


@pytest.mark.parametrize("given", ["9", "SIGSEGV", "TERM; rm -rf /", ""])
def test_other_signals_are_refused(given: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        dataplane.signal_name(given)
    assert "(allowed: HUP, INT, QUIT, KILL" in caught.value.problems[0]


# --- framing -----------------------------------------------------------------------------


def frame(stream: int, data: bytes) -> bytes:
    return struct.pack(">BxxxI", stream, len(data)) + data


def test_frames_are_passed_on_as_they_come_split_anywhere() -> None:
    ours, theirs = socket.socketpair()
    payload = frame(1, b"hello ") + frame(2, b"err") + frame(1, b"") + frame(1, b"x" * 70000)

    def send() -> None:
        for i in range(0, len(payload), 5):  # headers and bodies cut in odd places
            theirs.sendall(payload[i : i + 5])
        theirs.close()

    sender = threading.Thread(target=send)
    sender.start()
    frames = Frames(ours)
    got: dict[int, bytes] = {1: b"", 2: b""}
    while (piece := frames.next()) is not None:
        got[piece[0]] += piece[1]
    sender.join()
    ours.close()
    assert got == {1: b"hello " + b"x" * 70000, 2: b"err"}


def test_a_quiet_stream_times_out_and_resumes() -> None:
    ours, theirs = socket.socketpair()
    ours.settimeout(0.05)
    frames = Frames(ours)
    theirs.sendall(frame(1, b"abc")[:6])
    with pytest.raises(TimeoutError):
        frames.next()
    theirs.sendall(frame(1, b"abc")[6:])
    assert frames.next() == (1, b"abc")
    theirs.close()
    assert frames.next() is None
    ours.close()


# --- the helper's answers (it runs as the agent: untrusted) --------------------------------


@pytest.mark.parametrize(
    ("raw", "code", "kind"),
    [
        (b'{"ok": false, "kind": "not-found", "message": "a: no such file"}\n', 1, NotFound),
        (b'{"ok": false, "kind": "conflict", "message": "a symlink"}\n', 1, Conflict),
        (b'{"ok": false, "kind": "rm -rf", "message": "x"}\n', 1, Failed),
        (b'{"ok": true}\n', 1, Failed),  # ok with a failed exit: not ok
        (b"garbage\n", 0, Failed),
        (b"[1, 2]\n", 0, Failed),
        (b"", 0, Failed),
    ],
)
def test_helper_answers_map_to_error_kinds(raw: bytes, code: int, kind: type) -> None:
    with pytest.raises(kind) as caught:
        dataplane._status(raw, code, ("a",))
    assert type(caught.value) is kind


def test_helper_entries_are_checked_field_by_field() -> None:
    entry = dataplane._entry(
        {"name": "x" * 5000, "type": "<script>", "size": "big", "mode": 0o4755, "mtime": "now"}
    )
    assert entry == {"name": "x" * 1020, "type": "other", "size": 0, "mode": "4755", "mtime": None}
    with pytest.raises(Failed):
        dataplane._entry(["not", "an", "object"])


# --- the helper on a directory standing for /workspace -------------------------------------

HELPER = Path(dataplane.__file__).with_name("workspace_helper.py").read_text()


def helper(
    root: Path, op: str, path: tuple[str, ...], stdin: bytes = b"", **extra: Any
) -> tuple[int, list[dict[str, Any]], bytes]:
    spec = {"op": op, "root": str(root), "path": list(path), **extra}
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-c", HELPER, json.dumps(spec)],
        input=stdin,
        capture_output=True,
        timeout=30,
        check=False,
    )
    lines = [json.loads(line) for line in done.stderr.decode().splitlines() if line]
    return done.returncode, lines, done.stdout


def upload(data: bytes, chunk: int = 4, end: bool = True) -> bytes:
    framed = b"".join(
        struct.pack(">I", len(data[i : i + chunk])) + data[i : i + chunk]
        for i in range(0, len(data), chunk)
    )
    return framed + (struct.pack(">I", 0) if end else b"")


@pytest.fixture
def planted(tmp_path: Path) -> dict[str, Path]:
    """A workspace whose agent planted links out of it, and what they point at."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("root:x:0:0")
    workspace = tmp_path / "workspace"
    (workspace / "real").mkdir(parents=True)
    (workspace / "real" / "file.txt").write_text("mine")
    (workspace / "etc").symlink_to(outside)
    (workspace / "secret").symlink_to(outside / "secret")
    (workspace / "up").symlink_to("../outside")
    (workspace / "real" / "back").symlink_to("../../outside")
    os.mkfifo(workspace / "fifo")
    return {"workspace": workspace, "outside": outside}


@pytest.mark.parametrize(
    "path",
    [("etc", "secret"), ("secret",), ("up", "secret"), ("real", "back", "secret"), ("fifo",)],
)
def test_the_helper_never_reads_through_a_link_or_a_special_file(
    planted: dict[str, Path], path: tuple[str, ...]
) -> None:
    code, lines, out = helper(planted["workspace"], "read", path, max=1000)
    assert code == 1
    assert lines[-1]["ok"] is False
    assert lines[-1]["kind"] == "conflict"
    assert out == b""


@pytest.mark.parametrize("path", [("etc", "new"), ("up", "new"), ("real", "back", "new")])
def test_the_helper_never_writes_through_a_link(
    planted: dict[str, Path], path: tuple[str, ...]
) -> None:
    code, lines, _ = helper(
        planted["workspace"], "write", path, upload(b"owned"), max=100, mode=0o644, parents=True
    )
    assert code == 1
    assert lines[-1]["kind"] == "conflict"
    assert sorted(p.name for p in planted["outside"].iterdir()) == ["secret"]


def test_the_helper_refuses_bad_components_even_if_the_host_check_were_skipped(
    planted: dict[str, Path],
) -> None:
    for path in (("..", "outside", "secret"), ("real", "/etc"), ("",)):
        code, lines, _ = helper(planted["workspace"], "read", path, max=1000)
        assert code == 1
        assert lines[-1]["kind"] == "invalid", path


def test_a_link_at_the_final_name_is_replaced_not_written_through(
    planted: dict[str, Path],
) -> None:
    code, lines, _ = helper(
        planted["workspace"], "write", ("secret",), upload(b"new"), max=100, mode=0o600
    )
    assert (code, lines[-1]) == (0, {"ok": True, "size": 3})
    assert (planted["outside"] / "secret").read_text() == "root:x:0:0"
    replaced = planted["workspace"] / "secret"
    assert not replaced.is_symlink()
    assert replaced.read_bytes() == b"new"
    assert oct(replaced.stat().st_mode & 0o777) == "0o600"


def test_removing_a_link_removes_the_link_only(planted: dict[str, Path]) -> None:
    code, lines, _ = helper(planted["workspace"], "remove", ("etc",), recursive=True)
    assert (code, lines[-1]["removed"]) == (0, "symlink")
    assert (planted["outside"] / "secret").exists()
    code, lines, _ = helper(planted["workspace"], "remove", ("real",))
    assert (code, lines[-1]["kind"]) == (1, "conflict")
    assert "recursive=true" in lines[-1]["message"]


def test_an_interrupted_or_oversized_upload_leaves_nothing(planted: dict[str, Path]) -> None:
    workspace = planted["workspace"]
    before = sorted(p.name for p in (workspace / "real").iterdir())
    code, lines, _ = helper(
        workspace, "write", ("real", "new.bin"), upload(b"abcdefgh", end=False), max=100, mode=420
    )
    assert (code, lines[-1]["kind"]) == (1, "failed")
    code, lines, _ = helper(
        workspace, "write", ("real", "new.bin"), upload(b"x" * 20), max=10, mode=420
    )
    assert (code, lines[-1]["kind"]) == (1, "too-large")
    assert sorted(p.name for p in (workspace / "real").iterdir()) == before


def test_the_helper_reads_stats_and_lists_without_following(planted: dict[str, Path]) -> None:
    code, lines, out = helper(planted["workspace"], "read", ("real", "file.txt"), max=1000)
    assert (code, lines, out) == (0, [{"ok": True, "size": 4}], b"mine")
    code, lines, _ = helper(planted["workspace"], "read", ("real", "file.txt"), max=3)
    assert (code, lines[-1]["kind"]) == (1, "too-large")
    code, lines, _ = helper(planted["workspace"], "list", (), limit=100)
    kinds = {e["name"]: e["type"] for e in lines[-1]["entries"]}
    assert kinds == {
        "etc": "symlink",
        "secret": "symlink",
        "up": "symlink",
        "real": "directory",
        "fifo": "other",
    }
    code, lines, _ = helper(planted["workspace"], "list", (), limit=2)
    assert (len(lines[-1]["entries"]), lines[-1]["truncated"]) == (2, True)
    code, lines, _ = helper(planted["workspace"], "list", ("etc",), limit=100)
    assert (code, lines[-1]["kind"]) == (1, "conflict")
    code, lines, _ = helper(planted["workspace"], "stat", ("up",))
    assert lines[-1]["entry"]["target"] == "../outside"
    code, lines, _ = helper(planted["workspace"], "stat", ("nothing",))
    assert (code, lines[-1]["kind"]) == (1, "not-found")


def test_a_kubernetes_session_is_refused_with_the_reason() -> None:
    record = dataplane.Record(
        session_id="k1",
        tenant=None,
        stack_name="sessions.k1",
        cwd="/srv",
        manifest_path="/nonexistent",
        host="local",
        request={},
        created_at="2026-12-06T00:00:00Z",
    )
    with pytest.raises(Failed) as caught:
        dataplane.Workspace.open(record, {}, client=object(), backend="kubernetes")
    assert "runs on Kubernetes" in str(caught.value.problems[0])


class FakeApi:
    """The engine's exec endpoints over a socket pair: what the container 'says' is
    written to the other end beforehand."""

    def __init__(self, said: bytes, end: bool = True) -> None:
        self.ours, self.theirs = socket.socketpair()
        self.theirs.sendall(said)
        if end:
            self.theirs.shutdown(socket.SHUT_WR)
        self.created: list[list[str]] = []

    def exec_create(self, _container: str, argv: list[str], **_: Any) -> dict[str, str]:
        self.created.append(argv)
        return {"Id": "x1"}

    def exec_start(self, _id: str, socket: bool, **_: Any) -> Any:
        assert socket
        return self.ours

    def exec_inspect(self, _id: str) -> dict[str, Any]:
        return {"Running": False, "ExitCode": 0}


def fake_workspace(said: bytes, end: bool = True) -> dataplane.Workspace:
    record = dataplane.Record("s1", None, "sessions.s1", "/srv", "/m", "local", {}, "now")
    client = type("Client", (), {"api": FakeApi(said, end)})()
    return dataplane.Workspace(record, {"container": {"id": "c1"}}, client, Limits())


def test_a_download_that_comes_short_ends_broken_not_short() -> None:
    status = frame(2, b'{"ok": true, "size": 10}\n')
    whole = fake_workspace(status + frame(1, b"0123456789"))
    size, content = whole.read("a.txt")
    assert (size, b"".join(content)) == (10, b"0123456789")
    short = fake_workspace(status + frame(1, b"01234"))
    size, content = short.read("a.txt")
    with pytest.raises(Failed):
        b"".join(content)
    longer = fake_workspace(status + frame(1, b"0123456789ABC"))
    with pytest.raises(Failed):
        b"".join(longer.read("a.txt")[1])


def test_a_download_refused_by_the_helper_is_its_error() -> None:
    refused = fake_workspace(frame(2, b'{"ok": false, "kind": "conflict", "message": "a link"}\n'))
    with pytest.raises(Conflict) as caught:
        refused.read("etc/passwd")
    assert caught.value.problems == ["path /workspace/etc/passwd: a link"]
    argv = refused.api.created[0]
    assert argv[:6] == ["/usr/bin/env", "-i", "python3", "-I", "-S", "-c"]
    assert json.loads(argv[-1])["path"] == ["etc", "passwd"]


def test_a_helper_the_agent_stopped_is_a_clear_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dataplane, "HELPER_TIMEOUT_SECONDS", 0.2)
    status = frame(2, b'{"ok": true, "size": 10}\n')
    for workspace, call in (
        (fake_workspace(b"", end=False), lambda w: w.read("a")),
        (fake_workspace(b"", end=False), lambda w: w.stat("a")),
        (fake_workspace(status + frame(1, b"01"), end=False), lambda w: b"".join(w.read("a")[1])),
        (fake_workspace(b"", end=False), lambda w: w.write("a", [b"x"])),
    ):
        with pytest.raises(Failed) as caught:
            call(workspace)
        assert "stopped answering" in caught.value.problems[0]


def test_a_helper_the_agent_took_over_cannot_make_the_host_hold_more(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Content with no status, past the file limit; a "ready" that never ends its line.
    flood = fake_workspace(frame(1, b"x" * 20) * 3, end=False)
    flood.limits = dataclasses.replace(flood.limits, file_bytes=32)
    with pytest.raises(Failed, match="more than the file limit"):
        flood.read("a")
    monkeypatch.setattr(dataplane, "STATUS_LINE_MAX", 16)
    chatty = fake_workspace(frame(2, b"y" * 20), end=False)
    with pytest.raises(Failed, match="status is over its limit"):
        chatty.write("a", [b"x"])


def test_ports_with_the_preview_proxys_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    workspace = fake_workspace(b"")
    ports = {"3000/tcp": [{"HostIp": "127.0.0.1", "HostPort": "49153"}], "53/udp": None}
    workspace.api.inspect_container = lambda _: {"NetworkSettings": {"Ports": ports}}
    monkeypatch.delenv(dataplane.PREVIEW_DOMAIN_VARIABLE, raising=False)
    assert workspace.ports()["ports"] == [{"containerPort": 3000, "hostPort": 49153}]
    monkeypatch.setenv(dataplane.PREVIEW_DOMAIN_VARIABLE, "preview.example.com")
    assert workspace.ports()["ports"][0]["previewUrl"] == "https://3000-s1.preview.example.com/"
    monkeypatch.setenv(dataplane.PREVIEW_DOMAIN_VARIABLE, "evil.com/@x")
    with pytest.raises(InvalidInput):
        workspace.ports()


def test_stats_of_a_container_that_stops_mid_read_is_its_state_not_a_crash() -> None:
    # Seen on the engine: a container removed between the inspect and the stats read
    # answers an empty body, which the SDK fails to decode (the page got a 500).
    class StoppingApi:
        def inspect_container(self, _container: str) -> dict[str, Any]:
            return {"State": {"Status": "running"}}

        def stats(self, _container: str, stream: bool) -> Any:
            raise json.JSONDecodeError("Expecting value", "", 0)

    record = dataplane.Record("s1", None, "sessions.s1", "/srv", "/m", "local", {}, "now")
    client = type("Client", (), {"api": StoppingApi()})()
    workspace = dataplane.Workspace(record, {"container": {"id": "c1"}}, client, Limits())
    workspace.disk = lambda: {}  # type: ignore[method-assign]
    answer = workspace.stats()
    assert answer["status"] == "running"
    assert answer["memory"] == {"used": None, "limit": None, "percent": None}


def test_secrets_go_in_as_one_tar_on_the_stdin_of_one_agent_exec() -> None:
    """A warm pool's claim writes the session's secrets into the running container: the
    values only on the exec's stdin (never in its command), files 0400 owned by the agent,
    names that are variable names only, a failed tar reported with its exit."""
    import io as _io
    import tarfile as _tarfile

    from dockyard.errors import Failed, InvalidInput
    from dockyard.sessions.registry import Record
    from dockyard.sessions.workspace_files import FileVerbs

    calls: list[tuple[list[str], bytes | None]] = []
    answer = {"code": 0}

    class _Verbs(FileVerbs):
        def _run(self, argv: list[str], stdin: bytes | None = None) -> Any:
            calls.append((argv, stdin))
            return b"", b"tar: broken" if answer["code"] else b"", answer["code"]

    record = Record("s1", None, "sessions.s1", "/p", "/m.json", "local", {}, "t")
    verbs = _Verbs(record, {"container": {"id": "c"}}, object(), None)  # type: ignore[arg-type]
    verbs.put_secrets({"API_KEY": "v-1", "B": "two"})
    ((argv, stdin),) = calls
    assert argv == ["tar", "-x", "-p", "--no-same-owner", "-C", "/run/secrets"]
    assert "v-1" not in " ".join(argv)
    with _tarfile.open(fileobj=_io.BytesIO(stdin or b"")) as archive:
        members = {m.name: (m.mode, m.uid, m.gid) for m in archive.getmembers()}
        assert archive.extractfile("API_KEY").read() == b"v-1"  # type: ignore[union-attr]
    assert members == {"API_KEY": (0o400, 1000, 1000), "B": (0o400, 1000, 1000)}
    for bad in ("a/b", "../X", "./TOKEN", "X\x00Y", ""):
        with pytest.raises(InvalidInput):
            verbs.put_secrets({bad: "v"})
    assert len(calls) == 1
    answer["code"] = 2
    with pytest.raises(Failed, match=r"tar exited 2: tar: broken"):
        verbs.put_secrets({"C": "c"})
