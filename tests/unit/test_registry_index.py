"""The registry's index (dockyard.sessions.registry_index) and the paged list
(dockyard.sessions.listing): a file is parsed again only when its stat key changed, a
record another process writes or removes is seen at once, and a page expands only its
own rows (issue 27: 200 concurrent GET /api/sessions)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from dockyard import manifest as manifest_contract
from dockyard.errors import InvalidInput
from dockyard.sessions import listing, registry, registry_index
from dockyard.sessions.registry import Record, Registry

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _fresh_index() -> Any:
    registry_index.forget()
    yield
    registry_index.forget()


@pytest.fixture
def trusting(monkeypatch: pytest.MonkeyPatch) -> None:
    """Files are trusted from the index at once (no racy window): what is left to notice a
    change is the stat key alone."""
    monkeypatch.setattr(registry_index, "RACY_NS", 0)


def _record(directory: Path, session: str, tenant: str | None = "acme", **fields: Any) -> Record:
    manifest = directory.parent / "manifests" / f"{session}.json"
    record = Record(
        session_id=session,
        tenant=tenant,
        stack_name=f"{tenant}.{session}",
        cwd="/srv/app",
        manifest_path=str(manifest),
        host="local",
        request={"sessionId": session, "cwd": "/srv/app", **fields},
        created_at="2026-12-07T00:00:00.000Z",
    )
    Registry(directory).save(record)
    return record


def _manifest(record: Record, name: str | None = None, port: int = 40000) -> None:
    written = manifest_contract.build(
        environment_id=f"dockyard-{record.session_id}",
        session_id=record.session_id,
        backend="claude",
        created_at="2026-12-07T00:00:00Z",
        cwd=record.cwd,
        image="dockyard-core:test",
        container_id="c" * 64,
        container_name=name or f"dockyard-{record.session_id}",
        ports=[{"internal": 3000, "external": port}],
        requested_ports=[3000],
        requested_volumes=[],
        requested_env=[],
    )
    Path(record.manifest_path).parent.mkdir(parents=True, exist_ok=True)
    manifest_contract.write(record.manifest_path, written)


@dataclass
class Counted:
    calls: list[str]


@pytest.fixture
def parses(monkeypatch: pytest.MonkeyPatch) -> Counted:
    counted = Counted([])
    real = registry._parse

    def counting(data: bytes) -> Record:
        parsed = real(data)
        counted.calls.append(parsed.session_id)
        return parsed

    monkeypatch.setattr(registry, "_parse", counting)
    return counted


def _ids(directory: Path, tenant: str | None = None) -> list[str]:
    return [r.session_id for r in Registry(directory).all(tenant)]


def test_an_unchanged_record_is_not_read_again(
    tmp_path: Path, trusting: None, parses: Counted
) -> None:
    index = tmp_path / "index"
    for session in ("a", "b", "c"):
        _record(index, session)
    assert _ids(index) == ["a", "b", "c"]
    assert sorted(parses.calls) == ["a", "b", "c"]
    parses.calls.clear()
    assert _ids(index) == ["a", "b", "c"]
    assert parses.calls == []  # three stats, no read


def test_a_record_written_by_another_process_is_seen_at_once(
    tmp_path: Path, trusting: None
) -> None:
    index = tmp_path / "index"
    _record(index, "a")
    assert _ids(index) == ["a"]  # indexed in this process
    script = (
        "import sys; from pathlib import Path; "
        "from dockyard.sessions.registry import Record, Registry; "
        "d = Path(sys.argv[1]); r = Registry(d).find('a', 'acme'); "
        "Registry(d).save(r.__class__(**{**r.__dict__, 'host': 'ssh://other'})); "
        "Registry(d).save(r.__class__(**{**r.__dict__, 'session_id': 'b', 'stack_name': 'acme.b'}))"
    )
    subprocess.run([sys.executable, "-c", script, str(index)], check=True, cwd=REPO)
    found = {r.session_id: r.host for r in Registry(index).all()}
    assert found == {"a": "ssh://other", "b": "local"}


def test_a_removed_record_disappears_at_once(tmp_path: Path, trusting: None) -> None:
    index = tmp_path / "index"
    for session in ("a", "b"):
        _record(index, session)
    assert _ids(index) == ["a", "b"]
    (index / "acme.a.json").unlink()  # as another process's destroy does
    assert _ids(index) == ["b"]
    with pytest.raises(registry.SessionNotFound):
        Registry(index).find("a", "acme")


def test_a_record_rewritten_in_place_with_its_old_size_and_mtime_is_read_again(
    tmp_path: Path, trusting: None
) -> None:
    """Only the kernel sets ctime: a writer that keeps the inode, the size and sets the
    mtime back is still noticed."""
    index = tmp_path / "index"
    _record(index, "a", labels={"team": "aaaa"})
    path = index / "acme.a.json"
    before = path.stat()
    assert [r.request["labels"] for r in Registry(index).all()] == [{"team": "aaaa"}]
    time.sleep(0.05)  # past a coarse clock tick, so ctime moves
    with path.open("r+") as handle:  # same inode, same size
        handle.write(path.read_text().replace("aaaa", "bbbb"))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (
        before.st_ino,
        before.st_size,
        before.st_mtime_ns,
    )
    assert [r.request["labels"] for r in Registry(index).all()] == [{"team": "bbbb"}]


def test_a_record_changed_within_the_racy_window_is_read_again(
    tmp_path: Path, parses: Counted
) -> None:
    """With the real window, a file changed just now is not trusted from the index."""
    index = tmp_path / "index"
    _record(index, "a")
    assert _ids(index) == ["a"]
    assert _ids(index) == ["a"]
    assert parses.calls == ["a", "a"]


def test_files_that_are_not_records_are_left_out(tmp_path: Path) -> None:
    index = tmp_path / "index"
    _record(index, "a")
    (index / "broken.json").write_text("{not json")
    (index / "list.json").write_text("[]")
    (index / "unknown.json").write_text(json.dumps({"session_id": "x"}))
    (index / "notes.txt").write_text("{}")
    assert _ids(index) == ["a"]
    assert Registry(tmp_path / "missing").all() == []


def test_find_gives_a_request_of_ones_own(tmp_path: Path, trusting: None) -> None:
    index = tmp_path / "index"
    _record(index, "a", labels={"team": "web"})
    found = Registry(index).find("a", "acme")
    found.request["labels"]["team"] = "changed"
    assert Registry(index).all()[0].request["labels"] == {"team": "web"}


class FakeSessions:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    @property
    def registry(self) -> Registry:
        return Registry(self.directory)


@pytest.fixture
def expansions(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    expanded: list[str] = []
    real = listing._container

    def counting(path: str) -> tuple[str, list[dict[str, Any]]]:
        expanded.append(Path(path).stem)
        return real(path)

    monkeypatch.setattr(listing, "_container", counting)
    return expanded


def test_a_page_expands_only_its_own_rows(
    tmp_path: Path, trusting: None, expansions: list[str]
) -> None:
    index = tmp_path / "index"
    for i in range(5):
        record = _record(index, f"s{i}", labels={"team": "web" if i % 2 == 0 else "data"})
        _manifest(record, port=40000 + i)
    _record(index, "t0", tenant="other")
    sessions: Any = FakeSessions(index)
    page = listing.page(sessions, "acme", (), offset=1, limit=2)
    assert [r["sessionId"] for r in page.rows] == ["s1", "s2"]
    assert (page.total, page.next) == (5, 3)
    assert expansions == ["s1", "s2"]  # the other three manifests were not read
    assert page.rows[0]["ports"] == [{"containerPort": 3000, "hostPort": 40001}]
    assert page.rows[0]["labels"] == {"team": "data"}
    web = listing.page(sessions, "acme", ["team=web"], offset=0, limit=2)
    assert ([r["sessionId"] for r in web.rows], web.total, web.next) == (["s0", "s2"], 3, 2)
    assert listing.page(sessions, "acme", ["team"], 4, 10).next is None
    assert listing.page(sessions, None, ["nosuch"]).total == 0
    with pytest.raises(InvalidInput) as refused:
        listing.page(sessions, "acme", (), offset=-1, limit=0)
    assert refused.value.problems == [
        "offset: -1 is not allowed (allowed: an integer >= 0)",
        "limit: 0 is not allowed (allowed: an integer >= 1)",
    ]


def test_a_rewritten_manifest_is_read_again_and_an_unreadable_one_leaves_the_row_bare(
    tmp_path: Path, trusting: None, expansions: list[str]
) -> None:
    index = tmp_path / "index"
    record = _record(index, "s0")
    _manifest(record, name="dockyard-s0")
    sessions: Any = FakeSessions(index)
    assert listing.page(sessions, "acme").rows[0]["container"] == "dockyard-s0"
    assert listing.page(sessions, "acme").rows[0]["container"] == "dockyard-s0"
    assert expansions == ["s0"]  # the second page came from the cache
    _manifest(record, name="dockyard-s0", port=41234)  # written whole by rename
    assert listing.page(sessions, "acme").rows[0]["ports"][0]["hostPort"] == 41234
    Path(record.manifest_path).unlink()
    row = listing.page(sessions, "acme").rows[0]
    assert "container" not in row
    assert "ports" not in row


def test_a_fifo_or_an_oversized_file_is_left_out_unread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing in the registry or in a manifest's place can block the list or fill its
    memory: a FIFO is not waited on, a file past FILE_MAX is not read."""
    index = tmp_path / "index"
    record = _record(index, "a")
    _manifest(record)
    big = _record(index, "b", note="x" * 4000)
    os.mkfifo(index / "acme.fifo.json")
    Path(record.manifest_path).unlink()
    os.mkfifo(record.manifest_path)
    monkeypatch.setattr(registry_index, "FILE_MAX", 2000)
    done: list[list[dict[str, Any]]] = []
    sessions: Any = FakeSessions(index)
    reader = threading.Thread(target=lambda: done.append(listing.page(sessions, "acme").rows))
    reader.start()
    reader.join(5)
    blocked = reader.is_alive()
    for fifo in (index / "acme.fifo.json", Path(record.manifest_path)):
        if reader.is_alive():  # unblock it (a FIFO without a reader refuses), then fail below
            with contextlib.suppress(OSError):
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    reader.join(5)
    assert not blocked, "the list blocked on a FIFO"
    assert [r["sessionId"] for r in done[0]] == ["a"]  # b's record is over FILE_MAX
    assert "container" not in done[0][0]
    assert big.session_id not in _ids(index)
