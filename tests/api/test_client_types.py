"""The Python client's typed answers (:mod:`dockyard.client`) against the committed OpenAPI
document, the one declaration of what the API answers: the same keys, the same required
ones. They are written twice because they cannot be one: the client is a face that does
not import the API (layers), the API's answers are pydantic models, and pydantic on
Python 3.11 refuses a standard-library ``TypedDict`` (the contract layer's only kind)."""

from __future__ import annotations

import json
import typing

import pytest

from dockyard import client
from dockyard.api import openapi

ANSWERS = ("Session", "SessionRow", "SessionPage", "Destroyed", "ModalPlan")
"""The client's answer types, each named as its schema in the document."""


@pytest.mark.parametrize("name", ANSWERS)
def test_the_client_types_an_answer_as_the_document_declares_it(name: str) -> None:
    schema = json.loads(openapi.COMMITTED.read_text(encoding="utf-8"))["components"]["schemas"]
    declared = schema[name]
    typed = getattr(client, name)
    assert set(typing.get_type_hints(typed)) == set(declared["properties"]), (
        f"client.{name}'s keys differ from the document's {name}: align the TypedDict with "
        f"{openapi.COMMITTED}"
    )
    assert set(typed.__required_keys__) == set(declared.get("required", [])), (
        f"client.{name}'s required keys differ from the document's {name}"
    )
