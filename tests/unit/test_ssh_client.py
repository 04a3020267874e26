"""`dockyard ssh` on the client side: nothing of the caller is forwarded into an
environment (its sshd runs as the agent, which can replace it), and `-- CMD` runs CMD on
the far side (issue 25 item 8, issue 26 item 7)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from dockyard import ssh
from dockyard.errors import INVALID


def _argv(options: list[str], command: list[str] | None = None) -> list[str]:
    return ssh.ssh_argv(
        Path("/k/id"),
        Path("/k/id-cert.pub"),
        "127.0.0.1",
        2222,
        Path("/k/kh"),
        options,
        command or [],
    )


@pytest.fixture(autouse=True)
def _ssh_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}")


def test_forwarding_is_off_and_options_come_before_the_destination() -> None:
    argv = _argv(["-L", "8080:localhost:80", "-N"], ["uname", "-a"])
    destination = argv.index("agent@127.0.0.1")
    for option in ("ForwardAgent=no", "ForwardX11=no", "ForwardX11Trusted=no"):
        assert argv.index(option) < destination
    assert argv[destination - 3 : destination] == ["-L", "8080:localhost:80", "-N"]
    assert argv[destination + 1 :] == ["uname", "-a"]


@pytest.mark.parametrize(
    ("options", "named"),
    [
        (["-A"], "-A (agent forwarding)"),
        (["-X"], "-X (X11 forwarding)"),
        (["-Y"], "-Y (X11 forwarding)"),
        (["-vA"], "-A (agent forwarding)"),
        (["-NqX"], "-X (X11 forwarding)"),
        (["-o", "ForwardAgent=yes"], "-o forwardagent"),
        (["-oForwardAgent=yes"], "-o forwardagent"),
        (["-o", "forwardx11 yes"], "-o forwardx11"),
        (["-o", "LocalCommand=id"], "-o localcommand"),
        (["-o", "PermitLocalCommand=yes"], "-o permitlocalcommand"),
    ],
)
def test_options_that_forward_into_the_environment_are_refused(
    options: list[str], named: str
) -> None:
    assert named in ssh.refused_options(options)
    with pytest.raises(ssh.SshOptionError) as raised:
        _argv(options)
    assert raised.value.exit_code == INVALID
    assert named in str(raised.value)
    assert "(allowed:" in str(raised.value)


@pytest.mark.parametrize(
    "options",
    [
        ["-L", "8080:localhost:80"],
        ["-R", "7000:127.0.0.1:9000", "-N"],
        ["-D", "1080"],
        ["-v"],
        ["-o", "ServerAliveInterval=5"],
        # A value that happens to contain the letters is not a flag.
        ["-L", "AXY:localhost:80"],
        ["-o", "SendEnv=FORWARDAGENT"],
    ],
)
def test_port_forwards_and_plain_options_pass(options: list[str]) -> None:
    assert ssh.refused_options(options) == []


def test_the_remote_command_starts_at_the_first_word_that_is_no_option() -> None:
    # Click drops the `--` that separates dockyard's options from ssh's.
    assert ssh.split_command(["-L", "1:h:2", "git", "log", "--", "file"]) == (
        ["-L", "1:h:2"],
        ["git", "log", "--", "file"],
    )
    assert ssh.split_command(["-N"]) == (["-N"], [])
    assert ssh.split_command(["-o", "ConnectTimeout=10", "-vN", "-p2222", "uname", "-a"]) == (
        ["-o", "ConnectTimeout=10", "-vN", "-p2222"],
        ["uname", "-a"],
    )
    assert ssh.split_command(["-oBatchMode=yes", "id"]) == (["-oBatchMode=yes"], ["id"])
    assert ssh.split_command([]) == ([], [])
