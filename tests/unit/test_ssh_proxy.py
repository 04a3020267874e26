"""`dockyard ssh-proxy` (issue 29 item 4, wake on SSH): the ProxyCommand `dockyard ssh` and
its `--print` put in the ssh command (checked words, quoted for the shell ssh runs it
with), the byte copy between ssh's pipes and the session's SSH port (a loopback echo
server), and the wake: a paused or hibernated session is woken through the service
layer, a running one is not, another tenant's session is missing. The engine proof is
tests/integration/test_wake_on_engine.py."""

from __future__ import annotations

import os
import re
import select
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dockyard import ssh
from dockyard.sessions import SessionNotFound, Sessions, certificates, hibernate
from tests.support.fake_service import registered_sessions

PROGRAM = "/opt/dock yard/bin/dockyard"  # a space: the path must be quoted


def _argv(proxy: str | None) -> list[str]:
    return ssh.ssh_argv(
        Path("/k/id"), Path("/k/id-cert.pub"), "127.0.0.1", 2222, Path("/k/kh"), [], ["true"],
        proxy=proxy,
    )  # fmt: skip


def test_the_ssh_command_connects_through_the_proxy_command_quoted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}")
    proxy = ssh.proxy_command(PROGRAM, "web.1", "acme", "127.0.0.1")
    argv = _argv(proxy)
    destination = argv.index("agent@127.0.0.1")
    (option,) = [w for w in argv[:destination] if w.startswith("ProxyCommand=")]
    assert argv[argv.index(option) - 1] == "-o"
    # What the user's shell makes of it: the program and its arguments, word for word.
    assert shlex.split(option.removeprefix("ProxyCommand=")) == [
        PROGRAM, "ssh-proxy", "web.1", "--tenant", "acme", "--host", "127.0.0.1",
    ]  # fmt: skip
    # The destination and -p stay: the host key is still pinned for [127.0.0.1]:2222.
    assert argv[argv.index("-p") + 1] == "2222"
    assert "UserKnownHostsFile=/k/kh" in argv
    assert "ProxyCommand" not in " ".join(_argv(None))
    untenanted = ssh.proxy_command("/usr/bin/dockyard", "web", None, "::1")
    assert shlex.split(untenanted) == ["/usr/bin/dockyard", "ssh-proxy", "web", "--host", "::1"]


def test_a_percent_in_the_program_path_survives_sshs_token_expansion() -> None:
    """ssh expands %h, %p, %% in a ProxyCommand before its shell runs it (review6 S1)."""
    proxy = ssh.proxy_command("/srv/100%h/bin/dockyard", "web", None, "127.0.0.1")
    assert "%%h" in proxy
    expanded = proxy.replace("%%", "%")  # what ssh hands its shell
    assert shlex.split(expanded)[0] == "/srv/100%h/bin/dockyard"


@pytest.mark.parametrize(
    ("session", "tenant", "host", "program", "named"),
    [
        ("a;id", None, "127.0.0.1", "/d", "session 'a;id' is not allowed"),
        ("$(id)", None, "127.0.0.1", "/d", "session '$(id)' is not allowed"),
        ("web", "Acme X", "127.0.0.1", "/d", "tenant 'Acme X' is not allowed"),
        ("web", "a`id`", "127.0.0.1", "/d", "tenant 'a`id`' is not allowed"),
        ("web", None, "h;id", "/d", "--host 'h;id' is not allowed"),
        ("web", None, "-oProxyCommand=x", "/d", "--host '-oProxyCommand=x' is not allowed"),
        ("web", None, "127.0.0.1", "dockyard", "is not an absolute path"),
    ],
)
def test_words_outside_their_grammar_never_reach_the_shell(
    session: str, tenant: str | None, host: str, program: str, named: str
) -> None:
    with pytest.raises((ssh.SshError, ssh.SshOptionError), match=re.escape(named)):
        ssh.proxy_command(program, session, tenant, host)


class Echo:
    """A loopback TCP server: sends ``greeting``, echoes what it reads, and records what it
    saw (bytes, then whether it got EOF); ``close_first`` closes after the greeting."""

    def __init__(self, greeting: bytes = b"", close_first: bool = False) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.seen = b""
        self.eof = False
        self.greeting, self.close_first = greeting, close_first
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        with self.listener:
            conn, _ = self.listener.accept()
        with conn:
            conn.sendall(self.greeting)
            if self.close_first:
                return
            while data := conn.recv(4096):
                self.seen += data
                conn.sendall(data)
            self.eof = True


@pytest.fixture
def pipes() -> Iterator[dict[str, int]]:
    """ssh's side of the proxy: it writes to ``to_proxy`` and reads ``from_proxy``."""
    stdin_r, stdin_w = os.pipe()
    stdout_r, stdout_w = os.pipe()
    fds = {"stdin": stdin_r, "to_proxy": stdin_w, "stdout": stdout_w, "from_proxy": stdout_r}
    yield fds
    for fd in fds.values():
        if fd >= 0:
            os.close(fd)


def _close(fds: dict[str, int], name: str) -> None:
    os.close(fds[name])
    fds[name] = -1  # closed: the fixture leaves it alone


