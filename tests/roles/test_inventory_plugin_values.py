"""The inventory plugin's values (issue 32 item 8): everything it reads from manifests and
host files is marked unsafe where it could start a template (ansible-core 2.16-2.18 render
plugin strings; 2.19 trusts none anyway, so the marking is observed here, not through a
run), and ``running_only`` lists only the environments whose container is running, one
``docker ps`` per engine."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import warnings
from types import ModuleType
from typing import Any

import pytest
from ansible.inventory.data import InventoryData
from ansible.plugins.loader import init_plugin_loader

from tests.support.ansible import REPO
from tests.support.scripts import load_file

HOSTILE = "{{ lookup('pipe', 'touch /tmp/dockyard-inventory-rendered') }}"


def load_plugin() -> ModuleType:
    """The plugin file, with Ansible's collection loader over the checkout (it imports its
    collection's module_utils), installed once per process."""
    if "ansible_collections.dockyard" not in sys.modules:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "already configured" by another test module
            init_plugin_loader([str(REPO / "playbooks" / "collections")])
    path = REPO / "plugins" / "inventory" / "dockyard_manifests.py"
    return load_file("dockyard_manifests_values", path)


def reference_manifest() -> dict[str, Any]:
    doc = (REPO / "docs" / "manifest.md").read_text()
    block = doc.split("<!-- reference-manifest -->", 1)[1].split("```json", 1)[1]
    return dict(json.loads(block.split("```", 1)[0]))


class Marked(str):
    """What the plugin's unsafe marking produced (stands in for wrap_var)."""


def inventory_of(
    plugin: ModuleType, found: list[tuple[str, dict[str, Any], Any]], **options: Any
) -> InventoryData:
    module = plugin.InventoryModule()
    module.inventory = InventoryData()
    settings = {
        "strict": False,
        "compose": {},
        "groups": {},
        "keyed_groups": [],
        "remote_user": "agent",
        "docker_host": None,
        "running_only": False,
        **options,
    }
    module.get_option = settings.__getitem__
    module._add_hosts(found)
    return module.inventory


def test_values_that_could_start_a_template_are_marked_unsafe(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    plugin = load_plugin()
    monkeypatch.setattr(plugin, "wrap_var", Marked)
    manifest = reference_manifest()
    manifest.setdefault("extra", {})["note"] = HOSTILE
    placement = {"version": 1, "sessionId": manifest["sessionId"], "host": "h1",
                 "dockerHost": "ssh://agent@{{ evil }}"}  # fmt: skip
    inventory = inventory_of(plugin, [("m.json", manifest, placement)])
    host = inventory.get_host(manifest["container"]["name"])
    variables = host.vars
    assert isinstance(variables["dockyard_manifest"]["extra"]["note"], Marked)
    assert isinstance(variables["dockyard_docker_host"], Marked)
    assert isinstance(variables["ansible_docker_extra_args"], Marked)
    # Plain values stay plain (nothing to render in them).
    assert not isinstance(variables["dockyard_session_id"], Marked)
    assert variables["dockyard_manifest"]["sessionId"] == manifest["sessionId"]


def fake_docker(running: dict[str | None, list[str]], calls: list[list[str]]) -> Any:
    def run(argv: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        calls.append(list(argv))
        engine = argv[2] if argv[1] == "-H" else None
        if engine not in running:
            return subprocess.CompletedProcess(argv, 1, "", "Cannot connect to the Docker daemon")
        return subprocess.CompletedProcess(argv, 0, "\n".join(running[engine]) + "\n", "")

    return run


def test_running_only_lists_the_running_environments_asking_each_engine_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    plugin = load_plugin()
    calls: list[list[str]] = []
    base = reference_manifest()
    found = []
    for index, session in enumerate(["up", "down", "remote-up"]):
        manifest = copy.deepcopy(base)
        manifest["sessionId"] = session
        manifest["container"]["name"] = f"dockyard-dev-{session}"
        placement = None
        if index == 2:
            placement = {"version": 1, "sessionId": session, "host": "h2",
                         "dockerHost": "ssh://agent@h2"}  # fmt: skip
        found.append((f"{session}.json", manifest, placement))
    running = {None: ["dockyard-dev-up", "other"], "ssh://agent@h2": ["dockyard-dev-remote-up"]}
    monkeypatch.setattr(plugin.subprocess, "run", fake_docker(running, calls))
    inventory = inventory_of(plugin, found, running_only=True)
    assert sorted(inventory.hosts) == ["dockyard-dev-remote-up", "dockyard-dev-up"]
    assert sorted(map(tuple, calls)) == sorted(
        [
            ("docker", "ps", "--format", "{{.Names}}"),
            ("docker", "-H", "ssh://agent@h2", "ps", "--format", "{{.Names}}"),
        ]
    )
    # Off (the default): every manifest, no engine asked.
    calls.clear()
    assert len(inventory_of(plugin, found).hosts) == 3
    assert calls == []
    # An engine that does not answer fails the inventory, naming it.
    del running["ssh://agent@h2"]
    with pytest.raises(plugin.AnsibleParserError, match=r"ssh://agent@h2 did not list"):
        inventory_of(plugin, found, running_only=True)
