"""Pulumi's wire form of a secret, as resource inputs reach ``Mocks.new_resource``:
``{<sig key>: <secret sig>, "value": <plain value>}`` around the whole top-level
property. The one place tests and the harness read that form."""

from __future__ import annotations

from typing import Any

# The SDK's own markers (pulumi/runtime/rpc.py): importing them, rather than copying the
# hashes, makes an SDK that changes its wire form fail here, loudly.
from pulumi.runtime.rpc import _special_secret_sig as SECRET_SIG
from pulumi.runtime.rpc import _special_sig_key as SIG_KEY

__all__ = ["SECRET_SIG", "SIG_KEY", "is_secret_wrapped", "unwrap"]


def is_secret_wrapped(value: Any) -> bool:
    """True when ``value`` is a secret in Pulumi's wire form."""
    return isinstance(value, dict) and value.get(SIG_KEY) == SECRET_SIG and "value" in value


def unwrap(value: Any) -> Any:
    """``value`` with every secret wrapper, at any depth, replaced by its plain value."""
    if is_secret_wrapped(value):
        return unwrap(value["value"])
    if isinstance(value, dict):
        return {key: unwrap(item) for key, item in value.items()}
    if isinstance(value, list):
        return [unwrap(item) for item in value]
    return value