def _relay(port: int, fds: dict[str, int]) -> threading.Thread:
    connection = ssh.connect("127.0.0.1", port, seconds=5)

    def run() -> None:
        with connection:
            ssh.relay(connection, fds["stdin"], fds["stdout"])
        _close(fds, "stdout")  # what the proxy's exit does: ssh reads EOF

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _read_all(fd: int, seconds: float = 30) -> bytes:
    """Everything until EOF (the proxy closed its stdout); a proxy that never ends fails
    the test after ``seconds`` instead of hanging it."""
    out, deadline = b"", time.monotonic() + seconds
    while True:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        assert ready, (
            f"the proxy did not close its stdout within {seconds} s (got {len(out)} bytes)"
        )
        chunk = os.read(fd, 65536)
        if not chunk:
            return out
        out += chunk


def test_the_proxy_copies_both_ways_and_ends_after_ssh_closes_its_side(
    pipes: dict[str, int],
) -> None:
    server = Echo(greeting=b"SSH-2.0-fake\r\n")
    thread = _relay(server.port, pipes)
    payload = os.urandom(300_000)  # more than one pipe buffer and one chunk
    writer = threading.Thread(
        target=lambda: (os.write(pipes["to_proxy"], payload), _close(pipes, "to_proxy")),
        daemon=True,
    )
    writer.start()
    received = _read_all(pipes["from_proxy"])
    writer.join(10)
    thread.join(10)
    assert not thread.is_alive()
    assert received == b"SSH-2.0-fake\r\n" + payload
    assert (server.seen == payload, server.eof) == (True, True)  # ssh's EOF reached it


def test_the_proxy_ends_when_the_session_closes_first(pipes: dict[str, int]) -> None:
    server = Echo(greeting=b"bye\n", close_first=True)
    thread = _relay(server.port, pipes)
    assert _read_all(pipes["from_proxy"]) == b"bye\n"  # EOF: the proxy closed its stdout
    thread.join(10)
    assert not thread.is_alive()  # stdin is still open: it did not wait for it


def test_a_port_nobody_listens_on_is_one_line_error() -> None:
    free = socket.create_server(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()
    with pytest.raises(ssh.SshError, match=f"127.0.0.1:{port} refused the connection"):
        ssh.connect("127.0.0.1", port, seconds=0.5)


# --- the wake, through the service layer ---------------------------------------------


class FakeContainer:
    def __init__(self, status: str) -> None:
        self.status = status


@pytest.fixture
def api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Sessions:
    sessions = registered_sessions(tmp_path, ("acme", "other"))
    manifest: dict[str, Any] = {
        "sessionId": "s1",
        "container": {"id": "c1", "portMappings": [{"containerPort": 22, "hostPort": 40022}]},
    }
    located: list[str] = []

    def get(session: str, tenant: str | None = None) -> dict[str, Any]:
        sessions.registry.find(session, tenant)
        return manifest

    def locate(session: str, tenant: str | None = None) -> tuple[Any, dict[str, Any]]:
        located.append(session)
        return sessions.registry.find(session, tenant), manifest

    monkeypatch.setattr(sessions, "get", get)
    monkeypatch.setattr(sessions, "locate", locate)
    return sessions


def _engine(monkeypatch: pytest.MonkeyPatch, status: str, hibernated: bool = False) -> list[Any]:
    woken: list[Any] = []
    monkeypatch.setattr(hibernate.pausing, "shared_client", lambda host: None)
    monkeypatch.setattr(
        hibernate.pausing, "container_of", lambda record, client: FakeContainer(status)
    )
    monkeypatch.setattr(hibernate, "is_hibernated", lambda container: hibernated)

    def wake(sessions: Any, session: str, tenant: str | None, by: str, **_: Any) -> bool:
        woken.append((session, tenant, by))
        return True

    monkeypatch.setattr(hibernate, "wake", wake)
    return woken


@pytest.mark.parametrize(
    ("status", "hibernated", "wakes"),
    [("paused", False, 1), ("exited", True, 1), ("running", False, 0), ("exited", False, 0)],
)
def test_a_connection_wakes_a_paused_or_hibernated_session_only(
    api: Sessions, monkeypatch: pytest.MonkeyPatch, status: str, hibernated: bool, wakes: int
) -> None:
    woken = _engine(monkeypatch, status, hibernated)
    assert certificates.proxy_port(api, "s1", "acme") == 40022
    assert woken == [("s1", "acme", "ssh connection")] * wakes


def test_another_tenants_session_is_missing_and_not_woken(
    api: Sessions, monkeypatch: pytest.MonkeyPatch
) -> None:
    woken = _engine(monkeypatch, "paused")
    with pytest.raises(SessionNotFound, match="no session 's1' of tenant nobody"):
        certificates.proxy_port(api, "s1", "nobody")
    assert woken == []


DOCKYARD = Path(sys.executable).with_name("dockyard")


def test_the_verb_fails_in_one_line_without_a_traceback(tmp_path: Path) -> None:
    """What ssh shows the user (a missing session; the other errors are the same kind)."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("DOCKYARD_")},
        "HOME": str(tmp_path),
        "DOCKYARD_STATE_DIR": str(tmp_path / "state"),
    }
    done = subprocess.run(
        [str(DOCKYARD), "ssh-proxy", "nosuch", "--tenant", "acme"],
        env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode != 0
    assert done.stdout == ""
    assert done.stderr.strip().splitlines() == [done.stderr.strip()]
    assert done.stderr.startswith("ERROR: no session 'nosuch' of tenant acme"), done.stderr
