"""A file entry the workspace helper answers (the agent can take the helper over) is passed
on only with numbers the host can answer: a size, mode or mtime of the wrong type, NaN,
infinity or too large for a float becomes unknown instead of a 500 (issue 27's review)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from dockyard.api.files import Entry
from dockyard.sessions.workspace_files import _entry

HOSTILE: list[Any] = [
    10**400,
    -(10**400),
    -5,
    float("nan"),
    float("inf"),
    float("-inf"),
    True,
    "12",
    [1],
    {"a": 1},
    None,
    1.5,
]


@pytest.mark.parametrize("value", HOSTILE, ids=lambda v: repr(v)[:12])
@pytest.mark.parametrize("field", ["size", "mode", "mtime"])
def test_a_hostile_number_becomes_unknown_and_the_answer_serialises(field: str, value: Any) -> None:
    out = _entry({"name": "f", "type": "file", field: value})
    if field == "mtime" and value in (-5, 1.5):
        assert out["mtime"] == float(value)  # a time before 1970 or with a fraction is fine
    else:
        assert out[field] == (0 if field == "size" else None), out
    json.dumps(out, allow_nan=False)
    Entry(**out).model_dump_json()


def test_an_honest_entry_is_passed_on() -> None:
    out = _entry({"name": "f", "type": "file", "size": 7, "mode": 0o100644, "mtime": 1.5e9})
    assert out == {"name": "f", "type": "file", "size": 7, "mode": "0644", "mtime": 1.5e9}
