"""Warm pools on the real engine (issue 29 item 1, issue 30 item 1): ``dockyard serve``
fills a tenant's pool in the background through the same sessions service (the harness
driver where Pulumi would run); the public ``e2b`` SDK's ``Sandbox.create``, from 22
processes at once, claims the 20 members — none twice, each claimed sandbox answers its
own token and runs a command that sees its create's environment variables, the overflow
is created cold — free members are in no
list, the pool refills, and a settings change re-rolls the free members only."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest
from e2b import Sandbox

from dockyard.api.store import default_url
from dockyard.sessions import Sessions, warm
from dockyard.sessions.settings import paths
from tests.harness.sessions import HarnessDriver
from tests.support.engine import RUN_ID, wait_for
from tests.support.harness_home import make_home, sweep_tenant
from tests.support.server import create_key, serve

pytestmark = [pytest.mark.docker, pytest.mark.slow]

MEMBERS = 20
CREATES = 22
# One SDK user per process: waits for the start file, creates, runs a command, prints.
CREATOR = """
import json, os, sys, time
from e2b import Sandbox
start = sys.argv[1]
while not os.path.exists(start):
    time.sleep(0.005)
began = time.monotonic()
sandbox = Sandbox.create("base", timeout=600, metadata={"run": "pool"}, api_key=os.environ["KEY"],
                         api_url=os.environ["URL"], sandbox_url=os.environ["URL"],
                         envs={"POOL_PROBE": "v-" + sys.argv[2]})
