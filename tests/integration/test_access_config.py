"""``dockyard:publishAddress`` (docs/access.md): loopback unless the stack names an IPv4
address; anything else is refused naming the key, the value and what is allowed."""

from __future__ import annotations

import pytest

from dockyard.config import ConfigError, parse


def test_default_is_loopback() -> None:
    assert parse({}, stack="s", cwd="/tmp").publish_address == "127.0.0.1"


@pytest.mark.parametrize("value", ["0.0.0.0", "10.0.0.5"])
def test_an_ipv4_address_is_taken(value: str) -> None:
    cfg = parse({"dockyard:publishAddress": value}, stack="s", cwd="/tmp")
    assert cfg.publish_address == value


@pytest.mark.parametrize("value", ["::1", "999.1.1.1", "localhost", 5, "127.000.0.1", ""])
def test_anything_else_is_refused(value: object) -> None:
    with pytest.raises(ConfigError) as caught:
        parse({"dockyard:publishAddress": value}, stack="s", cwd="/tmp")
    message = str(caught.value)
    assert f"dockyard:publishAddress: {value!r} is not allowed" in message
    assert "allowed: an IPv4 address" in message


def test_ssh_is_off_by_default_and_refused_on_kubernetes() -> None:
    env = {"sessionId": "a"}
    assert (
        parse({"dockyard:environments": [env]}, stack="s", cwd="/tmp").environments[0].ssh is False
    )
    with pytest.raises(ConfigError) as caught:
        parse(
            {"dockyard:backend": "kubernetes", "dockyard:environments": [{**env, "ssh": True}]},
            stack="s",
            cwd="/tmp",
        )
    assert "dockyard:environments[0].ssh: true is not allowed (allowed: false on backend" in str(
        caught.value
    )
