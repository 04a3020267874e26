"""The data plane's routes in one router (issue 27 item 1): exec, files, stats, logs,
ports (:mod:`.exec`, :mod:`.files`, :mod:`.stats`)."""

from __future__ import annotations

from fastapi import APIRouter

from . import exec as exec_routes
from . import files, stats

router = APIRouter()
router.include_router(exec_routes.router)
router.include_router(files.router)
router.include_router(stats.router)
