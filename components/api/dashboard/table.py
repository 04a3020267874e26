"""The sessions table: its rows from the service layer (with each container's state on
its engine), filtered and sorted from the query string; the page and the rows alone."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import Response

from ...sessions.status import engine_states
from ..context import Context
from .bars import bar
from .history import history_of
from .live import stream_of
from .login import viewer_of
from .pages import SECURITY_HEADERS, Viewer, ctx_of, page, port_host, to_login

router = APIRouter(include_in_schema=False)

SORTS = ("session", "tenant", "status", "backend", "age")


def _age(created: str, now: datetime) -> tuple[str, float]:
    try:
        seconds = (now - datetime.fromisoformat(created.replace("Z", "+00:00"))).total_seconds()
    except ValueError:
        return "?", 0.0
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{int(seconds)} s", seconds
    if seconds < 7200:
        return f"{int(seconds // 60)} min", seconds
    if seconds < 172800:
        return f"{int(seconds // 3600)} h", seconds
    return f"{int(seconds // 86400)} d", seconds


def _rows(ctx: Context, scope: str | None) -> list[dict[str, Any]]:
    """The table's rows from the service layer (the calls GET /api/sessions makes), with
    each container's state on its engine (one list call per engine host)."""
    records = {r.stack_name: r for r in ctx.sessions.registry.all(scope)}
    now = datetime.now(UTC)
    engines: dict[str, dict[str, dict[str, Any]] | None] = {}
    rows = []
    # mypy reads Sessions.list's `list[...]` as the method itself (sessions' own report).
    for row in ctx.sessions.list(scope):  # type: ignore[attr-defined]
        record = records.get(row["stack"])
        asked = record.request if record else {}
        if row["host"] not in engines:
            engines[row["host"]] = engine_states(row["host"])
        listed = engines[row["host"]]
        if listed is None:
            state = {"status": "unknown", "health": None}
        elif "container" not in row:  # its manifest cannot be read
            state = {"status": "missing", "health": None}
        else:
            state = listed.get(row["container"], {"status": "missing", "health": None})
        age, seconds = _age(row["createdAt"], now)
        rows.append(
            {
                "session": row["sessionId"],
                "tenant": row["tenant"],
                "host": row["host"],
                "status": state["status"] or "unknown",
                "health": state["health"] or "",
                "backend": asked.get("backend") or "",
                "variant": asked.get("variant") or asked.get("profile") or "default",
                "age": age,
                "seconds": seconds,
                "ports": row.get("ports") or [],
            }
        )
    return rows


def _sorted(rows: list[dict[str, Any]], sort: str, descending: bool) -> list[dict[str, Any]]:
    key = {
        "session": lambda r: r["session"],
        "tenant": lambda r: (r["tenant"] or "", r["session"]),
        "status": lambda r: (r["status"], r["health"], r["session"]),
        "backend": lambda r: (r["backend"], r["session"]),
        "age": lambda r: (r["seconds"], r["session"]),
    }[sort]
    return sorted(rows, key=key, reverse=descending)


def _view(request: Request, viewer: Viewer) -> dict[str, Any]:
    """The table's filter and sort from the query string (unknown values: the default)."""
    q = request.query_params
    sort = q.get("sort", "session")
    return {
        "q": q.get("q", "").strip()[:100],
        "status": q.get("status", "").strip()[:32],
        "tenant": (q.get("tenant", "").strip()[:32] or None) if viewer.principal.admin else None,
        "sort": sort if sort in SORTS else "session",
        "order": "desc" if q.get("order") == "desc" else "asc",
    }


async def _table(request: Request, viewer: Viewer) -> dict[str, Any]:
    view = _view(request, viewer)
    ctx = ctx_of(request)
    rows = await ctx.call(_rows, ctx, viewer.principal.scope(view["tenant"]))
    everything = len(rows)
    if view["q"]:
        rows = [r for r in rows if view["q"].lower() in r["session"].lower()]
    if view["status"]:
        rows = [r for r in rows if view["status"] in (r["status"], r["health"])]
    rows = _sorted(rows, view["sort"], view["order"] == "desc")
    history = history_of(request)
    for row in rows:
        row["host_name"] = port_host(row["host"], request)
        sample = history.latest(row["tenant"], row["session"])
        row["memory_bar"] = bar(sample.memory_used, sample.memory_limit) if sample else None
        row["disk_bar"] = bar(sample.disk_used, sample.disk_total) if sample else None
        row["link"] = f"/sessions/{row['session']}" + (
            "?" + urlencode({"tenant": row["tenant"]})
            if viewer.principal.admin and row["tenant"]
            else ""
        )
    query = {k: v for k, v in view.items() if v}
    return {
        "rows": rows,
        "view": view,
        "everything": everything,
        "query": urlencode(query),
        "sort_link": lambda name: (
            "?"
            + urlencode(
                {
                    **query,
                    "sort": name,
                    "order": "desc" if view["sort"] == name and view["order"] == "asc" else "asc",
                }
            )
        ),
        "updated": datetime.now(UTC).strftime("%H:%M:%S UTC"),
    }


@router.get("/")
async def sessions_page(request: Request) -> Response:
    viewer = await viewer_of(request)
    if viewer is None:
        return to_login()
    table = await _table(request, viewer)
    return page(
        request,
        "sessions.html",
        viewer=viewer,
        request_destroyed=request.query_params.get("destroyed", "")[:63],
        **table,
        **await stream_of(request, {"tenant": table["view"]["tenant"]}),
    )


@router.get("/rows")
async def rows_fragment(request: Request) -> Response:
    """The table's body alone (the page's script reads it again when an event arrives)."""
    viewer = await viewer_of(request)
    if viewer is None:
        return Response(status_code=401, headers=SECURITY_HEADERS)
    return page(request, "rows.html", viewer=viewer, **await _table(request, viewer))
