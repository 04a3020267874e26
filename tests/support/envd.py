"""The public ``e2b`` SDK pointed straight at an environment's daemon (images/core/envd.py),
as the routing proxy would reach it: the header form of the sandbox URL, no control plane."""

from __future__ import annotations

from e2b import Sandbox
from e2b.connection_config import ConnectionConfig
from packaging.version import Version

from dockyard.sessions.e2b import ENVD_VERSION

ENVD_PORT = 49983
"""The port the daemon listens on inside an environment (the E2B envd port)."""


def envd_sandbox(url: str, token: str | None, sandbox_id: str) -> Sandbox:
    """A ``Sandbox`` whose calls go to the daemon at ``url`` as sandbox ``sandbox_id``,
    with ``token`` as its access token (None: no token header at all), and the envd
    version the control plane answers (the SDK gates features on it: what the daemon is
    tested with is what the SDKs are told)."""
    headers = {"E2b-Sandbox-Id": sandbox_id, "E2b-Sandbox-Port": str(ENVD_PORT)}
    if token is not None:
        headers["X-Access-Token"] = token
    return Sandbox(
        sandbox_id=sandbox_id,
        sandbox_domain=None,
        envd_version=Version(ENVD_VERSION),
        envd_access_token=token,
        traffic_access_token=None,
        connection_config=ConnectionConfig(
            debug=True, sandbox_url=url, extra_sandbox_headers=headers
        ),
    )
