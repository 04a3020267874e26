"""No fail-open window at boot (issue 32 item 4): the egress guard's --restore applies the
last fence and allowlists from its state directory alone (the engine is not up yet), and
under systemd the role's boot unit runs it before the engine starts containers."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.support.ansible import REPO
from tests.support.scripts import load_script

guard = load_script("egress_guard", "dockyard-egress-guard.py")


def test_restore_applies_the_saved_table_and_starts_the_saved_forwarders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[list[str], str | None]] = []
    monkeypatch.setattr(
        guard, "run", lambda argv, stdin=None: calls.append((list(argv), stdin)) or ""
    )
    monkeypatch.setattr(guard, "_get", lambda path: pytest.fail(f"engine asked at boot: {path}"))
    (tmp_path / "ruleset.nft").write_text("table inet dockyard_egress {\n}\n")
    (tmp_path / "aaaa.conf").write_text("listen-address=172.30.0.1\n")
    (tmp_path / "bbbb.conf").write_text("listen-address=172.31.0.1\n")
    (tmp_path / "bbbb.pid").write_text("999999999\n")  # stale: no such process
    result = guard.restore(tmp_path)
    table = guard.TABLE
    assert calls[0] == (
        ["nft", "-f", "-"],
        f"table inet {table}\ndelete table inet {table}\ntable inet dockyard_egress {{\n}}\n",
    )
    assert calls[1:] == [
        (["dnsmasq", f"--conf-file={tmp_path / 'aaaa.conf'}"], None),
        (["dnsmasq", f"--conf-file={tmp_path / 'bbbb.conf'}"], None),
    ]
    assert result["changed"] is True
    assert not (tmp_path / "bbbb.pid").exists()


def test_restore_with_nothing_saved_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(guard, "run", lambda argv, stdin=None: pytest.fail(f"ran {argv}"))
    assert guard.restore(tmp_path / "missing")["changed"] is False
    assert guard.main(["--state-dir", str(tmp_path), "--restore", "--json"]) == 0


def test_the_boot_unit_runs_restore_before_the_engine_and_keeps_state_across_reboots() -> None:
    variables = yaml.safe_load((REPO / "roles" / "egress_guard" / "vars" / "main.yml").read_text())
    assert not variables["egress_guard_state_dir"].startswith("/run/")
    unit = variables["egress_guard_boot_unit"]
    lines = [line.strip() for line in unit.splitlines()]
    assert "Before=docker.service containerd.service" in lines
    assert "WantedBy=docker.service multi-user.target" in lines
    assert "Type=oneshot" in lines
    assert "RemainAfterExit=yes" in lines
    (start,) = [line for line in lines if line.startswith("ExecStart=")]
    # python, script, --state-dir, the state directory: the first four words of the command.
    assert start == "ExecStart={{ egress_guard_restore_command | join(' ') }}"
    assert variables["egress_guard_restore_command"].strip() == (
        "{{ egress_guard_command[:4] + ['--forwarder-unit', egress_guard_forwarder_unit, '--restore'] }}"
    )
    assert variables["egress_guard_command"].split()[:4] == [
        "{{",
        "[egress_guard_python,",
        "egress_guard_script,",
        "'--state-dir',",
    ]
    tasks = (REPO / "roles" / "egress_guard" / "tasks" / "main.yml").read_text()
    assert "egress_guard_boot_unit_path | basename" in tasks


class FakeSystemd:
    """systemctl as the guard calls it: enable/restart/disable instances, is-active."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.active: set[str] = set()

    def run(self, argv: list[str], stdin: str | None = None) -> str:
        self.calls.append(list(argv))
        if argv[:2] == ["systemctl", "restart"]:
            self.active.add(argv[2])
        if argv[:3] == ["systemctl", "disable", "--now"]:
            self.active.discard(argv[-1])
        return ""

    def status(self, argv: list[str], **_: object) -> object:
        assert argv[:3] == ["systemctl", "is-active", "--quiet"], argv
        return type("Done", (), {"returncode": 0 if argv[3] in self.active else 3})()


def test_forwarders_are_units_of_their_own_under_systemd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeSystemd()
    monkeypatch.setattr(guard, "run", fake.run)
    monkeypatch.setattr(guard.subprocess, "run", fake.status)
    monkeypatch.setattr(guard, "FORWARDER_UNIT", "dockyard-egress-dns")
    monkeypatch.setattr(guard, "table_present", lambda: True)
    net = guard.Network("a" * 64, "allow-net", "br-aaaa", "172.30.0.1", {"example.com": [443]})
    monkeypatch.setattr(guard, "_get", lambda path: [])
    monkeypatch.setattr(guard, "networks", lambda scope, listed: [net])
    monkeypatch.setattr(guard, "fenced_networks", lambda scope, listed: ([], [], []))
    unit = f"dockyard-egress-dns@{net.key}.service"
    first = guard.reconcile(["192.0.2.53"], tmp_path, 3600, False)
    assert ["systemctl", "enable", "--quiet", unit] in fake.calls
    assert ["systemctl", "restart", unit] in fake.calls
    assert not [c for c in fake.calls if c[0] == "dnsmasq"]  # never a process of the job's own
    assert first["changed"] is True
    assert (tmp_path / f"{net.key}.conf").read_text().startswith("# dockyard egress forwarder")
    fake.calls.clear()
    assert guard.reconcile(["192.0.2.53"], tmp_path, 3600, False)["changed"] is False
    assert [c for c in fake.calls if c[1] != "is-active"] == []
    # A forwarder unit that died is restarted; a network gone disables its unit.
    fake.active.clear()
    assert guard.reconcile(["192.0.2.53"], tmp_path, 3600, False)["changed"] is True
    assert ["systemctl", "restart", unit] in fake.calls
    monkeypatch.setattr(guard, "networks", lambda scope, listed: [])
    guard.reconcile(["192.0.2.53"], tmp_path, 3600, False)
    assert ["systemctl", "disable", "--now", "--quiet", unit] in fake.calls
    assert not (tmp_path / f"{net.key}.conf").exists()


def test_the_forwarder_unit_runs_dnsmasq_in_the_foreground_before_the_engine() -> None:
    variables = yaml.safe_load((REPO / "roles" / "egress_guard" / "vars" / "main.yml").read_text())
    lines = [line.strip() for line in variables["egress_guard_forwarder_unit_text"].splitlines()]
    assert "Before=docker.service" in lines
    assert "WantedBy=docker.service" in lines
    assert "Type=simple" in lines
    (start,) = [line for line in lines if line.startswith("ExecStart=")]
    assert "--keep-in-foreground" in start
    assert start.endswith("{{ egress_guard_state_dir }}/%i.conf")
    assert variables["egress_guard_forwarder_unit_path"].endswith(
        f"/{variables['egress_guard_forwarder_unit']}@.service"
    )
    assert "--forwarder-unit" in variables["egress_guard_command"]
    assert "--forwarder-unit" in variables["egress_guard_restore_command"]
