"""``dockyard keys`` and ``dockyard serve`` as a user runs them (subprocesses), and the key
store on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import inspect

from dockyard.api.commands import is_loopback
from dockyard.api.store import KeyStore, default_url

DOCKYARD = Path(sys.executable).with_name("dockyard")
REPO = Path(__file__).resolve().parents[2]


def _run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(DOCKYARD), *args],
        env={**os.environ, **env, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def test_the_store_keeps_only_a_digest_and_migrates_from_nothing(store: KeyStore) -> None:
    issued = store.create("acme")
    assert issued.key.startswith(f"dk_{issued.info.id}_")
    secret = issued.key.split("_", 2)[2]
    assert len(secret) == 43  # 256 bits, URL-safe base64
    with store.engine.connect() as connection:
        rows = connection.exec_driver_sql("SELECT * FROM api_keys").fetchall()
        version = connection.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
    # 0002: events and webhooks; 0003: dashboard logins; 0004: deliveries' last answer
    assert version == "0004"
    assert issued.key not in repr(rows)
    assert secret not in repr(rows)
    assert set(inspect(store.engine).get_table_names()) == {
        "api_keys",
        "alembic_version",
        "events",
        "event_sources",
        "webhooks",
        "webhook_deliveries",
        "dashboard_logins",
    }
    assert store.authenticate(issued.key) is not None
    assert store.authenticate(issued.key[:-1] + ("A" if issued.key[-1] != "A" else "B")) is None
    store.revoke(issued.info.id)
    assert store.authenticate(issued.key) is None


def test_keys_create_prints_the_key_once_list_never_shows_it(store_url: str) -> None:
    env = {"DOCKYARD_API_KEY_STORE": store_url}
    made = _run(env, "keys", "create", "--tenant", "acme")
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    assert key.startswith("dk_")
    assert "cannot be shown again" in made.stderr
    listed = _run(env, "keys", "list", "--json")
    rows = json.loads(listed.stdout)
    assert [(r["tenant"], r["admin"], r["revokedAt"]) for r in rows] == [("acme", False, None)]
    assert key not in listed.stdout
    assert key.split("_", 2)[2] not in listed.stdout
    revoked = _run(env, "keys", "revoke", rows[0]["id"])
    assert (revoked.returncode, revoked.stdout.strip()) == (0, f"revoked {rows[0]['id']}")
    missing = _run(env, "keys", "revoke", "000000000000", "--json")
    assert missing.returncode == 4
    assert json.loads(missing.stdout)["error"]["problems"] == ["no key '000000000000'"]
    both = _run(env, "keys", "create", "--tenant", "acme", "--admin")
    assert both.returncode == 2


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_serve_refuses_a_non_loopback_address_without_tls_and_a_key_store(
    tmp_path: Path,
) -> None:
    env = {"DOCKYARD_STATE_DIR": str(tmp_path / "state"), "HOME": str(tmp_path)}
    port = _free_port()
    result = _run(env, "serve", "--host", "0.0.0.0", "--port", str(port))
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = [line.removeprefix("ERROR: ") for line in result.stderr.splitlines()]
    assert [line.split(":")[0] for line in lines] == ["--tls-cert", "--tls-key", "--key-store"]
    assert "listening" not in result.stdout
    # Nothing listens on that port now.
    with socket.socket() as probe:
        probe.bind(("0.0.0.0", port))
    # With certificate files and a key store but no live key: still refused.
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.write_text("x")
    key.write_text("x")
    store = default_url(tmp_path / "state")
    empty = _run(
        env,
        "serve",
        "--host",
        "0.0.0.0",
        "--port",
        str(port),
        "--tls-cert",
        str(cert),
        "--tls-key",
        str(key),
        "--key-store",
        store,
    )
    assert empty.returncode == 2
    assert empty.stderr.strip() == (
        "ERROR: --key-store: holds no live key (allowed: create one with `dockyard keys create`)"
    )


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost"])
def test_loopback_needs_no_tls(host: str) -> None:
    assert is_loopback(host)
    assert not is_loopback("0.0.0.0")
    assert not is_loopback("example.org")
