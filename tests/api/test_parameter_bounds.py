"""Every integer a query or path of /api takes has an upper bound (review5 R6): a huge
number answers 422 naming the parameter, never 500 from the store (SQLite's 64-bit and
PostgreSQL's int4 columns)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from dockyard.api.openapi import COMMITTED

from .conftest import Api

INT_MAX = 2**31 - 1
HUGE = "99999999999999999999"


def integer_parameters() -> list[tuple[str, str, dict[str, Any]]]:
    document = json.loads(COMMITTED.read_text())
    found = []
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            for parameter in operation.get("parameters", []):
                schema = parameter.get("schema", {})
                for option in (schema, *schema.get("anyOf", [])):
                    if option.get("type") == "integer":
                        found.append((f"{method} {path}", parameter["name"], option))
    return found


def test_every_integer_parameter_of_the_api_has_an_upper_bound() -> None:
    ours = [entry for entry in integer_parameters() if entry[0].split()[1].startswith("/api/")]
    assert len(ours) >= 9, ours  # the sweep sees the parameters it is meant to judge
    unbounded = [
        (where, name)
        for where, name, schema in ours
        if not isinstance(schema.get("maximum"), int) or schema["maximum"] > INT_MAX
    ]
    assert unbounded == []


@pytest.mark.anyio
async def test_a_huge_delivery_id_or_page_answers_422(api: Api) -> None:
    key = api.key("t1")
    for url, name in (
        (f"/api/webhooks/wh1/deliveries/{HUGE}", "path.delivery_id"),
        (f"/api/webhooks/wh1/deliveries?before={HUGE}", "query.before"),
        (f"/api/webhooks/wh1/deliveries?event={HUGE}", "query.event"),
        (f"/api/sessions?offset={HUGE}", "query.offset"),
    ):
        response = await api.client.get(url, headers=key)
        assert response.status_code == 422, (url, response.text)
        error = response.json()["error"]
        assert error["kind"] == "invalid", response.text
        assert error["problems"] == [f"{name}: Input should be less than or equal to {INT_MAX}"]


@pytest.mark.anyio
async def test_a_huge_event_id_to_resume_after_answers_422(api: Api) -> None:
    """The SSE stream's ``Last-Event-ID`` (a header) and the dashboard's ``after`` (read
    by hand) reach the same check as ``?after=``."""
    key = api.key("t1")
    for value, problem in (
        (
            HUGE.encode(),
            f"header.Last-Event-ID: {HUGE} is not an event id (allowed: 0 to {INT_MAX})",
        ),
        (b"\xb2", "header.Last-Event-ID: not an event id"),  # a digit in Latin-1
    ):
        headers = [*key.items(), ("Last-Event-ID", value)]
        response = await api.client.get("/api/events", headers=headers)
        assert response.status_code == 422, (value, response.text)
        assert response.json()["error"]["problems"][0].startswith(problem), response.text
