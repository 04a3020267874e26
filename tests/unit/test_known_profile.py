"""One rule for a profile's name (config.sections.KnownProfile, issue 24 duplicates): the
stack's default profile, an environment's and a pool's are each one of the stack's
profiles (built in, or its own), and an environment may name a profile the stack defines."""

from __future__ import annotations

import pytest

from dockyard.config import ConfigError, parse

ALLOWED = "(allowed: one of gpu, large, standard)"


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (
            {"dockyard:profile": "huge", "dockyard:environments": [{"sessionId": "s1"}]},
            f"dockyard:profile: 'huge' is not allowed {ALLOWED}",
        ),
        (
            {"dockyard:environments": [{"sessionId": "s1", "profile": "huge"}]},
            f"dockyard:environments[0].profile: 'huge' is not allowed {ALLOWED}",
        ),
    ],
)
def test_an_unknown_profile_is_refused_wherever_it_is_named(
    raw: dict[str, object], problem: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        parse(raw, stack="dev", cwd="/p")
    assert caught.value.problems == [problem]


def test_an_environment_may_name_a_profile_the_stack_defines() -> None:
    raw = {
        "dockyard:profiles": {"tiny": {"cpus": 0.5}},
        "dockyard:environments": [{"sessionId": "s1", "profile": "tiny"}, {"sessionId": "s2"}],
    }
    config = parse(raw, stack="dev", cwd="/p")
    assert [env.profile for env in config.environments] == ["tiny", None]
