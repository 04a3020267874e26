"""The host view (admin keys only): each host's engine, quota use against its caps, the
images in use, and the health report's last run."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from ...sessions import host_view
from ..context import Context
from .login import viewer_of
from .pages import ctx_of, page, to_login

router = APIRouter(include_in_schema=False)


def _hosts(ctx: Context) -> dict[str, Any]:
    """Each host's engine, quota use against its caps and images in use, and the health
    report's last run (:mod:`dockyard.sessions.host_view`)."""
    return {
        "hosts": host_view.host_views(ctx.sessions),
        "health": host_view.health_report(),
    }


@router.get("/host")
async def host_page(request: Request) -> Response:
    """Admin keys only: a host's use and caps span every tenant (a tenant's key gets the
    page of an address that does not exist)."""
    viewer = await viewer_of(request)
    if viewer is None:
        return to_login()
    if not viewer.principal.admin:
        return page(
            request,
            "error.html",
            404,
            viewer,
            title="Not found",
            problems=["no such page: /host"],
        )
    ctx = ctx_of(request)
    return page(request, "host.html", viewer=viewer, **await ctx.call(_hosts, ctx))
