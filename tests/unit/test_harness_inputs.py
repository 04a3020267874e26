"""The harness's promise (tests/harness/docker_mocks.py): an input it cannot honour never
passes silently. Every nested block's sub-keys are allowlisted and the rest refused;
what it does honour (a fixed host port, a UDP port, network aliases and addresses,
``mustRun``, a container that exits at once, a command's ``triggers``, ``--replace`` of
one URN) behaves as the providers do. Checked on a stub Docker client that records
every call, so no engine is needed."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pulumi
import pulumi_command as command
import pytest
from docker.api.client import APIClient
from pulumi.runtime.mocks import MockResourceArgs

from dockyard.sessions.settings import Paths
from tests.harness.docker_mocks import DockerRealisingMocks, HarnessError, HarnessState
from tests.harness.sessions import HarnessDriver

CONTAINER = "docker:index/container:Container"
COMMAND = "command:local:Command"
IMAGE = "docker:index/image:Image"
NETWORK = "docker:index/network:Network"
VOLUME = "docker:index/volume:Volume"
CONTAINER_ID = "c" * 64


class StubApi:
    """The low-level client calls the harness makes for a container, recorded. Host
    configs are built by docker-py's own code (no connection is made); the engine's
    answers are what a real one gives: the ports bound as asked (a random host port when
    none was asked), a running container unless ``exits`` says otherwise."""

    def __init__(self, exits: bool = False, bound_port: str | None = None) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.exits = exits
        self.bound_port = bound_port
        self._real = APIClient(base_url="unix:///nonexistent.sock", version="1.41")
        self.created: dict[str, Any] = {}

    def create_host_config(self, **kwargs: Any) -> Any:
        return self._real.create_host_config(**kwargs)

    def create_container(self, image: str, **kwargs: Any) -> dict[str, str]:
        self.calls.append(("create_container", kwargs))
        self.created = kwargs
        return {"Id": CONTAINER_ID}

    def disconnect_container_from_network(self, container: str, network: str) -> None:
        self.calls.append(("disconnect", network))

    def connect_container_to_network(self, container: str, network: str, **kwargs: Any) -> None:
        self.calls.append(("connect", (network, kwargs)))

    def put_archive(self, container: str, path: str, data: bytes) -> bool:
        self.calls.append(("put_archive", path))
        return True

    def start(self, container: str) -> None:
        self.calls.append(("start", container))

    def inspect_container(self, container: str) -> dict[str, Any]:
        bindings = self.created["host_config"].get("PortBindings") or {}
        ports = {
            key: [{"HostIp": b["HostIp"], "HostPort": self.bound_port or b["HostPort"] or "49153"}]
            for key, values in bindings.items()
            for b in values[:1]
        }
        running = not self.exits and ("start", container) in self.calls
        state: dict[str, Any] = {
            "Running": running,
            "Status": "running" if running else "exited",
            "ExitCode": 0 if running else 1,
            "Error": "",
        }
        return {
            "Name": f"/{self.created['name']}",
            "NetworkSettings": {"Ports": ports},
            "State": state,
        }

    def remove_container(self, container: str, **kwargs: Any) -> None:
        self.calls.append(("remove_container", container))


class StubClient:
    def __init__(self, api: StubApi | None = None) -> None:
        self.api = api or StubApi()

    def version(self) -> dict[str, str]:
        return {"ApiVersion": "1.41"}

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the harness touched client.{name} on a refused input")


def mocks(api: StubApi | None = None, replace: tuple[str, ...] = ()) -> DockerRealisingMocks:
    return DockerRealisingMocks(StubClient(api), HarnessState(), replace=replace)  # type: ignore[arg-type]


BASE_CONTAINER: dict[str, Any] = {
    "name": "dockyard-test-harness",
    "image": "sha256:" + "a" * 64,
    "networksAdvanced": [{"name": "net-a"}],
    "ports": [{"internal": 3000}],
    "volumes": [{"volumeName": "ws", "containerPath": "/workspace"}],
    "uploads": [{"file": "/etc/x", "content": "x"}],
    "labels": [{"label": "a", "value": "b"}],
    "ulimits": [{"name": "nofile", "soft": 1, "hard": 2}],
    "capabilities": {"drops": ["ALL"]},
    "healthcheck": {"tests": ["CMD", "true"], "interval": "5s"},
}


def container(**changes: Any) -> dict[str, Any]:
    inputs = copy.deepcopy(BASE_CONTAINER)
    inputs.update(changes)
    return inputs


def realise(
    harness: DockerRealisingMocks, inputs: dict[str, Any], typ: str = CONTAINER, name: str = "c"
) -> tuple[str, dict]:
    return harness.new_resource(MockResourceArgs(typ=typ, name=name, inputs=inputs))


def test_the_base_container_is_realised() -> None:
    # The control for every refusal below: the same inputs without the bad key pass.
    api = StubApi()
    _, outputs = realise(mocks(api), container())
    assert [name for name, _ in api.calls] == [
        "create_container",
        "disconnect",
        "connect",
        "put_archive",
        "start",
    ]
    assert outputs["ports"] == [
        {"internal": 3000, "external": 49153, "ip": "0.0.0.0", "protocol": "tcp"}
    ]


REFUSED = [
    pytest.param(
        container(ports=[{"internal": 3000, "hostIp": "1"}]),
        r"ports\[0\]: sub-keys \['hostIp'\]",
        id="ports-sub-key",
    ),
    pytest.param(
        container(ports=[{"internal": 3000, "protocol": "sctp"}]),
        r"ports\[\]\.protocol 'sctp'",
        id="sctp",
    ),
    pytest.param(
        container(networksAdvanced=[{"name": "n", "ipv6Address": "fd00::2"}]),
        r"networksAdvanced\[0\]: sub-keys \['ipv6Address'\]",
        id="ipv6Address",
    ),
    pytest.param(
        container(volumes=[{"fromContainer": "other", "containerPath": "/x"}]),
        r"volumes\[0\]: sub-keys \['fromContainer'\]",
        id="fromContainer",
    ),
    pytest.param(
        container(volumes=[{"containerPath": "/x"}]),
        "exactly one of hostPath and volumeName",
        id="anonymous-volume",
    ),
    pytest.param(
        container(volumes=[{"containerPath": "/x", "hostPath": "/h", "volumeName": "v"}]),
        "exactly one of hostPath and volumeName",
        id="both-volume-sources",
    ),
    pytest.param(container(gpus="device=0"), "gpus 'device=0' is not supported", id="gpus-device"),
    pytest.param(container(gpus="2"), "gpus '2' is not supported", id="gpus-count"),
    pytest.param(
        container(healthcheck={"tests": ["CMD", "true"], "startPeriods": "1s"}),
        r"healthcheck: sub-keys \['startPeriods'\]",
        id="healthcheck-sub-key",
    ),
    pytest.param(
        container(uploads=[{"file": "/x", "source": "/etc/passwd"}]),
        r"uploads\[0\]",
        id="upload-source",
    ),
    pytest.param(
        container(labels=[{"label": "a", "value": "b", "x": 1}]), r"labels\[0\]", id="label-sub-key"
    ),
    pytest.param(
        container(ulimits=[{"name": "nofile", "soft": 1, "hard": 2, "x": 1}]),
        "ulimits",
        id="ulimit",
    ),
    pytest.param(
        container(capabilities={"drops": ["ALL"], "add": ["NET_ADMIN"]}), "capabilities", id="caps"
    ),
    pytest.param(
        container(deviceRequests=[{"driver": "nvidia", "deviceIdz": ["0"]}]),
        "deviceRequests",
        id="device-request",
    ),
    pytest.param(container(restart="on-failure:3"), "restart 'on-failure:3'", id="restart"),
    pytest.param(container(ports=[3000]), r"ports\[0\] is int", id="not-an-object"),
]


@pytest.mark.parametrize(("inputs", "message"), REFUSED)
def test_a_container_input_the_harness_does_not_honour_is_refused(
    inputs: dict[str, Any], message: str
) -> None:
    api = StubApi()
    with pytest.raises(HarnessError, match=message) as caught:
        realise(mocks(api), inputs)
    assert CONTAINER in str(caught.value)
    assert api.calls == []  # refused before anything reached the engine


@pytest.mark.parametrize(
    ("typ", "inputs", "message"),
    [
        (IMAGE, {"imageName": "x", "build": {"context": ".", "platform": "arm64"}}, "build"),
        (NETWORK, {"name": "n", "labels": [{"label": "a", "value": "b", "extra": 1}]}, "labels"),
        (VOLUME, {"name": "v", "labels": [{"labl": "a"}]}, "labels"),
    ],
)
def test_other_types_nested_inputs_are_refused(
    typ: str, inputs: dict[str, Any], message: str
) -> None:
    with pytest.raises(HarnessError, match=message):
        realise(mocks(), inputs, typ=typ)


def test_a_fixed_host_port_and_udp_are_published_as_declared() -> None:
    api = StubApi()
    _, outputs = realise(
        mocks(api),
        container(ports=[{"internal": 53, "protocol": "udp", "external": 5353}, {"internal": 80}]),
    )
    created = api.created
    assert created["host_config"]["PortBindings"] == {
        "53/udp": [{"HostIp": "0.0.0.0", "HostPort": "5353"}],
        "80/tcp": [{"HostIp": "0.0.0.0", "HostPort": ""}],
    }
    assert created["ports"] == [(53, "udp"), (80, "tcp")]
    assert outputs["ports"] == [
        {"internal": 53, "external": 5353, "ip": "0.0.0.0", "protocol": "udp"},
        {"internal": 80, "external": 49153, "ip": "0.0.0.0", "protocol": "tcp"},
    ]


def test_a_host_port_the_engine_did_not_bind_fails_and_removes_the_container() -> None:
    api = StubApi(bound_port="40000")
    with pytest.raises(HarnessError, match="published on 40000, not on the declared 5353"):
        realise(mocks(api), container(ports=[{"internal": 53, "external": 5353}]))
    assert api.calls[-1] == ("remove_container", CONTAINER_ID)


def test_network_aliases_and_address_reach_the_engine() -> None:
    api = StubApi()
    realise(
        mocks(api),
        container(networksAdvanced=[{"name": "n", "aliases": ["db"], "ipv4Address": "10.9.0.5"}]),
    )
    assert ("connect", ("n", {"aliases": ["db"], "ipv4_address": "10.9.0.5"})) in api.calls


def test_gpus_all_is_every_gpu() -> None:
    api = StubApi()
    realise(mocks(api), container(gpus="all"))
    (request,) = api.created["host_config"]["DeviceRequests"]
    assert (request["Count"], request["Capabilities"]) == (-1, [["gpu"]])


def test_a_device_request_keeps_its_count_and_options() -> None:
    api = StubApi()
    realise(
        mocks(api),
        container(deviceRequests=[{"driver": "nvidia", "count": 2, "options": {"a": "b"}}]),
    )
    (request,) = api.created["host_config"]["DeviceRequests"]
    assert (request["Driver"], request["Count"], request["Options"]) == ("nvidia", 2, {"a": "b"})


def test_must_run_false_still_starts_the_container() -> None:
    api = StubApi()
    realise(mocks(api), container(mustRun=False))
    assert ("start", CONTAINER_ID) in api.calls


def test_a_container_that_exits_at_once_fails_the_create_and_is_removed() -> None:
    api = StubApi(exits=True)
    with pytest.raises(HarnessError, match="exited after creation"):
        realise(mocks(api), container())
    assert api.calls[-1] == ("remove_container", CONTAINER_ID)


def test_a_container_that_exits_is_accepted_when_it_need_not_run() -> None:
    api = StubApi(exits=True)
    realise(mocks(api), container(mustRun=False))
    assert ("remove_container", CONTAINER_ID) not in api.calls


def run_command(harness: DockerRealisingMocks, log: Path, value: str, triggers: list[Any]) -> None:
    realise(
        harness,
        {
            "create": f'echo "create $V" >> {log}',
            "delete": f'echo "delete $V" >> {log}',
            "environment": {"V": value},
            "triggers": triggers,
        },
        typ=COMMAND,
        name="cmd",
    )


def test_a_commands_triggers_replace_it_and_other_changes_update_it(tmp_path: Path) -> None:
    log = tmp_path / "log"
    harness = mocks()
    run_command(harness, log, "a", [1])
    run_command(harness, log, "a", [1])  # unchanged: nothing runs
    assert log.read_text().splitlines() == ["create a"]
    run_command(harness, log, "b", [1])  # an update: create again, no delete
    assert log.read_text().splitlines() == ["create a", "create b"]
    # A replace, create-before-delete: the new create, then the old resource's delete
    # with the old resource's inputs.
    run_command(harness, log, "c", [2])
    assert log.read_text().splitlines() == ["create a", "create b", "create c", "delete b"]
    harness.destroy()
    assert log.read_text().splitlines()[-1] == "delete c"


class Pair(pulumi.ComponentResource):
    """Two commands in a component, as the program nests its resources."""

    def __init__(self, log: Path) -> None:
        super().__init__("dockyard:index:Pair", "pair")
        for name in ("one", "two"):
            command.local.Command(
                f"pair-{name}",
                create=f"echo create {name} >> {log}",
                delete=f"echo delete {name} >> {log}",
                opts=pulumi.ResourceOptions(parent=self),
            )
        self.register_outputs({})


ONE = "urn:pulumi:pairs::dockyard-sessions::dockyard:index:Pair$command:local:Command::pair-one"


def test_replace_targets_only_the_named_urn_and_an_unknown_one_is_refused(tmp_path: Path) -> None:
    log = tmp_path / "log"
    driver = HarnessDriver.__new__(HarnessDriver)
    driver.client = StubClient()  # type: ignore[assignment]
    driver.where = Paths(tmp_path, None, tmp_path / "audit", "file://x", tmp_path / "pass")
    driver._run("pairs", lambda: Pair(log), {})
    assert sorted(log.read_text().splitlines()) == ["create one", "create two"]
    driver._run("pairs", lambda: Pair(log), {}, replace=frozenset({ONE}))
    assert log.read_text().splitlines()[2:] == ["create one", "delete one"]
    with pytest.raises(HarnessError, match="not resources of the program") as caught:
        driver._run("pairs", lambda: Pair(log), {}, replace=frozenset({ONE + "x"}))
    assert ONE in str(caught.value)  # the message lists what the program registered
    assert log.read_text().splitlines()[4:] == []  # nothing was replaced
    driver.destroy(type("Plan", (), {"stack_name": "pairs"})(), print)  # type: ignore[arg-type]
    assert sorted(log.read_text().splitlines()[4:]) == ["delete one", "delete two"]
