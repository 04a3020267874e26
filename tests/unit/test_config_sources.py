"""The configuration's entries, one per source, and key naming as an input of parsing.

Every source (a stack file, Pulumi's config, host settings, host settings plus a request)
ends in one validation; how a source names a key to its user is passed in (a KeyName),
so a request's problems read ``request.container.ports[1]`` from the start. The package
is the only one that spells the configuration namespace.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import pytest

from dockyard import config, manifest, modal_plan
from dockyard.config import ConfigError, from_host_settings, from_request, key_path, parse
from dockyard.config.messages import Loc
from dockyard.sessions.request import request_key
from tests.unit.test_manifest import example

REPO = Path(__file__).resolve().parents[2]
CWD = "/home/u/project"
BAD_SETTINGS = {"quotas": {"cpus": 0}, "publishAddress": "::1", "bogus": 1, "PLAIN_TOKEN": "x"}
BAD_ENVIRONMENT = {
    "sessionId": "s1",
    "ports": [8080, 70000],
    "egressAllow": ["*.x.com"],
    "env": {"OPENAI_API_KEY": "c4n4ry"},
    "limits": {"swap": 1},
}


def _problems(call: Any) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        call()
    return caught.value.problems


def _split(line: str) -> tuple[str, str]:
    key, _, rest = line.partition(": ")
    return key, rest


def test_the_naming_is_an_input_every_key_comes_from_it() -> None:
    seen: list[Loc] = []

    def name(loc: Loc) -> str:
        seen.append(loc)
        return f"<{len(seen) - 1}>"

    problems = _problems(
        lambda: from_request(BAD_SETTINGS, BAD_ENVIRONMENT, stack="s", cwd="relative", name=name)
    )
    keys = [_split(p)[0] for p in problems]
    # Every line's key is exactly what the naming function returned, for a location of
    # the model: nothing is renamed afterwards.
    assert all(re.fullmatch(r"<[0-9]+>", key) for key in keys), problems
    named = {seen[int(key[1:-1])] for key in keys}
    assert named >= {
        ("quotas", "cpus"),
        ("publishAddress",),
        ("bogus",),
        ("PLAIN_TOKEN",),
        ("cwd",),
        ("environments", 0, "ports", 1),
        ("environments", 0, "egressAllow", 0),
        ("environments", 0, "env", "OPENAI_API_KEY"),
        ("environments", 0, "limits", "swap"),
    }, named


def test_every_naming_lists_the_same_problems_in_the_stacks_key_order() -> None:
    def judged(name: Any) -> list[str]:
        return _problems(
            lambda: from_request(BAD_SETTINGS, BAD_ENVIRONMENT, stack="s", cwd="rel", name=name)
        )

    stack, request = judged(key_path), judged(request_key)
    assert len(stack) == len(request) >= 9
    assert [_split(p)[1] for p in stack] == [_split(p)[1] for p in request]
    assert [_split(p)[0] for p in request] == [
        "PLAIN_TOKEN in host settings",
        "bogus in host settings",
        "request.cwd",
        "request.egressAllow[0]",
        "request.container.env.OPENAI_API_KEY",
        "request.limits.swap",
        "request.container.ports[1]",
        "publishAddress in host settings",
        "quotas.cpus in host settings",
    ]
    # The stack's own naming of the same problems, in the same (natural key) order.
    assert [_split(p)[0] for p in stack][:3] == [
        "dockyard:PLAIN_TOKEN",
        "dockyard:bogus",
        "dockyard:cwd",
    ]
    assert "c4n4ry" not in "\n".join(stack + request)


def test_a_request_names_its_own_problems_first() -> None:
    problems = _problems(
        lambda: from_request(
            {"environments": [], "quotas": {"cpus": 0}},
            {"sessionId": "s1"},
            stack="s",
            name=request_key,
        )
    )
    assert problems[:2] == [
        "environments in host settings: not allowed (allowed: host-wide keys only; "
        "sessions come from requests)",
        "request.cwd: missing (allowed: the absolute project directory)",
    ]
    assert problems[2].startswith("quotas.cpus in host settings: 0 is not allowed")


def test_the_request_entry_gives_the_same_stack_as_a_stack_file(tmp_path: Path) -> None:
    settings = {"limits": {"cpus": 2}, "publishAddress": "0.0.0.0"}
    environment = {"sessionId": "s1", "ports": [3000], "secrets": ["GITHUB_TOKEN"]}
    from_entry = from_request(
        settings, environment, stack="s", cwd=str(tmp_path), secret_names={"GITHUB_TOKEN"}
    )
    stack = tmp_path / "Pulumi.s.yaml"
    stack.write_text(
        "config:\n"
        "  dockyard:limits: {cpus: 2}\n"
        "  publishAddress: 0.0.0.0\n"
        "  dockyard:environments: [{sessionId: s1, ports: [3000], secrets: [GITHUB_TOKEN]}]\n"
        "  dockyard:GITHUB_TOKEN: {secure: AAAA}\n"
    )
    assert config.stack_file(str(stack)) == from_entry
    assert config.stack_name(str(stack)) == "s"


def test_a_stack_file_that_cannot_be_read_is_named_as_its_caller_says(tmp_path: Path) -> None:
    missing = tmp_path / "Pulumi.gone.yaml"
    problems = _problems(lambda: config.stack_file(str(missing), label=f"--stack {missing}"))
    assert len(problems) == 1
    assert problems[0].startswith(f"--stack {missing}: cannot be read (")


def test_host_settings_take_keys_with_or_without_the_namespace() -> None:
    settings = config.host_settings({"dockyard:limits": {"cpus": 2}, "publishAddress": "0.0.0.0"})
    assert settings == {"limits": {"cpus": 2}, "publishAddress": "0.0.0.0"}
    stack = from_host_settings(
        {**settings, "environments": [{"sessionId": "x"}]}, stack="images", cwd=CWD
    )
    assert stack.limits.cpus == 2
    assert stack.environments == []
    assert stack.stack == "images"
    assert config.config_key("GITHUB_TOKEN") == "dockyard:GITHUB_TOKEN"


def test_parse_is_the_pulumi_shape_of_the_same_validation() -> None:
    raw = {
        "dockyard:environments": [BAD_ENVIRONMENT],
        "dockyard:quotas": {"cpus": 0},
        "other:key": "not ours",
    }
    problems = _problems(lambda: parse(raw, stack="s", cwd=CWD))
    again = _problems(
        lambda: from_request({"quotas": {"cpus": 0}}, BAD_ENVIRONMENT, stack="s", cwd=CWD)
    )
    assert problems == again


def test_how_to_supply_a_secret_is_an_input_too() -> None:
    environment = {"sessionId": "s1", "secrets": ["GITHUB_TOKEN", "lower_name"]}
    stack = _problems(lambda: from_request({}, environment, stack="s", cwd=CWD))
    assert stack == [
        "dockyard:environments[0].secrets[0]: 'GITHUB_TOKEN' is not set (allowed: a secret in "
        "this stack's config; run `pulumi config set --secret GITHUB_TOKEN <value>`)",
        "dockyard:environments[0].secrets[1]: <a string of 10 characters> is not set (allowed: "
        "a secret in this stack's config; run `pulumi config set --secret <NAME> <value>`)",
    ]
    hinted = _problems(
        lambda: from_request(
            {}, environment, stack="s", cwd=CWD, secret_hint=lambda name: f"pass {name}"
        )
    )
    assert [p.split(" (allowed: ")[1] for p in hinted] == ["pass GITHUB_TOKEN)", "pass <NAME>)"]


def test_the_modal_planner_names_a_bad_limit_as_its_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "dev.json"
    manifest.write(path, example())
    assert modal_plan.main([str(path), "--cpus", "0", "--memory", "1k"]) == 1
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(": ", 2)[1] for line in lines] == ["--cpus", "--memory"], lines
    assert lines[0] == (
        "ERROR: --cpus: 0.0 is not allowed (allowed: a number of CPUs from 0.01 to 1024, "
        "e.g. 4 or 0.5)"
    )
    missing = tmp_path / "Pulumi.gone.yaml"
    assert modal_plan.main([str(path), "--stack", str(missing)]) == 1
    assert f"--stack {missing}: cannot be read (" in capsys.readouterr().err


# Files outside dockyard.config that still spell the configuration namespace, and why.
# Each is to go: a stack key is config.config_key(name), a key in a message is
# config.key_path(loc), stack-shaped input goes through an entry (from_request,
# from_host_settings, stack_file) with a KeyName for its own key names.
STILL_SPELLED = {
    "ssh.py": "a certificate's key id (dockyard:<stack>/<session>:<caller>), not configuration",
    "sessions/backups.py": "issue 24: backup split in progress (use from_host_settings, key_path)",
}
# A key in the namespace: "dockyard:" then a key, or the end of an f-string's literal part
# (a key follows from a placeholder); "dockyard:index:..." are Pulumi type tokens and
# "dockyard: ..." a log line's prefix.
NAMESPACE_SPELLED = re.compile(r"\bdockyard:(?!index:)(?=[A-Za-z_\[{]|\Z)")


def _spells_the_namespace(path: Path) -> bool:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    # Docstrings (of modules, classes, functions and attributes) document; code spells.
    docstrings = {
        id(node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
    }
    return any(
        isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in docstrings
        and NAMESPACE_SPELLED.search(node.value)
        for node in ast.walk(tree)
    )


def test_only_the_configuration_spells_the_namespace() -> None:
    components = REPO / "components"
    spelled = {
        str(path.relative_to(components))
        for path in components.rglob("*.py")
        if "config" not in path.relative_to(components).parts[:1] and _spells_the_namespace(path)
    }
    assert spelled <= set(STILL_SPELLED), sorted(spelled - set(STILL_SPELLED))
