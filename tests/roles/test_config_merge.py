"""plugins/modules/config_merge on this machine: its result names what it changed and
never carries the rest of the file (a user's .claude.json holds their tokens)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support.ansible import REPO, run_module

MODULES = REPO / "plugins" / "modules"
TOKEN = "sk-ant-canary-config-merge-1f2e"


def test_result_lists_changed_keys_only_and_never_the_file(tmp_path: Path) -> None:
    path = tmp_path / ".claude.json"
    path.write_text(
        json.dumps({"oauthAccount": {"token": TOKEN}, "permissions": {"allow": ["Bash(ls)"]}})
    )
    settings = {"permissions": {"deny": ["Read(/run/secrets/**)"]}, "theme": "dark"}
    first = run_module(
        "config_merge", {"path": str(path), "settings": settings}, module_path=MODULES
    )
    assert not first.get("failed"), first
    assert first["changed"] is True
    assert sorted(first["changed_keys"]) == ["permissions.deny", "theme"]
    assert TOKEN not in json.dumps(first)
    assert "merged" not in first
    # The file itself keeps the user's keys and gains the managed ones.
    written = json.loads(path.read_text())
    assert written["oauthAccount"] == {"token": TOKEN}
    assert written["permissions"] == {"allow": ["Bash(ls)"], "deny": ["Read(/run/secrets/**)"]}
    second = run_module(
        "config_merge", {"path": str(path), "settings": settings}, module_path=MODULES
    )
    assert second["changed"] is False
    assert second["changed_keys"] == []
    assert TOKEN not in json.dumps(second)
