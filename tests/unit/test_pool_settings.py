"""``pools:`` in the host settings (issue 29 item 1): the model and its refusals."""

from __future__ import annotations

from typing import Any

import pytest

from dockyard.config import ConfigError, from_host_settings
from dockyard.config.pools import Pool


def _problems(settings: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        from_host_settings(settings, stack="pools", cwd="/tmp")
    return caught.value.problems


def test_pool_entries_parse_with_defaults() -> None:
    first = Pool.model_validate({"min": 2})
    second = Pool.model_validate({"backend": "codex", "variant": "python", "min": 1, "max": 3})
    third = Pool.model_validate({"tenant": "acme", "min": 1})
    assert (first.key, first.min, first.ceiling) == (("", "claude", "core", "standard"), 2, 2)
    assert (second.label, second.ceiling) == ("codex-python-standard", 3)
    assert (third.key, third.label) == (
        ("acme", "claude", "core", "standard"),
        "acme/claude-core-standard",
    )
    assert from_host_settings({}, stack="pools", cwd="/tmp").pools == []
    assert from_host_settings({"pools": []}, stack="pools", cwd="/tmp").pools == []


def test_valid_pools_are_accepted() -> None:
    config = from_host_settings(
        {
            "profiles": {"tiny": {"cpus": 1, "memory": 512}},
            "pools": [
                {"min": 2},
                {"backend": "codex", "variant": "python", "min": 1, "max": 3},
                {"tenant": "acme", "profile": "tiny", "min": 1},
                {"tenant": "acme", "min": 1},
            ],
        },
        stack="pools",
        cwd="/tmp",
    )
    assert [p.label for p in config.pools] == [
        "claude-core-standard",
        "codex-python-standard",
        "acme/claude-core-tiny",
        "acme/claude-core-standard",
    ]


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
            "pools[1]: 'claude-core-standard' is not allowed (allowed: one entry per tenant, "
            "backend, variant and profile (pools[0] has this one))",
        ),
        (
            [{"tenant": "Acme!"}],
            "pools[0].tenant: 'Acme!' is not allowed (allowed:",
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
    fits = from_host_settings(
        {
            "quotas": {"environments": 6},
            "pools": [{"min": 2, "max": 4}, {"variant": "go", "min": 2}],
        },
        stack="pools",
        cwd="/tmp",
    )
    assert sum(p.ceiling for p in fits.pools) == 6


def test_pools_are_docker_only() -> None:
    problems = _problems({"backend": "kubernetes", "pools": [{"min": 1}]})
    assert any("pools:" in p and "none with backend kubernetes" in p for p in problems), problems
