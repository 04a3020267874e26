"""Several Docker hosts in one stack: placement rules, and what the program declares
(one provider per host, the host in labels and in the sibling host file)."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pulumi
import pytest

from dockyard import hostfile, placement
from dockyard.capacity import EngineState, Use
from dockyard.config import parse
from tests.support.program import record

HOSTS = {"east": "unix:///run/east.sock", "west": "unix:///run/west.sock"}


def cfg(environments: list[dict[str, Any]], **top: Any) -> Any:
    raw = {"dockyard:dockerHosts": HOSTS, "dockyard:environments": environments}
    raw.update({f"dockyard:{k}": v for k, v in top.items()})
    return parse(raw, stack="team", cwd="/p")


def engines(**states: EngineState) -> Any:
    by_url = {HOSTS[name]: state for name, state in states.items()}
    return lambda url: by_url.get(url, EngineState())


def busy(
    n: int, cpus: float = 1, memory: int = 1024, sessions: tuple[tuple[str, str], ...] = ()
) -> EngineState:
    state = EngineState(use={None: Use(n, n * cpus, n * memory)})
    state.sessions.update(sessions)
    return state


def test_named_hosts_are_kept() -> None:
    config = cfg([{"sessionId": "a", "host": "west"}, {"sessionId": "b", "host": "west"}])
    assert placement.place(config, engines()) == {"a": "west", "b": "west"}


def test_new_environments_go_where_headroom_is_largest_in_stack_order() -> None:
    config = cfg(
        [{"sessionId": s, "limits": {"cpus": 1, "memory": "1g"}} for s in ("a", "b", "c")],
        quotas={"environments": 4},
    )
    placed = placement.place(config, engines(east=busy(1), west=busy(2)))
    # east 1/4 used -> a; then east 2/4 vs west 2/4: tie -> east (name order); then west.
    assert placed == {"a": "east", "b": "east", "c": "west"}


def test_a_placed_environment_never_moves() -> None:
    config = cfg([{"sessionId": "a"}], quotas={"environments": 10})
    # `a` runs on west, which is far busier: it stays there.
    placed = placement.place(config, engines(east=busy(0), west=busy(9, sessions=(("team", "a"),))))
    assert placed == {"a": "west"}


# Seven new environments, mixed tenants and sizes, on two partly busy hosts: every choice
# depends on the ones before it (headroom after them), so a host picked at random, by hash
# order or by anything but the rule matches this plan with a chance of 1 in 128.
SAME_STATE_ENVIRONMENTS = [
    {"sessionId": f"s{i}", "tenant": ("acme", "beta")[i % 2], "limits": {"cpus": 1 + i % 3}}
    for i in range(7)
]
SAME_STATE_PLAN = {
    "s0": "west",
    "s1": "east",
    "s2": "west",
    "s3": "east",
    "s4": "west",
    "s5": "east",
    "s6": "west",
}


def same_state_engines() -> Any:
    """A fresh read each call: nothing one plan counts can leak into the next."""
    return engines(east=busy(3, cpus=2), west=busy(2, cpus=2))


def test_the_same_state_gives_the_same_plan() -> None:
    config = cfg(SAME_STATE_ENVIRONMENTS, quotas={"environments": 8, "cpus": 24})
    first = placement.place(config, same_state_engines())
    second = placement.place(config, same_state_engines())
    assert first == SAME_STATE_PLAN
    assert second == SAME_STATE_PLAN


def test_placing_leaves_the_engine_states_it_read_unchanged() -> None:
    config = cfg(SAME_STATE_ENVIRONMENTS, quotas={"environments": 8, "cpus": 24})
    east, west = busy(3, cpus=2), busy(2, cpus=2)
    before = (copy.deepcopy(east), copy.deepcopy(west))
    read = engines(east=east, west=west)
    assert placement.place(config, read) == SAME_STATE_PLAN
    assert (east, west) == before
    # The same objects read again give the same plan (nothing was counted twice).
    assert placement.place(config, read) == SAME_STATE_PLAN


def test_the_plan_does_not_depend_on_the_hash_seed() -> None:
    """Set and dict orders built from strings change with PYTHONHASHSEED: each process
    places the same stack and must print the same (literal) plan."""
    script = (
        "import json, sys\n"
        "from tests.unit.test_placement import cfg, same_state_engines, SAME_STATE_ENVIRONMENTS\n"
        "from dockyard import placement\n"
        "config = cfg(SAME_STATE_ENVIRONMENTS, quotas={'environments': 8, 'cpus': 24})\n"
        "print(json.dumps(placement.place(config, same_state_engines())))\n"
    )
    root = Path(__file__).resolve().parents[2]
    plans = {}
    for seed in ("0", "1", "2", "12345"):
        done = subprocess.run(
            [sys.executable, "-c", script],
            cwd=root,
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        plans[seed] = json.loads(done.stdout)
    assert plans == dict.fromkeys(plans, SAME_STATE_PLAN)


def test_per_host_and_tenant_caps_are_respected() -> None:
    config = cfg(
        [{"sessionId": "a", "tenant": "acme"}],
        quotas={"hosts": {"east": {"environments": 1}}, "tenants": {"acme": {"environments": 1}}},
    )
    west = EngineState(use={"acme": Use(1, 4, 8192)})
    with pytest.raises(placement.PlacementError, match="no Docker host has quota headroom"):
        placement.place(config, engines(east=busy(1), west=west))


def test_memory_caps_decide_too() -> None:
    config = cfg([{"sessionId": "a", "limits": {"memory": "8g"}}], quotas={"memory": "16g"})
    assert placement.place(
        config, engines(east=busy(1, memory=10240), west=busy(1, memory=1024))
    ) == {"a": "west"}


def test_the_program_sends_each_environment_to_its_hosts_engine(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    states = {HOSTS["east"]: busy(5), HOSTS["west"]: busy(0)}
    monkeypatch.setattr(placement, "read_engine", lambda url: states[url])
    run = record(
        {
            "cwd": "/p",
            "dockerHosts": HOSTS,
            "environments": [{"sessionId": "a"}, {"sessionId": "b", "host": "east"}],
        },
        stack="team",
    )
    providers = {r.name: r.inputs["host"] for r in run.of_type("pulumi:providers:docker")}
    assert providers == {"docker-host-east": HOSTS["east"], "docker-host-west": HOSTS["west"]}
    containers = {r.name: r for r in run.of_type("docker:index/container:Container")}
    labels = {
        name: {item["label"]: item["value"] for item in c.inputs["labels"]}["dockyard.host"]
        for name, c in containers.items()
    }
    assert labels == {"env-a-container": "west", "env-b-container": "east"}
    # One image per engine: each host builds (or pulls) its own.
    assert sorted(r.name for r in run.of_type("docker:index/image:Image")) == [
        "image-core-east-build",
        "image-core-west-build",
    ]
    commands = {r.name: r.inputs for r in run.of_type("command:local:Command")}
    host_file = commands["env-a-host"]["environment"]
    assert host_file["DOCKYARD_HOSTFILE_PATH"] == "/p/.companion/cloud/environments/a.host.json"
    assert '"host": "west"' in host_file["DOCKYARD_HOSTFILE"]
    hostfile.validate(__import__("json").loads(host_file["DOCKYARD_HOSTFILE"]))


def test_no_headroom_stops_the_program_before_anything(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(placement, "read_engine", lambda url: busy(2))
    with pytest.raises(pulumi.RunError, match="no Docker host has quota headroom"):
        record(
            {
                "cwd": "/p",
                "dockerHosts": HOSTS,
                "quotas": {"environments": 2},
                "environments": [{"sessionId": "a"}],
            },
            stack="team",
        )


def test_the_host_file_refuses_what_the_schema_does(tmp_path: Any) -> None:
    good = {"version": 1, "sessionId": "a", "host": "east", "dockerHost": HOSTS["east"]}
    hostfile.write(tmp_path / "a.host.json", good)
    for bad in ({**good, "host": "East"}, {**good, "extra": 1}, {**good, "sessionId": "a\n"}):
        with pytest.raises(Exception, match=r"does not match|Additional properties"):
            hostfile.write(tmp_path / "b.host.json", bad)
    assert not (tmp_path / "b.host.json").exists()
