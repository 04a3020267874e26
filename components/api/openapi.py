"""The committed OpenAPI document (components/api/openapi.json) and how it is made:

    python -m dockyard.api.openapi > components/api/openapi.json   (make openapi)

tests/api/test_openapi.py fails when the live schema drifts from the committed one.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from ..sessions import Sessions
from ..sessions.driver import Driver
from ..sessions.settings import paths
from .app import create_app
from .store import KeyStore, default_url

COMMITTED = Path(__file__).with_name("openapi.json")
REGENERATE = "make openapi"


def document() -> dict[str, Any]:
    """The live schema of the app (built on a throwaway state directory)."""
    with tempfile.TemporaryDirectory() as state:
        where = paths({"HOME": state, "DOCKYARD_STATE_DIR": state})
        store = KeyStore(default_url(Path(state)))
        try:
            engine: Driver = None  # type: ignore[assignment]  # the schema calls no driver
            return create_app(Sessions(where, engine), store).openapi()
        finally:
            store.close()


def text() -> str:
    return json.dumps(document(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    sys.stdout.write(text())
