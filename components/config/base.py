"""What every part of the configuration model shares: the model base and its conventions.

Keys have exactly one spelling, the documented camelCase (pydantic's alias); anything
else is an unknown key. Every model is frozen and refuses extra keys.
"""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

from ..contract import NAMESPACE

__all__ = ["CONVENTIONAL_NAME", "NAMESPACE", "THIS_KEY", "Model"]

# Stands for "the mapping key itself" in a problem about a key (rendered "this key").
THIS_KEY = object()
CONVENTIONAL_NAME = re.compile(r"[A-Z][A-Z0-9_]{0,63}", re.ASCII)
"""A secret name written the conventional way (shown in problems: a name, not a value)."""


class Model(BaseModel):
    """The base of every configuration model."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_alias=True,
        validate_by_name=False,
        extra="forbid",
        frozen=True,
    )
