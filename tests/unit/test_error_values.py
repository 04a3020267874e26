"""What an error message may show of a bad value (dockyard.errors.shown): scalars and short
plain strings as they are; mappings, lists, long or key-shaped strings by type and size,
so a secret pasted into the wrong key is never echoed (review of issue 26 item 5's class
in the host-side backup settings)."""

from __future__ import annotations

from typing import Any

import pytest

from dockyard.backup import model
from dockyard.errors import shown

CANARY = "sk-ant-canary-1f3e"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (7, "7"),
        (True, "True"),
        (None, "None"),
        ("us-east-1", "'us-east-1'"),
        ({"AWS_SECRET_ACCESS_KEY": CANARY}, "<a mapping of 1 key>"),
        ([CANARY, CANARY], "<a list of 2 items>"),
        (CANARY, f"<a string of {len(CANARY)} characters>"),
        ("x" * 65, "<a string of 65 characters>"),
        ("tcp://user:pw@host:2376", "<a string of 23 characters>"),
        ("AKIAABCDEFGH", "<a string of 12 characters>"),
    ],
)
def test_a_value_is_shown_only_when_it_cannot_be_a_secret(value: Any, expected: str) -> None:
    assert shown(value) == expected


@pytest.mark.parametrize(
    "settings",
    [
        {"timeout_s": {"AWS_SECRET_ACCESS_KEY": CANARY}},
        {"helper_memory_mb": [CANARY]},
        {"region": {"key": CANARY}},
        {"region": 123},
        {"image": {"ref": CANARY}},
    ],
)
def test_backup_settings_never_echo_a_pasted_secret(settings: dict[str, Any]) -> None:
    with pytest.raises(model.ConfigError) as raised:
        model.Settings(repository="s3:storage.example/bucket/dockyard", **settings)
    message = str(raised.value)
    assert CANARY not in message
    (key,) = settings
    assert f"{key}: " in message
    assert "is not allowed (allowed:" in message
