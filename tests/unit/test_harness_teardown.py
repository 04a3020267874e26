"""The harness tears a stack down as `pulumi destroy` does: dependents first, everything
else at the same time. Checked on recorded undo calls, without an engine."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from tests.harness.docker_mocks import (
    DependencyIndex,
    DockerRealisingMocks,
    HarnessError,
    HarnessState,
    Realised,
    dependencies,
)

NETWORK = "docker:index/network:Network"
VOLUME = "docker:index/volume:Volume"
CONTAINER = "docker:index/container:Container"
COMMAND = "command:local:Command"


class FakeClient:
    def version(self) -> dict[str, str]:
        return {"ApiVersion": "1.41"}


class Recorder:
    """Undo callbacks that log start/end and how many ran at once."""

    def __init__(self, seconds: float = 0.05) -> None:
        self.seconds = seconds
        self.events: list[tuple[str, str]] = []
        self.running = 0
        self.most = 0
        self.lock = threading.Lock()

    def undo(self, name: str, fail: bool = False) -> Any:
        def run() -> None:
            with self.lock:
                self.events.append(("start", name))
                self.running += 1
                self.most = max(self.most, self.running)
            time.sleep(self.seconds)
            with self.lock:
                self.running -= 1
                self.events.append(("end", name))
            if fail:
                raise RuntimeError(f"{name} refused")

        return run

    def finished_before_started(self, first: str, then: str) -> bool:
        return self.events.index(("end", first)) < self.events.index(("start", then))


def environment(state: HarnessState, recorder: Recorder, n: int, fail: str = "") -> None:
    """One environment's resources, in the order the program registers them."""
    prefix = f"dockyard-st-s{n}"
    container_id = f"{n:064x}"
    resources = [
        Realised(NETWORK, f"env-{n}-net", {"name": prefix}, f"{n + 100:064x}", {"name": prefix}),
        *(
            Realised(
                VOLUME,
                f"env-{n}-{role}",
                {"name": f"{prefix}-{role}"},
                f"{prefix}-{role}",
                {"name": f"{prefix}-{role}"},
            )
            for role in ("workspace", "config")
        ),
        Realised(
            CONTAINER,
            f"env-{n}-container",
            {
                "name": prefix,
                "networksAdvanced": [{"name": prefix}],
                "volumes": [
                    {"containerPath": f"/{role}", "volumeName": f"{prefix}-{role}"}
                    for role in ("workspace", "config")
                ],
            },
            container_id,
            {"name": prefix},
        ),
        Realised(
            COMMAND,
            f"env-{n}-manifest",
            {"environment": {"DOCKYARD_MANIFEST": f'{{"container": {{"id": "{container_id}"}}}}'}},
            f"env-{n}-manifest-0001",
            {},
        ),
    ]
    for resource in resources:
        resource.undo = recorder.undo(resource.name, fail=resource.name == fail)
        state.resources[resource.name] = resource


def test_dependencies_are_what_flowed_into_the_inputs() -> None:
    state, recorder = HarnessState(), Recorder()
    environment(state, recorder, 1)
    environment(state, recorder, 2)
    everything = list(state.resources.values())
    named = {r.name: r for r in everything}
    assert {d.name for d in dependencies(named["env-1-container"], everything)} == {
        "env-1-net",
        "env-1-workspace",
        "env-1-config",
    }
    assert [d.name for d in dependencies(named["env-2-manifest"], everything)] == [
        "env-2-container"
    ]
    assert dependencies(named["env-1-net"], everything) == []
    # A command that names a volume (as a restore into the workspace does) uses it.
    restore = Realised(
        COMMAND, "env-1-restore", {"environment": {"VOLUME": "dockyard-st-s1-workspace"}}, "r", {}
    )
    assert [d.name for d in dependencies(restore, everything)] == ["env-1-workspace"]


def test_destroy_goes_dependents_first_and_the_rest_at_once() -> None:
    state, recorder = HarnessState(), Recorder()
    for n in range(1, 5):
        environment(state, recorder, n)
    mocks = DockerRealisingMocks(FakeClient(), state)  # type: ignore[arg-type]
    mocks.destroy()
    assert state.resources == {}
    for n in range(1, 5):
        assert recorder.finished_before_started(f"env-{n}-manifest", f"env-{n}-container")
        for used in ("net", "workspace", "config"):
            assert recorder.finished_before_started(f"env-{n}-container", f"env-{n}-{used}")
    # Independent undo calls overlap: the four manifests, then the four containers, then
    # the twelve networks and volumes (up to the pool's size) each went at once.
    assert recorder.most >= 4, recorder.most


def test_destroy_keeps_going_after_a_failure_and_reports_it() -> None:
    state, recorder = HarnessState(), Recorder(seconds=0.01)
    environment(state, recorder, 1, fail="env-1-container")
    environment(state, recorder, 2)
    everything = set(state.resources)
    mocks = DockerRealisingMocks(FakeClient(), state)  # type: ignore[arg-type]
    with pytest.raises(HarnessError, match="env-1-container: env-1-container refused"):
        mocks.destroy()
    # Every resource was attempted, what the failed one uses included.
    assert {name for kind, name in recorder.events if kind == "end"} == everything
    # What failed stays in the state (a later sweep finds it); the rest is gone.
    assert list(state.resources) == ["env-1-container"]