took = time.monotonic() - began
ran = sandbox.commands.run(
    "echo hi-$((20+22)) && id -un && ls -A /workspace | wc -l && echo $POOL_PROBE"
)
print(json.dumps([sandbox.sandbox_id, took, ran.stdout, sandbox._envd_access_token or ""]))
"""


def _free(sessions: Sessions) -> int:
    return sum(pool["free"] for pool in warm.status(sessions))


def _container_ids(client: docker.DockerClient, tenant: str) -> set[str]:
    found = client.containers.list(all=True, filters={"label": f"dockyard.tenant={tenant}"})
    return {c.labels.get("dockyard.session", "") for c in found}


@pytest.fixture
def home(tmp_path: Path, docker_client: docker.DockerClient, core_image: str) -> Iterator[Any]:
    tenant, other = f"p{RUN_ID[:8]}", f"q{RUN_ID[:8]}"
    settings = {"pools": [{"tenant": tenant, "min": MEMBERS}]}
    made = make_home(tmp_path, core_image, settings)
    try:
        yield made, tenant, other
    finally:
        for who in (tenant, other):
            sweep_tenant(docker_client, who)


def test_sdk_creates_claim_members_refill_and_reroll(
    home: Any, tmp_path: Path, docker_client: docker.DockerClient
) -> None:
    made, tenant, other = home
    store = default_url(made.state)
    env = {
        **made.env(),
        "DOCKYARD_E2B_REAP_INTERVAL_S": "0.5",
        "DOCKYARD_POOL_REFILL_INTERVAL_S": "0.5",
    }
    keys = {who: create_key(env, store, "--tenant", who)["key"] for who in (tenant, other)}
    where = paths({"DOCKYARD_STATE_DIR": str(made.state), "DOCKYARD_CONFIG": str(made.settings)})
    sessions = Sessions(where, HarnessDriver(where))
    with serve(env, store, tmp_path / "server.log") as serving:
        wait_for(lambda: _free(sessions) == MEMBERS, timeout=240, interval=0.5)
        members = {m.member for m in warm.store(sessions).members()}
        assert members <= _container_ids(docker_client, tenant)  # real, running environments
        # A member stopped behind the pool's back (the idle monitor) is replaced.
        victim = sorted(members)[0]
        (stopped,) = docker_client.containers.list(filters={"label": f"dockyard.session={victim}"})
        stopped.stop(timeout=1)
        wait_for(
            lambda: (
                victim not in {m.member for m in warm.store(sessions).members()}
                and _free(sessions) == MEMBERS
            ),
            timeout=120,
            interval=0.5,
        )
        assert victim not in _container_ids(docker_client, tenant)
        members = {m.member for m in warm.store(sessions).members()}
        # Free members are nobody's session: not in the tenant's lists.
        listed = httpx.get(
            f"{serving.url}/api/sessions",
            headers={"Authorization": f"Bearer {keys[tenant]}"},
            timeout=30,
            trust_env=False,
        ).json()["items"]
        assert listed == []
        opts = {"api_key": keys[tenant], "api_url": serving.url, "sandbox_url": serving.url}
        assert Sandbox.list(**opts).next_items() == []

        start = tmp_path / "start"
        creators = [
            subprocess.Popen(
                [sys.executable, "-c", CREATOR, str(start), str(index)],
                env={**env, "KEY": keys[tenant], "URL": serving.url},
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for index in range(CREATES)
        ]
        start.touch()
        got = []
        for creator in creators:
            out, err = creator.communicate(timeout=300)
            assert creator.returncode == 0, err[-2000:]
            got.append(json.loads(out.strip().splitlines()[-1]))
        ids = [sandbox_id for sandbox_id, *_ in got]
        assert len(set(ids)) == CREATES
        claimed = [i for i in ids if i in members]
        assert len(claimed) == MEMBERS, (ids, members)  # each member once, the rest cold
        # Each runs as the agent, in a workspace nobody wrote before this session, with the
        # environment variables of its own create (a claim delivers them as secret files).
        outs = sorted(out.split() for _, _, out, _ in got)
        assert outs == sorted(["hi-42", "agent", "0", f"v-{i}"] for i in range(CREATES)), got
        tokens = [token for *_, token in got]
        assert len(set(tokens)) == CREATES
        assert all(len(t) >= 16 for t in tokens)
        # Claimed sandboxes carry the create's metadata like cold ones.
        infos = {s.sandbox_id: s for s in Sandbox.list(**opts).next_items()}
        assert set(infos) == set(ids)
        assert all(infos[i].metadata == {"run": "pool"} for i in claimed)
        # Another tenant has no pool: its create is cold and sees none of these.
        theirs = Sandbox.create(
            "base", api_key=keys[other], api_url=serving.url, sandbox_url=serving.url
        )
        assert theirs.sandbox_id not in members
        (seen,) = Sandbox.list(api_key=keys[other], api_url=serving.url).next_items()
        assert seen.sandbox_id == theirs.sandbox_id
        # A smaller floor from now on: the pool refills to it with new members.
        made.settings.write_text(
            json.dumps({"pools": [{"tenant": tenant, "min": 2}]}), encoding="utf-8"
        )
        wait_for(lambda: _free(sessions) == 2, timeout=240, interval=0.5)
        refilled = {m.member for m in warm.store(sessions).members()}
        assert len(refilled) == 2
        assert not refilled & members
        # Changed settings re-roll the free members only: the claimed sandboxes run on.
        made.settings.write_text(
            json.dumps({"pools": [{"tenant": tenant, "min": 1, "max": 3}]}), encoding="utf-8"
        )
        wait_for(
            lambda: (
                not {m.member for m in warm.store(sessions).members()} & refilled
                and _free(sessions) == 1
            ),
            timeout=240,
            interval=0.5,
        )
        running = _container_ids(docker_client, tenant)
        assert not running & refilled
        assert set(ids) <= running
        for sandbox_id in ids:
            assert Sandbox.kill(sandbox_id, **opts)
        Sandbox.kill(theirs.sandbox_id, api_key=keys[other], api_url=serving.url)
        # No pool: its members go; nothing of the tenant is left on the engine.
        made.settings.write_text(json.dumps({"pools": []}), encoding="utf-8")
        wait_for(lambda: not _container_ids(docker_client, tenant), timeout=240, interval=0.5)
    claims = sorted(round(took, 3) for sandbox_id, took, *_ in got if sandbox_id in members)
    cold = sorted(round(took, 3) for sandbox_id, took, *_ in got if sandbox_id not in members)
    print(f"claimed creates {claims} s; cold creates {cold} s")
