"""A throwaway CA and a server certificate, for stand-in upstreams behind TLS."""

from __future__ import annotations

import subprocess
from pathlib import Path


def make_ca_and_server_cert(directory: Path, host: str) -> None:
    """``ca.pem`` and ``<host>``'s ``upstream.pem``/``upstream.key`` (SAN ``DNS:<host>``,
    valid one day) in ``directory``, readable by any container user."""

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
        "-days", "1", "-subj", "/CN=dockyard-test-ca")  # fmt: skip
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "upstream.key", "-out", "up.csr",
        "-subj", f"/CN={host}")  # fmt: skip
    (directory / "san.ext").write_text(f"subjectAltName=DNS:{host}\n")
    run("x509", "-req", "-in", "up.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "upstream.pem", "-days", "1", "-extfile", "san.ext")  # fmt: skip
    for name in ("ca.pem", "upstream.pem", "upstream.key"):
        (directory / name).chmod(0o644)
    directory.chmod(0o755)
