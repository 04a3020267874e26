"""The committed OpenAPI document is the live one (clients are generated from it)."""

from __future__ import annotations

import json

from dockyard.api import openapi


def test_the_committed_openapi_document_is_the_live_schema() -> None:
    committed = json.loads(openapi.COMMITTED.read_text(encoding="utf-8"))
    live = json.loads(openapi.text())
    drift = sorted(
        f"{method.upper()} {path}"
        for path in set(committed["paths"]) | set(live["paths"])
        for method in set(committed["paths"].get(path, {})) | set(live["paths"].get(path, {}))
        if committed["paths"].get(path, {}).get(method) != live["paths"].get(path, {}).get(method)
    )
    assert committed == live, (
        f"{openapi.COMMITTED} drifted from the live schema (operations: {drift or 'components'}); "
        f"regenerate it with `{openapi.REGENERATE}` and commit it"
    )


def test_the_document_has_the_reference_endpoints() -> None:
    paths = json.loads(openapi.COMMITTED.read_text(encoding="utf-8"))["paths"]
    assert "post" in paths["/api/sessions/create"]
    assert {p["name"] for p in paths["/api/cloud/providers/modal/plan"]["get"]["parameters"]} >= {
        "cwd",
        "sessionId",
    }
