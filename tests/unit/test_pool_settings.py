"""``pools:`` in the host settings (issue 29 item 1): the model and its refusals, and the
refusal of any non-empty ``pools`` while members and claims do not exist (never inert)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from dockyard.config import ConfigError, from_host_settings
from dockyard.config.pools import NOT_AVAILABLE, Pool
from dockyard.sessions import Sessions
from dockyard.sessions.settings import paths

UNAVAILABLE = "is not allowed (allowed: an empty list: warm pools are not available yet"


def _problems(settings: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        from_host_settings(settings, stack="pools", cwd="/tmp")
    return caught.value.problems


def test_pool_entries_parse_with_defaults() -> None:
    first = Pool.model_validate({"min": 2})
    second = Pool.model_validate({"backend": "codex", "variant": "python", "min": 1, "max": 3})
    assert (first.key, first.min, first.ceiling) == (("claude", "core", "standard"), 2, 2)
    assert (second.label, second.ceiling) == ("codex-python-standard", 3)
    assert from_host_settings({}, stack="pools", cwd="/tmp").pools == []
    assert from_host_settings({"pools": []}, stack="pools", cwd="/tmp").pools == []


def test_valid_pools_are_refused_until_they_exist_naming_the_key() -> None:
    """Entries that pass every rule still fail: a pool nothing fills or claims from would
    silently give a host nothing of what it asked for."""
    (line,) = _problems(
        {"pools": [{"min": 2}, {"backend": "codex", "variant": "python", "min": 1, "max": 3}]}
    )
    assert line.startswith("dockyard:pools: <a list of 2 items> " + UNAVAILABLE), line
    assert line.endswith(f"(allowed: {NOT_AVAILABLE})")
    assert "remove pools from the host settings" in line


def test_host_profiles_are_known_to_pools() -> None:
    # The host's own profile passes the entry's check: only the availability refusal is left.
    (line,) = _problems(
        {"profiles": {"tiny": {"cpus": 1, "memory": 512}}, "pools": [{"profile": "tiny"}]}
    )
    assert UNAVAILABLE in line, line


@pytest.mark.parametrize(
    ("pools", "expected"),
    [
        ([{"backend": "gemini"}], "pools[0].backend: 'gemini' is not allowed (allowed: one of"),
        ([{"variant": "rust"}], "pools[0].variant: 'rust' is not allowed (allowed: one of"),
        (
            [{"profile": "nope"}],
            "pools[0].profile: 'nope' is not allowed (allowed: one of gpu, large, standard)",
        ),
        (
            [{"min": 5, "max": 2}],
            "pools[0].max: 2 is not allowed (allowed: an integer 5-100 (at least min, 5))",
        ),
        ([{"min": 0, "max": 0}], "pools[0].max: 0 is not allowed (allowed: an integer 1-100"),
        ([{"min": 101}], "pools[0].min: 101 is not allowed (allowed: an integer 0-100)"),
        ([{"min": True}], "pools[0].min: true is not allowed (allowed: an integer 0-100)"),
        ([{"min": 1, "size": 2}], "pools[0].size: unknown key (allowed: backend, max, min,"),
        (
            [{"min": 1}, {"min": 2, "profile": "standard"}],
            "pools[1]: 'claude-core-standard' is not allowed (allowed: one entry per backend, "
            "variant and profile (pools[0] has this one))",
        ),
        ({"claude": 2}, "pools: <a mapping of 1 key> is not allowed (allowed: a list)"),
        ([{"min": 0}] * 33, "pools: <a list of 33 items> is not allowed (allowed: a list of at"),
    ],
)
def test_bad_pools_are_refused_naming_key_value_and_allowed(pools: Any, expected: str) -> None:
    problems = _problems({"pools": pools})
    assert any(expected in line for line in problems), problems


def test_pools_must_fit_the_environment_quota() -> None:
    (line,) = _problems(
        {
            "quotas": {"environments": 5},
            "pools": [{"min": 2, "max": 4}, {"variant": "go", "min": 2}],
        }
    )
    assert "pools" in line
    assert "within quotas.environments (5); these add up to 6" in line
    (fits,) = _problems(
        {
            "quotas": {"environments": 6},
            "pools": [{"min": 2, "max": 4}, {"variant": "go", "min": 2}],
        }
    )
    assert UNAVAILABLE in fits, fits


def test_pools_are_docker_only() -> None:
    problems = _problems({"backend": "kubernetes", "pools": [{"min": 1}]})
    assert any("pools:" in p and "none with backend kubernetes" in p for p in problems), problems


class _Driver:
    """Records what reaches the engine: with pools refused, nothing may."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def up(self, plan: Any, secrets: Mapping[str, str], progress: Any) -> dict[str, Any]:
        self.calls.append(f"up {plan.stack_name}")
        raise AssertionError("a create with pools in the host settings reached the engine")

    def destroy(self, plan: Any, progress: Any) -> None:
        self.calls.append(f"destroy {plan.stack_name}")

    def recreate(self, plan: Any, secrets: Mapping[str, str], progress: Any) -> dict[str, Any]:
        raise AssertionError("not called")


def test_a_create_under_host_settings_with_pools_fails_naming_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    for name in ("DOCKYARD_STATE_DIR", "DOCKYARD_CONFIG", "DOCKYARD_AUDIT_LOG", "DOCKYARD_DRIVER"):
        monkeypatch.delenv(name, raising=False)
    settings = tmp_path / ".config" / "dockyard" / "settings.yaml"
    settings.parent.mkdir(parents=True)
    settings.write_text(json.dumps({"pools": [{"min": 2}]}), encoding="utf-8")
    driver = _Driver()
    request = {
        "sessionId": "s1",
        "cwd": str(tmp_path),
        "backend": "claude",
        "container": {"image": "ghcr.io/acme/dockyard-core:1.2"},
    }
    with pytest.raises(ConfigError) as caught:
        Sessions(paths(), driver).create(request)
    (line,) = [p for p in caught.value.problems if UNAVAILABLE in p] or [caught.value.problems]
    assert line.startswith(f"pools in host settings {settings}: <a list of 1 item>"), line
    assert driver.calls == []