def test_serial_destroy_is_still_available() -> None:
    state, recorder = HarnessState(), Recorder(seconds=0.005)
    environment(state, recorder, 1)
    DockerRealisingMocks(FakeClient(), state).destroy(parallel=1)  # type: ignore[arg-type]
    assert recorder.most == 1
    assert state.resources == {}


def with_mounts(state: HarnessState, recorder: Recorder, n: int) -> None:
    """:func:`environment` plus what dockyard.storage declares around it: a command
    mounting the volumes, registered before the container (the program's depends_on),
    naming them as values of its own, its delete unmounting them."""
    prefix = f"dockyard-st-s{n}"
    environment(state, recorder, n)
    mount = Realised(
        COMMAND,
        f"env-{n}-disk-mounts",
        {
            "create": "mount ...",
            "delete": "unmount ...",
            "environment": {
                f"DOCKYARD_VOLUME_{i}": f"{prefix}-{role}"
                for i, role in enumerate(("workspace", "config"))
            },
        },
        f"env-{n}-disk-mounts-0001",
        {},
    )
    mount.undo = recorder.undo(mount.name)
    # Registered after the volumes, before the container: re-insert in that order.
    resources = list(state.resources.values())
    at = next(i for i, r in enumerate(resources) if r.name == f"env-{n}-container")
    resources.insert(at, mount)
    state.resources.clear()
    state.resources.update({r.name: r for r in resources})


def test_a_container_goes_before_the_command_that_prepared_its_volumes() -> None:
    state, recorder = HarnessState(), Recorder(seconds=0.01)
    for n in (1, 2):
        with_mounts(state, recorder, n)
    # A command registered after the container that names its volume (a backup, say)
    # used the volume, not the container's preparation: no such edge for it.
    later = Realised(
        COMMAND, "env-1-backup", {"environment": {"V": "dockyard-st-s1-workspace"}}, "b", {}
    )
    later.undo = recorder.undo(later.name)
    state.resources[later.name] = later
    everything = list(state.resources.values())
    named = {r.name: r for r in everything}
    uses = [d.name for d in dependencies(named["env-1-container"], everything)]
    assert uses[0] == "env-1-disk-mounts", uses
    assert not {"env-1-backup", "env-2-disk-mounts"} & set(uses), uses
    DockerRealisingMocks(FakeClient(), state).destroy()  # type: ignore[arg-type]
    assert state.resources == {}
    for n in (1, 2):
        # Unmounted only once the container is gone; the volumes only once unmounted.
        assert recorder.finished_before_started(f"env-{n}-container", f"env-{n}-disk-mounts")
        assert recorder.finished_before_started(f"env-{n}-disk-mounts", f"env-{n}-workspace")


def test_networks_never_hold_every_engine_slot() -> None:
    """The engine removes networks one at a time: with more networks ready than the
    pool holds, at most a third of its slots wait on network removals, and volumes
    (ready at the same time) go meanwhile instead of after all the networks."""
    state = HarnessState()
    log: list[tuple[str, str]] = []
    lock = threading.Lock()
    in_flight = {"networks": 0, "most": 0}

    def network_undo(name: str) -> Any:
        def run() -> None:
            with lock:
                in_flight["networks"] += 1
                in_flight["most"] = max(in_flight["most"], in_flight["networks"])
                log.append(("start", name))
            time.sleep(0.05)
            with lock:
                in_flight["networks"] -= 1
                log.append(("end", name))

        return run

    # Volumes registered first: the newest-first order offers the networks first.
    for n in range(12):
        volume = Realised(VOLUME, f"vol-{n}", {"name": f"v{n}"}, f"v{n}", {"name": f"v{n}"})
        volume.undo = lambda name=volume.name: log.append(("volume", name))  # type: ignore[misc]
        state.resources[volume.name] = volume
    for n in range(12):
        net = Realised(NETWORK, f"net-{n}", {"name": f"n{n}"}, f"{n + 100:064x}", {"name": f"n{n}"})
        net.undo = network_undo(net.name)
        state.resources[net.name] = net
    DockerRealisingMocks(FakeClient(), state).destroy(parallel=9)  # type: ignore[arg-type]
    assert state.resources == {}
    assert in_flight["most"] == 3, in_flight
    last_volume = max(i for i, (kind, _) in enumerate(log) if kind == "volume")
    first_network_end = min(i for i, (kind, _) in enumerate(log) if kind == "end")
    assert last_volume < first_network_end, log


def test_dependencies_of_a_stack_are_found_through_one_index() -> None:
    """An image id (``sha256:``) and a container id inside a longer value are found
    through the index as they were by a scan of every pair."""
    state, recorder = HarnessState(), Recorder()
    environment(state, recorder, 1)
    image = Realised(
        "docker:index/image:Image", "image", {}, "sha256:" + "ab" * 32, {"imageName": "x"}
    )
    state.resources["image"] = image
    uses = Realised(
        COMMAND,
        "uses",
        {"create": f"docker run {'ab' * 32} && docker inspect {1:064x}"},
        "u",
        {},
    )
    everything = [*state.resources.values(), uses]
    index = DependencyIndex(everything)
    assert {d.name for d in dependencies(uses, everything, index)} == {"image", "env-1-container"}
