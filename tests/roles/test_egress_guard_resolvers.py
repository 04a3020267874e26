"""The egress guard's upstream resolvers on a host whose /etc/resolv.conf names only a
local stub (systemd-resolved's 127.0.0.53): the real upstreams come from
/run/systemd/resolve/resolv.conf, and a host with none says so, naming both files."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.scripts import load_script

guard = load_script("egress_guard", "dockyard-egress-guard.py")
STUB = "# systemd-resolved stub\nnameserver 127.0.0.53\noptions edns0 trust-ad\nsearch .\n"


def files(tmp_path: Path, resolv: str, resolved: str | None) -> tuple[str, str]:
    (tmp_path / "resolv.conf").write_text(resolv)
    if resolved is not None:
        (tmp_path / "resolved.conf").write_text(resolved)
    return str(tmp_path / "resolv.conf"), str(tmp_path / "resolved.conf")


def test_the_host_s_own_resolvers_when_it_names_real_ones(tmp_path: Path) -> None:
    resolv, resolved = files(
        tmp_path,
        "nameserver 10.0.0.2\nnameserver ::1\nnameserver 127.0.0.1\n",
        "nameserver 9.9.9.9\n",
    )
    assert guard.host_upstreams(resolv, resolved) == ["10.0.0.2"]


def test_systemd_resolved_s_upstreams_behind_its_stub(tmp_path: Path) -> None:
    resolv, resolved = files(
        tmp_path, STUB, "nameserver 192.0.2.53\nnameserver 2001:db8::53\nnameserver 198.51.100.7\n"
    )
    assert guard.host_upstreams(resolv, resolved) == ["192.0.2.53", "198.51.100.7"]


@pytest.mark.parametrize("resolved", [None, "# no servers\n", "nameserver 127.0.0.1\n"])
def test_no_upstream_is_an_error_naming_both_files(tmp_path: Path, resolved: str | None) -> None:
    resolv, resolved_path = files(tmp_path, STUB, resolved)
    with pytest.raises(guard.GuardError) as raised:
        guard.host_upstreams(resolv, resolved_path)
    message = str(raised.value)
    assert f"{resolv} names no IPv4 resolver but loopback ones (127.0.0.53)" in message
    assert resolved_path in message
    assert ("does not exist" in message) is (resolved is None)
    assert "egress_guard_upstream_dns" in message
