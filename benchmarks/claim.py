"""What a warm-pool claim costs (issue 29 item 1), against baselines in the same run.

**The product's claim**: ``dockyard.sessions.e2b.create`` (what ``POST /sandboxes`` runs)
taking a member of a tenant's pool that :func:`dockyard.sessions.warm.refill` made ahead
with the harness driver, to usable — the sandbox returned, its access token a readable
secret in the container and tmux answering as the agent. Beside it, the two ways a claim
could bind a ready member to a session that names its own id (docs/instant-sessions.md
#warm-pools: not built), on containers of the core image started the way an environment
starts (entrypoint, tmux, ready marker), each on a network of its own:

- **in place**: the member keeps running. One ``exec`` as root streams the session's
  secrets (a tar on stdin) into a tmpfs the member has for them (0400, the agent's), the
  container is renamed, and one ``exec`` as the agent checks the files and tmux: the
  session is usable. (The engine's archive API, ``docker cp``/``put_archive``, cannot be
  used: into a running container's tmpfs it writes below the mount, onto the engine's
  disk, and the file is not visible inside; measured here, see :func:`_cp_into_tmpfs`.)
- **recreate**: network and volumes were made ahead; the claim creates and starts a new
  container with the session's name, labels and secrets (uploaded before start, as the
  program does) and waits for its ready marker.

Baselines: a bare ``docker run --rm <image> true`` and a cold ``create()`` of a session
through :class:`dockyard.sessions.Sessions` with the harness driver, to its ready marker.
Targets (issue 29): a claim to a usable session p50 <= 150 ms, p95 <= 300 ms, and <= 0.6x
the bare run.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import socket
import sys
import tarfile
import time
from collections.abc import Callable
from typing import Any

from benchmarks.common import (
    RUNS,
    engine,
    percentiles,
    session_home,
    stat_row,
    summary,
    table,
    timed,
    verdict,
    wait_ready,
    write_result,
)

P50_BUDGET_S = 0.15
P95_BUDGET_S = 0.30
BARE_RATIO_BUDGET = 0.6
COLD_RUNS = int(os.environ.get("DOCKYARD_BENCH_COLD_RUNS", "3"))
CLAIM_DIR = "/run/dockyard-claim"
AGENT = "1000"
SECRETS = ("ANTHROPIC_API_KEY", "GITHUB_TOKEN")


def _tar(values: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, value in values.items():
            data = value.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.uid, info.gid = len(data), 0o400, 1000, 1000
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _exec_stdin(client: Any, container: str, command: list[str], data: bytes) -> int:
    """Run ``command`` as root in ``container`` with ``data`` on its stdin; its exit code.
    (The values travel on the stream, never in the command the engine records.)"""
    created = client.api.exec_create(container, command, stdin=True, user="0")
    stream = client.api.exec_start(created["Id"], socket=True)
    raw = getattr(stream, "_sock", stream)
    try:
        raw.sendall(data)
        raw.shutdown(socket.SHUT_WR)
        while raw.recv(4096):
            pass
    finally:
        raw.close()
    for _ in range(200):
        state = client.api.exec_inspect(created["Id"])
        if not state["Running"]:
            return int(state["ExitCode"])
        time.sleep(0.005)
    raise SystemExit(f"ERROR: the secrets exec in {container} did not end")


def _cp_into_tmpfs(client: Any, member: Any) -> bool:
    """True when the engine's archive API puts a file into a running container's tmpfs
    so that the container sees it (on engine 20.10 it does not)."""
    member.put_archive(CLAIM_DIR, _tar({"PROBE": "x"}))
    return member.exec_run(["test", "-f", f"{CLAIM_DIR}/PROBE"]).exit_code == 0


def main() -> int:
    from dockyard.sessions import Sessions, e2b, warm
    from dockyard.sessions.settings import paths
    from tests.harness.sessions import HarnessDriver
    from tests.support.harness_home import clear_tenant
    from tests.support.images import build_image

    client = engine()
    image = build_image(client, "dockyard-core")
    tag = f"bclaim{int(time.time()) % 100000}"
    labels = {"dockyard.stack": tag}
    results: dict[str, list[float]] = {}
    serial = iter(range(10_000))

    def sample(key: str, fn: Callable[[], Any]) -> None:
        results.setdefault(key, []).append(timed(fn))

    def network() -> str:
        name = f"{tag}-net-{next(serial)}"
        client.networks.create(name, driver="bridge", labels=labels)
        return name

    def member() -> Any:
        """A ready member: the core image's entrypoint on a network of its own, a tmpfs
        for the claim's secrets."""
        started = client.containers.run(
            image,
            detach=True,
            name=f"{tag}-member-{next(serial)}",
            network=network(),
            labels=labels,
            tmpfs={CLAIM_DIR: f"mode=0700,uid={AGENT},gid={AGENT}"},
        )
        wait_ready(started)
        return started

    with session_home("dockyard-bench-claim-", image) as (_base, state, project, settings):
        where = paths({"DOCKYARD_STATE_DIR": str(state), "DOCKYARD_CONFIG": str(settings)})
        sessions = Sessions(where, HarnessDriver(where))
        try:
            client.containers.run(image, entrypoint=["true"], remove=True)  # warm-up
            cp_works = _cp_into_tmpfs(client, member())
            for run in range(RUNS * 2):
                values = {name: secrets.token_hex(16) for name in SECRETS}
                ready = member()

                def in_place(ready: Any = ready, values: dict[str, str] = values) -> None:
                    code = _exec_stdin(
                        client, ready.id, ["tar", "-x", "-p", "-C", CLAIM_DIR], _tar(values)
                    )
                    assert code == 0, code
                    ready.rename(f"{tag}-session-{next(serial)}")
                    check = ready.exec_run(
                        [
                            "sh",
                            "-c",
                            f"test -r {CLAIM_DIR}/{SECRETS[0]} && cat {CLAIM_DIR}/{SECRETS[1]} "
                            "&& tmux has-session -t main",
                        ],
                        user=AGENT,
                    )
                    assert check.exit_code == 0, check.output
                    assert check.output.decode() == values[SECRETS[1]]

                sample("claim in place, usable", in_place)
                ready.remove(force=True)

                sample(
                    "bare docker run --rm true",
                    lambda: client.containers.run(image, entrypoint=["true"], remove=True),
                )

                made = network()
                volume = client.volumes.create(f"{tag}-ws-{run}", labels=labels)

                def recreate(
                    made: str = made,
                    volume: Any = volume,
                    values: dict[str, str] = values,
                    run: int = run,
                ) -> None:
                    created = client.containers.create(
                        image,
                        name=f"{tag}-recreated-{next(serial)}",
                        network=made,
                        labels={**labels, "dockyard.session": f"s{run}"},
                        volumes={volume.name: {"bind": "/workspace", "mode": "rw"}},
                    )
                    created.put_archive("/run/secrets", _tar(values))
                    created.start()
                    wait_ready(created)

                sample("claim by recreate, ready", recreate)
            for run in range(COLD_RUNS):

                def cold(run: int = run) -> None:
                    manifest = sessions.create(
                        {"sessionId": f"c{run}", "cwd": str(project), "tenant": tag}
                    )
                    wait_ready(client.containers.get(manifest["container"]["id"]))

                sample("cold create(), ready", cold)
                sessions.destroy(f"c{run}", tag)
            # The product: members made ahead (not timed), then each create claims one.
            settings.write_text(json.dumps({"pools": [{"tenant": tag, "min": RUNS * 2}]}))
            filled = warm.refill(sessions)
            assert not filled.failed, filled.failed
            for _ in range(RUNS * 2):

                def product() -> None:
                    sandbox = e2b.create(sessions, {"templateID": "base"}, tag)
                    assert sandbox.sandboxId in filled.made, "a cold create, not a claim"
                    record = sessions.registry.find(sandbox.sandboxId, tag)
                    check = client.containers.get(record.environment_id).exec_run(
                        [
                            "sh",
                            "-c",
                            f"test -r /run/secrets/{e2b.TOKEN_SECRET} && tmux has-session -t main",
                        ],
                        user=AGENT,
                    )
                    assert check.exit_code == 0, check.output

                sample("claim (product), usable", product)
            settings.write_text(json.dumps({}))
        finally:
            clear_tenant(client, sessions, tag)

    bare = summary(results["bare docker run --rm true"])["median"]
    cold_median = summary(results["cold create(), ready"])["median"]
    claimed = results["claim (product), usable"]
    spread = percentiles(claimed)
    p50, p95 = spread["p50"], spread["p95"]
    print(
        table(
            ["figure (s)", "median", "min", "max", "x bare run"],
            [
                stat_row("bare docker run --rm true", results["bare docker run --rm true"]),
                stat_row("claim (product), usable", claimed, bare),
                stat_row("claim in place, usable", results["claim in place, usable"], bare),
                stat_row("claim by recreate, ready", results["claim by recreate, ready"], bare),
                stat_row("cold create(), ready", results["cold create(), ready"], bare),
            ],
        )
    )
    print(f"archive API into a running container's tmpfs visible inside: {cp_works}")
    print(f"product claim: p50 {p50:.3f} s, p95 {p95:.3f} s ({len(claimed)} samples)")
    print(f"budget: p50 <= {P50_BUDGET_S} s: {verdict(p50, P50_BUDGET_S)}")
    print(f"budget: p95 <= {P95_BUDGET_S} s: {verdict(p95, P95_BUDGET_S)}")
    print(
        f"budget: p50 <= {BARE_RATIO_BUDGET}x bare run: "
        f"{verdict(p50 / bare, BARE_RATIO_BUDGET)} ({p50 / bare:.2f}x)"
    )
    write_result(
        "claim",
        {
            "samples": results,
            "summary": {k: summary(v) for k, v in results.items()},
            "claim_p50": p50,
            "claim_p95": p95,
            "claim_x_bare": p50 / bare,
            "in_place_x_bare": summary(results["claim in place, usable"])["median"] / bare,
            "recreate_x_bare": summary(results["claim by recreate, ready"])["median"] / bare,
            "cold_x_bare": cold_median / bare,
            "archive_api_into_tmpfs_visible": cp_works,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
