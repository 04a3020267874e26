"""A request's audit line (dockyard.api.middleware.audit_request): its detail is cut so a
long path cannot make a huge line (the status stays), and a line that cannot be written is
logged, never the request's error."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from dockyard.api.middleware import audit_request
from dockyard.sessions import audit


def _context(log: Path) -> Any:
    return SimpleNamespace(sessions=SimpleNamespace(where=SimpleNamespace(audit_log=log)))


def _scope(**state: Any) -> dict[str, Any]:
    return {"dockyard": {"request_id": "f" * 32, **state}}


def test_a_long_path_is_cut_and_the_status_and_request_id_stay(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    detail = "GET /" + "a" * 2_000_000 + " 404"
    asyncio.run(
        audit_request(_context(log), _scope(), ok=False, detail=detail, started=time.monotonic())
    )
    (line,) = log.read_text().splitlines()
    written = json.loads(line)["detail"]
    assert written.startswith("GET /aaa")
    assert written.endswith(f" 404 request {'f' * 32}")
    assert len(written) == audit.DETAIL_MAX + len(f" request {'f' * 32}")


def test_a_line_that_cannot_be_encoded_is_logged_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log = tmp_path / "audit.jsonl"
    context = _context(log)

    async def both() -> None:
        started = time.monotonic()
        await asyncio.gather(
            audit_request(
                context, _scope(actor=object()), ok=True, detail="GET /", started=started
            ),
            audit_request(
                context, _scope(actor="key:k"), ok=True, detail="GET /x", started=started
            ),
        )

    with caplog.at_level(logging.ERROR, logger="dockyard.api"):
        asyncio.run(both())  # the first one's TypeError does not escape
    assert "could not be written" in caplog.text
    assert "TypeError" in caplog.text
    assert [json.loads(line)["actor"] for line in log.read_text().splitlines()] == ["key:k"]
