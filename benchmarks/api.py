"""The HTTP API's lifecycle and events (issue 27's `api` benchmarks; exec and files are
benchmarks/dataplane.py), each against a baseline measured in the same run.

The real server (`dockyard serve` on loopback, the harness driver realising sessions on
this engine — the Pulumi CLI cannot run here), timed from a client in this process:

- create: ``POST /api/sessions`` until its answer (the manifest) vs the Python API's
  ``Sessions.create`` in this process with the same driver and state, interleaved.
  Budget: median <= 1.1x the Python API.
- list: 200 concurrent ``GET /api/sessions`` with 100 sessions registered, by 200 clients
  with a key each (the server's default rate limits): every request on a new connection,
  and, interleaved, every client on its own kept-alive connection. The list path reads the
  registry and each session's manifest file only (no engine call), so the 100 are
  registered directly, each with a copy of a real session's manifest. Measured against
  one server process, then against ``--workers <cores>``. Budget: p95 <= 100 ms, both
  kinds; baseline: one request alone.
- events: a service-layer audit line written (``audit.recorded``, as a verb writes it)
  until its SSE event arrives on ``GET /api/events``. Budget: p95 <= 200 ms; baseline:
  the server's poll interval of the trail (``EventSettings.poll_s``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import json
import os
import shutil
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from benchmarks.common import (
    RUNS,
    api_key,
    bench_env,
    engine,
    p95,
    percentiles,
    served,
    session_home,
    stat_row,
    table,
    verdict,
    write_result,
)

CREATE_BUDGET = 1.1
LIST_P95_BUDGET_S = 0.100
EVENT_P95_BUDGET_S = 0.200
CONCURRENT = 200
REGISTERED = 100
ROUNDS = 5
EVENTS = int(os.environ.get("DOCKYARD_BENCH_EVENT_RUNS", "30"))
PARTS = ("create", "list", "events")
"""What ``DOCKYARD_BENCH_API_PARTS`` (comma-separated) may name; default all."""
WORKERS = len(os.sched_getaffinity(0))
"""``dockyard serve --workers`` of the list's second measurement: one process per core
this process may run on."""


def main() -> int:
    from dockyard.sessions import Sessions
    from dockyard.sessions.settings import paths
    from tests.harness.sessions import HarnessDriver
    from tests.support.harness_home import sweep_tenant
    from tests.support.images import build_image

    parts = [p for p in os.environ.get("DOCKYARD_BENCH_API_PARTS", ",".join(PARTS)).split(",") if p]
    if not parts or set(parts) - set(PARTS):
        raise SystemExit(f"ERROR: DOCKYARD_BENCH_API_PARTS={parts!r} (allowed: some of {PARTS})")
    results: dict[str, Any] = {}
    docker_client = engine()
    image = build_image(docker_client, "dockyard-core")
    tenant = f"bapi{int(time.time()) % 100000}"
    with session_home("dockyard-bench-api-", image) as (base, state, project, settings):
        store_url = f"sqlite:///{state / 'api' / 'api-keys.db'}"
        (state / "api").mkdir()
        env = bench_env(state, project, settings, DOCKYARD_AUDIT_LOG=str(base / "host-audit.jsonl"))
        where = paths(env)  # the server's: the same state and the same audit trail
        sessions = Sessions(where, HarnessDriver(where))
        headers = {"Authorization": f"Bearer {api_key(store_url, tenant)}"}
        # The server's default rate limits (10 requests/s per key, burst 40): the 200
        # list clients each have their own key, as 200 applications would, and send fewer
        # than 40 requests each, so none is limited while every request is still charged.
        rate: tuple[str, ...] = ()
        try:
            with (
                served(env, store_url, base / "server.log", *rate) as url,
                httpx.Client(base_url=url, timeout=600, trust_env=False) as client,
            ):
                if "create" in parts:
                    results["create"] = measure_create(
                        client, headers, sessions, tenant, str(project)
                    )
                if "list" in parts:
                    keys = client_keys(store_url, tenant)
                    register_copies(sessions, tenant, str(project))
                    results["list"] = measure_list(url, keys)
                if "events" in parts:
                    results["events"] = measure_events(url, headers, sessions, tenant)
            if "list" in parts and WORKERS > 1:
                # The same list against one server process per core (docs/api.md).
                workers = ("--workers", str(WORKERS))
                with served(env, store_url, base / "server-workers.log", *workers) as url:
                    results["list_workers"] = {**measure_list(url, keys), "workers": WORKERS}
        except Exception:
            # The server's log goes with the temporary home: its tracebacks (a 500) first.
            for log in (base / "server.log", base / "server-workers.log"):
                if log.is_file():
                    print(f"{log.name}:\n{log.read_text()[-20000:]}", file=sys.stderr)
            raise
        finally:
            for row in sessions.list(tenant):
                if Path(row["manifest"]).parent.name == "bench-copies":
                    continue  # registered only: nothing on the engine
                try:
                    sessions.destroy(row["sessionId"], tenant)
                except Exception as exc:  # keep removing the rest
                    print(f"cleanup: {row['sessionId']}: {exc}", file=sys.stderr)
            sweep_tenant(docker_client, tenant)
    report(results)
    path = write_result("api", results)
    print(f"results: {path}")
    verdicts = [results[k]["verdict"] for k in results]
    return 0 if all(v == "meets" for v in verdicts) else 1


def measure_create(
    client: httpx.Client, headers: dict[str, str], sessions: Any, tenant: str, cwd: str
) -> dict[str, Any]:
    """Interleaved creates over HTTP and through the Python API (each destroyed, untimed)."""
    http: list[float] = []
    python: list[float] = []

    def over_http(session: str) -> float:
        started = time.perf_counter()
        answer = client.post(
            "/api/sessions", headers=headers, json={"sessionId": session, "cwd": cwd}
        )
        took = time.perf_counter() - started
        if answer.status_code != 201:
            raise SystemExit(
                f"ERROR: create over HTTP answered {answer.status_code}: {answer.text}"
            )
        client.delete(f"/api/sessions/{session}", headers=headers).raise_for_status()
        return took

    def in_python(session: str) -> float:
        started = time.perf_counter()
        sessions.create({"sessionId": session, "cwd": cwd, "tenant": tenant})
        took = time.perf_counter() - started
        sessions.destroy(session, tenant)
        return took

    over_http("warm-h")
    in_python("warm-p")
    for run in range(RUNS):
        http.append(over_http(f"h{run}"))
        python.append(in_python(f"p{run}"))
    ratio = statistics.median(http) / statistics.median(python)
    return {
        "http_s": percentiles(http),
        "python_api_s": percentiles(python),
        "samples": {"http": http, "python": python},
        "ratio_median": ratio,
        "budget": CREATE_BUDGET,
        "verdict": verdict(ratio, CREATE_BUDGET),
    }


def client_keys(store_url: str, tenant: str) -> list[dict[str, str]]:
    """One key of ``tenant`` per concurrent list client (its Authorization header)."""
    from dockyard.api.store import KeyStore

    store = KeyStore(store_url)
    try:
        return [{"Authorization": f"Bearer {store.create(tenant).key}"} for _ in range(CONCURRENT)]
    finally:
        store.close()


def register_copies(sessions: Any, tenant: str, cwd: str) -> None:
    """100 sessions registered: one real, 99 copies of its record and manifest (the list
    path reads the registry and each session's manifest file only, no engine call)."""
    sessions.create({"sessionId": "real", "cwd": cwd, "tenant": tenant})
    record = sessions.registry.find("real", tenant)
    copies = Path(record.manifest_path).parent / "bench-copies"
    copies.mkdir()
    for index in range(REGISTERED - 1):
        session = f"l{index:03d}"
        manifest = copies / f"{tenant}.{session}.json"
        shutil.copyfile(record.manifest_path, manifest)
        sessions.registry.save(
            dataclasses.replace(
                record,
                session_id=session,
                stack_name=f"{tenant}.{session}",
                manifest_path=str(manifest),
                request={**record.request, "sessionId": session},
            )
        )


def measure_list(url: str, keys: list[dict[str, str]]) -> dict[str, Any]:
    """200 concurrent GETs of the list (one key per client), five rounds of each kind
    interleaved: each request on a new connection, and each client on its own kept-alive
    one; baseline: one request alone."""
    # One request at a time on a new connection, by the same client as the rounds.
    alone = [asyncio.run(_concurrent_gets(url, keys[:1]))[0][0] for _ in range(20)]
    asyncio.run(_concurrent_gets(url, keys))  # warm-up round, not counted
    concurrent: list[float] = []
    kept: list[float] = []
    cpu_new: list[float] = []
    cpu_kept: list[float] = []
    for _ in range(ROUNDS):  # the two kinds interleaved, round by round
        with _no_collection():
            took, cpu = asyncio.run(_concurrent_gets(url, keys))
        concurrent += took
        cpu_new.append(cpu)
        with _no_collection():
            took, cpu = asyncio.run(_kept_alive_gets(url, keys))
        kept += took
        cpu_kept.append(cpu)
    worst = max(p95(concurrent), p95(kept))
    return {
        "sessions": REGISTERED,
        "concurrent": CONCURRENT,
        "alone_s": percentiles(alone),
        "concurrent_s": percentiles(concurrent),
        "kept_alive_s": percentiles(kept),
        "client_cpu_s_per_round": {"new": cpu_new, "kept_alive": cpu_kept},
        "p95_x_alone_p50": p95(concurrent) / statistics.median(alone),
        "budget_p95_s": LIST_P95_BUDGET_S,
        "verdict": verdict(worst, LIST_P95_BUDGET_S),
    }


@contextlib.contextmanager
def _no_collection() -> Iterator[None]:
    """The client's garbage collector off for a round, as timeit does: a full collection
    of this process's heap (the Docker client, the harness) paused the client ~100 ms in
    the middle of a round, which was timed as the server's."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _request(url: str, headers: dict[str, str], *, close: bool) -> tuple[str, int, bytes]:
    """``GET /api/sessions?limit=500`` as HTTP/1.1 bytes, with the server's host and port."""
    parsed = httpx.URL(url)
    host, port = parsed.host, parsed.port or 80
    lines = ["GET /api/sessions?limit=500 HTTP/1.1", f"Host: {host}:{port}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    if close:
        lines.append("Connection: close")
    return host, port, ("\r\n".join(lines) + "\r\n\r\n").encode()


async def _answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, ask: bytes) -> bytes:
    """Send ``ask`` and read the whole answer (status line, Content-Length body): its body,
    once the status says 200."""
    writer.write(ask)
    head = await reader.readuntil(b"\r\n\r\n")
    status, *fields = head.decode("latin-1").split("\r\n")
    if status.split(" ")[1] != "200":
        raise SystemExit(f"ERROR: the list answered {status!r}")
    length = next(
        int(f.split(":", 1)[1]) for f in fields if f.lower().startswith("content-length:")
    )
    return await reader.readexactly(length)


def _check(pages: list[bytes]) -> None:
    """Every page has every registered session (read once the round's timing is done)."""
    for page in pages:
        if json.loads(page)["total"] != REGISTERED:
            raise SystemExit(f"ERROR: the list does not have {REGISTERED} sessions")


# Both rounds use a minimal HTTP/1.1 client (request bytes, status line, Content-Length
# body, every body's JSON read and its total checked), not httpx: with 200 requests at once
# httpx spent 0.3-0.5 s of CPU per round on new connections (~14x that on 200 kept ones)
# on the same two cores as the server, which timed the client, not the server. For the
# same reason each body's JSON is checked after the round, outside the timed window.


async def _concurrent_gets(url: str, keys: list[dict[str, str]]) -> tuple[list[float], float]:
    """200 clients at once, each on its own new connection (connect on loopback included,
    ``Connection: close``), timed from the request's start to the whole answer; and the
    client's CPU seconds for the round."""

    async def one(headers: dict[str, str]) -> tuple[float, bytes]:
        host, port, ask = _request(url, headers, close=True)
        started = time.perf_counter()
        reader, writer = await asyncio.open_connection(host, port)
        try:
            page = await _answer(reader, writer, ask)
        finally:
            writer.close()
        return time.perf_counter() - started, page

    cpu = time.process_time()
    answers = await asyncio.gather(*(one(headers) for headers in keys))
    cpu = time.process_time() - cpu
    _check([page for _, page in answers])
    return [took for took, _ in answers], cpu


async def _kept_alive_gets(url: str, keys: list[dict[str, str]]) -> tuple[list[float], float]:
    """200 clients at once, each on its own connection opened and used once before (a
    real client keeps its connection), timed from the request's first byte to the whole
    answer; and the client's CPU seconds for the round."""

    async def client(
        headers: dict[str, str],
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
        host, port, ask = _request(url, headers, close=False)
        reader, writer = await asyncio.open_connection(host, port)
        _check([await _answer(reader, writer, ask)])  # warm: the connection is open and used
        return reader, writer, ask

    async def get(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, ask: bytes
    ) -> tuple[float, bytes]:
        started = time.perf_counter()
        page = await _answer(reader, writer, ask)
        return time.perf_counter() - started, page

    connections = await asyncio.gather(*(client(headers) for headers in keys))
    cpu = time.process_time()
    answers = await asyncio.gather(*(get(*connection) for connection in connections))
    cpu = time.process_time() - cpu
    for _, writer, _ in connections:
        writer.close()
    _check([page for _, page in answers])
    return [took for took, _ in answers], cpu


def measure_events(url: str, headers: dict[str, str], sessions: Any, tenant: str) -> dict[str, Any]:
    """An audit line as the service layer writes it, until its event is read from SSE."""
    from dockyard.api.events_settings import EventSettings
    from dockyard.sessions import audit
    from tests.api.test_events_support import SseReader

    delays = []
    with SseReader(f"{url}/api/events?session=evt", headers) as reader:
        time.sleep(0.5)  # the stream is tailing the trail
        for _ in range(EVENTS):
            written = time.monotonic()
            with audit.recorded(sessions.where.audit_log, "refresh", session="evt", tenant=tenant):
                pass
            event = reader.next(10)
            if event.type != "session.refreshed":
                raise SystemExit(f"ERROR: expected session.refreshed, got {event.type}")
            delays.append(event.received - written)
            time.sleep(0.05)
    worst = p95(delays)
    return {
        "delay_s": percentiles(delays),
        "poll_s": EventSettings.poll_s,
        "budget_p95_s": EVENT_P95_BUDGET_S,
        "verdict": verdict(worst, EVENT_P95_BUDGET_S),
    }


def report(results: dict[str, Any]) -> None:
    create, listed, events = (results.get(k) for k in PARTS)
    lists = [(f"{CONCURRENT} concurrent GET /api/sessions", "one process", listed)]
    if results.get("list_workers"):
        workers = results["list_workers"]["workers"]
        lists.append(
            (f"... with --workers {workers}", f"--workers {workers}", results["list_workers"])
        )
    if create:
        python_median = create["python_api_s"]["p50"]
        print(
            table(
                ["figure (s)", "median", "min", "max", "x baseline"],
                [
                    stat_row("create, Python API (baseline)", create["samples"]["python"]),
                    stat_row("create over HTTP", create["samples"]["http"], python_median),
                ],
            )
        )
    rows = []
    if listed:
        rows.append(["GET /api/sessions alone (baseline)", *_three(listed["alone_s"])])
        for label, _, figures in lists:
            rows += [
                [label, *_three(figures["concurrent_s"])],
                ["... each on its kept-alive connection", *_three(figures["kept_alive_s"])],
            ]
    if events:
        rows.append(["audit line -> SSE event", *_three(events["delay_s"])])
    if rows:
        print(table(["figure (s)", "p50", "p95", "max"], rows))
    if create:
        print(
            f"create over HTTP: {create['ratio_median']:.2f}x the Python API (budget "
            f"{CREATE_BUDGET}x): {create['verdict']}"
        )
    for _, server, figures in lists if listed else []:
        cpu = figures["client_cpu_s_per_round"]
        print(
            f"list, {REGISTERED} sessions, {CONCURRENT} concurrent, {server}: p95 "
            f"{figures['concurrent_s']['p95'] * 1000:.0f} ms on new connections, "
            f"{figures['kept_alive_s']['p95'] * 1000:.0f} ms on kept-alive ones (budget "
            f"{LIST_P95_BUDGET_S * 1000:.0f} ms, both): {figures['verdict']}; the client's "
            f"CPU per round: {statistics.median(cpu['new']):.2f} s (new), "
            f"{statistics.median(cpu['kept_alive']):.2f} s (kept)"
        )
    if events:
        print(
            f"event delivery: p95 {events['delay_s']['p95'] * 1000:.0f} ms (poll "
            f"{events['poll_s'] * 1000:.0f} ms; budget {EVENT_P95_BUDGET_S * 1000:.0f} ms): "
            f"{events['verdict']}"
        )


def _three(values: dict[str, float]) -> list[float]:
    return [values["p50"], values["p95"], values["max"]]


if __name__ == "__main__":
    sys.exit(main())
