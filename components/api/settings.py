"""The server's settings that the CLI needs without loading the server: limits and where
the key store is by default (``dockyard --help`` must not pay for FastAPI, uvicorn,
SQLAlchemy or Alembic)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

STORE_VARIABLE = "DOCKYARD_API_KEY_STORE"
DATABASE = "api-keys.db"


def default_url(state: Path) -> str:
    """SQLite in the sessions state directory (``<state>/api/api-keys.db``)."""
    return f"sqlite:///{state / 'api' / DATABASE}"


@dataclass(frozen=True)
class Limits:
    body_bytes: int = 1024 * 1024
    """Largest request body (a request is a few kB; secrets included)."""
    rate: float = 10.0
    """Requests per second per key (token bucket refill)."""
    burst: int = 40
    """Requests a key may send at once (bucket size)."""
    workers: int = 16
    """Service calls (creates, destroys…) running at once; further ones wait their turn
    without blocking the event loop, so reads keep being answered."""
    upload_bytes: int = 1024 * 1024 * 1024
    body_timeout_s: float = 30.0
    """Longest wait for the next part of a request body (then 408: a slow client is let go)."""
    """Largest file uploaded to (or read from) a workspace (``PUT …/files``' body)."""

    def body_limit(self, method: str, path: str) -> int:
        """The body limit of one request: a file upload's, or every other's."""
        if method == "PUT" and path.startswith("/api/sessions/") and path.endswith("/files"):
            return self.upload_bytes
        return self.body_bytes
