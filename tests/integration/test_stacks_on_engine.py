"""The dev stack and a three-environment stack, realised on the real engine by the
harness: what `pulumi up` would create runs, isolated, limited, healthy, and leaves
nothing behind. The tests that replace or destroy environments deploy stacks of their
own, so every test passes alone and in any order."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path
from typing import Any

import docker
import pytest
from docker.models.containers import Container

from tests.support.engine import exec_ok, health_status, last_health_output, wait_for
from tests.support.hardening import assert_hardened
from tests.support.stacks import (
    CANARIES,
    RUNSC_NO_PIDS_LIMIT,
    Deployed,
    runs_on_gvisor,
    runsc_cannot,
    stack_values,
)

pytestmark = pytest.mark.docker

MEMORY_MB = 512
PIDS = 200


def trio_values(bind_source: Path) -> dict[str, Any]:
    return {
        "healthcheck": {"interval": "2s", "startPeriod": "5s"},
        "bindRoots": [str(bind_source)],
        "environments": [
            {
                "sessionId": "t-claude",
                "backend": "claude",
                "ports": [8000, 8001],
                "env": {"APP_MODE": "integration"},
                "secrets": ["ANTHROPIC_API_KEY", "GITHUB_TOKEN"],
                "volumes": [f"{bind_source}:/workspace/reference:ro"],
            },
            {
                "sessionId": "t-codex",
                "backend": "codex",
                "ports": [8000],
                "secrets": ["OPENAI_API_KEY"],
                "limits": {"cpus": 1, "memory": f"{MEMORY_MB}m", "pids": PIDS},
            },
            {"sessionId": "t-third", "backend": "claude"},
        ],
    }


@pytest.fixture(scope="module")
def bind_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    source = tmp_path_factory.mktemp("reference")
    (source / "README").write_text("read-only reference\n")
    return source


@pytest.fixture(scope="module")
def dev(deploy: Any) -> Deployed:
    return deploy("dev", stack_values("dev"))


@pytest.fixture(scope="module")
def trio(deploy: Any, bind_source: Path) -> Deployed:
    return deploy("trio", trio_values(bind_source), CANARIES)


def all_sessions(*stacks: Deployed) -> list[tuple[Deployed, str]]:
    return [(stack, session) for stack in stacks for session in stack.manifests]


# The two tests with stacks of their own come first: the module's dev and trio stacks
# (five environments) are made by the first test that asks for them and stay up until the
# module ends, and idle gVisor environments each keep about a quarter of a core busy
# (`make test-runsc`), which these two would otherwise wait behind.


def test_workspace_survives_container_replacement(deploy_own: Any) -> None:
    stack = deploy_own(
        "repl",
        {
            "healthcheck": {"interval": "2s", "startPeriod": "5s"},
            "environments": [{"sessionId": "r-keep"}],
        },
    )
    stack.wait_ready()
    old = stack.container("r-keep")
    exec_ok(old, ["bash", "-c", "mkdir -p notes && echo 'keep me' > notes/todo.txt"])
    old_manifest = stack.manifests["r-keep"]
    values = json.loads(json.dumps(stack.values))
    values["environments"][0]["env"] = {"FEATURE_FLAG": "on"}  # forces a new container
    time.sleep(1.1)  # so the replacement's creation time differs at millisecond precision
    stack.up(values)
    new = stack.container("r-keep")
    assert new.id != old.id
    assert exec_ok(new, ["cat", "/workspace/notes/todo.txt"]).strip() == "keep me"
    manifest = json.loads(stack.manifest_file("r-keep").read_text())
    assert manifest["container"]["id"] == new.id
    assert manifest["createdAt"] != old_manifest["createdAt"]
    assert "FEATURE_FLAG=on" in new.attrs["Config"]["Env"]
    with pytest.raises(docker.errors.NotFound):
        old.reload()


def test_destroy_leaves_nothing_behind(deploy_own: Any) -> None:
    stack = deploy_own(
        "gone",
        {
            "environments": [
                {"sessionId": "g-one", "ports": [8000], "secrets": ["GITHUB_TOKEN"]},
                {"sessionId": "g-two", "backend": "codex", "env": {"APP_MODE": "gone"}},
            ]
        },
        {"GITHUB_TOKEN": CANARIES["GITHUB_TOKEN"]},
    )
    files = [stack.manifest_file(s) for s in stack.manifests]
    assert len(files) == 2
    assert all(f.exists() for f in files), files
    assert stack.leftovers() != []
    stack.destroy()
    assert stack.leftovers() == []
    assert [f for f in files if f.exists()] == []


def test_every_container_runs_and_becomes_healthy(dev: Deployed, trio: Deployed) -> None:
    # The dev stack keeps the spec's 60 s interval; on engines older than API 1.44 the
    # first probe runs one interval after start, so allow for it, and for one more
    # interval should that first probe overrun its timeout on a loaded machine.
    for stack, session in all_sessions(trio, dev):
        container = stack.container(session)
        wait_for(
            lambda c=container: health_status(c) == "healthy",
            timeout=180,
            interval=0.5,
            what=lambda c=container: (
                f"{c.name} healthy (now {health_status(c)}: {last_health_output(c)!r})"
            ),
        )
        assert container.status == "running"


def test_each_published_port_answers_from_the_host(dev: Deployed, trio: Deployed) -> None:
    for stack, session in all_sessions(dev, trio):
        container = stack.container(session)
        for mapping in stack.manifests[session]["container"]["portMappings"]:
            port, host_port = mapping["containerPort"], mapping["hostPort"]
            container.exec_run(
                ["python3", "-c", SERVER, str(port), session], detach=True, user="1000:1000"
            )
            url = f"http://127.0.0.1:{host_port}/"
            wait_for(lambda u=url: _answers(u), timeout=60, what=f"{url} ({session}:{port})")
            assert _get(url) == f"{session}:{port}"


SERVER = """
import http.server, sys
port, session = int(sys.argv[1]), sys.argv[2]
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"{session}:{port}".encode()
        self.send_response(200); self.end_headers(); self.wfile.write(body)
    def log_message(self, *args): pass
http.server.HTTPServer(("0.0.0.0", port), Handler).serve_forever()
"""


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - loopback only
        return response.read().decode()


def _answers(url: str) -> bool:
    try:
        _get(url)
    except OSError:
        return False
    return True


def test_manifest_files_equal_what_the_engine_reports(dev: Deployed, trio: Deployed) -> None:
    for stack, session in all_sessions(dev, trio):
        on_disk = json.loads(stack.manifest_file(session).read_text())
        assert on_disk == stack.manifests[session]
        container = stack.container(session)
        assert on_disk["container"]["id"] == container.id
        assert on_disk["container"]["name"] == container.name
        engine_ports = {
            int(key.split("/")[0]): int(bindings[0]["HostPort"])
            for key, bindings in container.attrs["NetworkSettings"]["Ports"].items()
            if bindings
        }
        assert {
            m["containerPort"]: m["hostPort"] for m in on_disk["container"]["portMappings"]
        } == engine_ports
        assert on_disk["cwd"] == str(stack.cwd)
    dev_manifest = dev.manifests["dev"]
    assert dev_manifest["requested"]["ports"] == [3000, 5173]
    assert dev_manifest["backend"] == "claude"


def test_docs_example_manifest_is_what_the_dev_stack_produces(dev: Deployed) -> None:
    """docs/manifest.md shows a dev-stack manifest; only run-specific values may differ."""
    doc = (Path(__file__).resolve().parents[2] / "docs" / "manifest.md").read_text()
    example = json.loads(
        doc.split("<!-- example-manifest -->", 1)[1].split("```json", 1)[1].split("```", 1)[0]
    )
    real = dev.manifests["dev"]

    def shape(manifest: dict[str, Any]) -> dict[str, Any]:
        container = manifest["container"]
        return {
            "keys": sorted(manifest),
            "container_keys": sorted(container),
            "fixed": [manifest[k] for k in ("version", "sessionId", "backend", "requested")],
            "cwd": container["cwd"],
            "container_ports": sorted(m["containerPort"] for m in container["portMappings"]),
            "name_is_id": manifest["environmentId"] == container["name"],
            "image_repo": manifest["image"].split(":", 1)[0],
        }

    assert shape(example) == shape(real)


def test_engine_applies_limits_and_hardening(trio: Deployed, bind_source: Path) -> None:
    codex = trio.container("t-codex")
    host = codex.attrs["HostConfig"]
    assert host["Memory"] == MEMORY_MB * 1024 * 1024
    assert host["MemorySwap"] == MEMORY_MB * 1024 * 1024  # no swap on top
    assert (host["CpuPeriod"], host["CpuQuota"]) == (100_000, 100_000)
    # fsize: the largest disk bound (standard profile: the 20 GiB workspace).
    assert host["Ulimits"] == [
        {"Name": "nofile", "Soft": 1024, "Hard": 2048},
        {"Name": "fsize", "Soft": 20 * 1024**3, "Hard": 20 * 1024**3},
    ]
    for session in trio.manifests:
        container = trio.container(session)
        host, config = container.attrs["HostConfig"], container.attrs["Config"]
        assert host["CapDrop"] == ["ALL"]
        assert not host["CapAdd"]
        assert host["SecurityOpt"] == ["no-new-privileges:true"]
        assert host["Privileged"] is False
        assert host["RestartPolicy"]["Name"] == "unless-stopped"
        assert config["User"] == "1000:1000"
        assert list(container.attrs["NetworkSettings"]["Networks"]) == [
            f"dockyard-{trio.stack}-{session}"
        ]
        assert all("docker.sock" not in m["Source"] for m in container.attrs["Mounts"])
    # Measured from inside: what the agent actually gets.
    inside = exec_ok(codex, ["bash", "-c", "ulimit -Sn; ulimit -Hn; id -u"])
    assert inside.split() == ["1024", "2048", "1000"]
    assert measured_memory(codex) == MEMORY_MB * 1024 * 1024
    assert measured_cpu_quota(codex) == (100_000, 100_000)
    reference = trio.container("t-claude")
    mount = next(m for m in reference.attrs["Mounts"] if m["Destination"] == "/workspace/reference")
    assert (mount["Source"], mount["RW"]) == (str(bind_source), False)
    # As root, so only the mount's read-only flag can refuse the write.
    denied = reference.exec_run(["touch", "/workspace/reference/x"], user="root")
    assert denied.exit_code != 0
    assert b"Read-only file system" in denied.output


@runsc_cannot(RUNSC_NO_PIDS_LIMIT)
def test_engine_applies_the_pids_limit(trio: Deployed) -> None:
    for session in trio.manifests:
        host = trio.container(session).attrs["HostConfig"]
        assert host["PidsLimit"] == (PIDS if session == "t-codex" else 1000), session
    # Measured from inside: what the agent actually gets.
    inside = exec_ok(
        trio.container("t-codex"),
        [
            "bash",
            "-c",
            "cat /sys/fs/cgroup/pids/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids.max",
        ],
    )
    assert inside.strip() == str(PIDS)


MEMORY_INSIDE = """
import os
for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
    if os.path.exists(path):
        print(open(path).read().strip())
        break
else:  # gVisor: no cgroup files inside; its kernel's memory is the limit
    print(next(int(l.split()[1]) * 1024 for l in open("/proc/meminfo") if l.startswith("MemTotal:")))
"""


def measured_memory(container: Container) -> int:
    """The memory limit as the agent's processes see it (cgroup file, or gVisor's
    MemTotal)."""
    return int(exec_ok(container, ["python3", "-c", MEMORY_INSIDE]).strip())


def measured_cpu_quota(container: Container) -> tuple[int, int]:
    """(quota, period) in µs: read inside under runc; under gVisor there are no cgroup
    files inside, so from the cgroup of the sandbox's host process, which the host
    enforces (docs/isolation.md)."""
    if runs_on_gvisor(container):
        container.reload()
        pid = container.attrs["State"]["Pid"]
        for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            if controllers == "":
                cpu_max = Path("/sys/fs/cgroup") / path.lstrip("/") / "cpu.max"
                if cpu_max.exists():
                    quota, period = cpu_max.read_text().split()
                    return int(quota), int(period)
            elif "cpu" in controllers.split(","):
                directory = Path("/sys/fs/cgroup") / controllers.split(",")[0] / path.lstrip("/")
                return (
                    int((directory / "cpu.cfs_quota_us").read_text()),
                    int((directory / "cpu.cfs_period_us").read_text()),
                )
        raise AssertionError(f"{container.name}'s sandbox process {pid} is in no cpu cgroup")
    script = (
        "cat /sys/fs/cgroup/cpu.max 2>/dev/null || "
        "cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us /sys/fs/cgroup/cpu/cpu.cfs_period_us"
    )
    quota, period = exec_ok(container, ["bash", "-c", script]).split()
    return int(quota), int(period)


def test_every_environment_is_hardened(dev: Deployed, trio: Deployed) -> None:
    for stack, session in all_sessions(dev, trio):
        assert_hardened(stack.container(session), pids=PIDS if session == "t-codex" else 1000)


def test_environments_cannot_reach_each_other(trio: Deployed) -> None:
    target = trio.container("t-codex")
    target.exec_run(["python3", "-c", SERVER, "8000", "t-codex"], detach=True, user="1000:1000")
    address = next(iter(target.attrs["NetworkSettings"]["Networks"].values()))["IPAddress"]
    probe = (
        "import socket,sys\n"
        "s=socket.socket(); s.settimeout(2)\n"
        f"sys.exit(0 if s.connect_ex(('{address}', 8000)) == 0 else 3)\n"
    )
    wait_for(
        lambda: target.exec_run(["python3", "-c", probe]).exit_code == 0,
        60,
        what="server in t-codex",
    )
    neighbour = trio.container("t-claude")
    assert neighbour.exec_run(["python3", "-c", probe]).exit_code == 3, "t-claude reached t-codex"


SECRET_MODES = """
import os, pwd
for name in sorted(os.listdir("/run/secrets")):
    st = os.stat(f"/run/secrets/{name}")
    print(f"/run/secrets/{name}", oct(st.st_mode & 0o7777)[2:], pwd.getpwuid(st.st_uid).pw_name)
"""


def test_secrets_are_files_and_never_leak(
    trio: Deployed, docker_client: docker.DockerClient
) -> None:
    claude = trio.container("t-claude")
    # Python's stat, not coreutils': the same answer on both runtimes (RUNSC_NO_STATX).
    listing = exec_ok(claude, ["python3", "-c", SECRET_MODES])
    assert listing.splitlines() == [
        "/run/secrets/ANTHROPIC_API_KEY 400 agent",
        "/run/secrets/GITHUB_TOKEN 400 agent",
    ]
    exported = exec_ok(claude, ["tmux", "show-environment", "-g", "ANTHROPIC_API_KEY"])
    assert exported.strip() == f"ANTHROPIC_API_KEY={CANARIES['ANTHROPIC_API_KEY']}"

    places: dict[str, str] = {}
    for session in trio.manifests:
        container = trio.container(session)
        places[f"docker inspect {container.name}"] = json.dumps(container.attrs)
        places[f"logs {container.name}"] = container.logs().decode(errors="replace")
        places[f"manifest file {session}"] = trio.manifest_file(session).read_text()
    for network in docker_client.networks.list(filters={"label": f"dockyard.stack={trio.stack}"}):
        places[f"docker inspect network {network.name}"] = json.dumps(network.attrs)
    for volume in docker_client.volumes.list(filters={"label": f"dockyard.stack={trio.stack}"}):
        places[f"docker inspect volume {volume.name}"] = json.dumps(volume.attrs)
    places["stack exports"] = json.dumps(trio.manifests)
    places["harness log"] = "\n".join(trio.state.log)
    for realised in trio.state.resources.values():
        inputs = {k: v for k, v in realised.inputs.items() if k != "uploads"}
        places[f"harness inputs {realised.name}"] = json.dumps(inputs, default=str)
        places[f"harness outputs {realised.name}"] = json.dumps(realised.outputs, default=str)
    hits = [
        f"{name} in {where}"
        for where, text in places.items()
        for name, canary in CANARIES.items()
        if canary in text
    ]
    assert not hits, f"secret values leaked: {hits}"


def test_rerun_without_changes_changes_nothing(trio: Deployed) -> None:
    before = trio.manifests
    ids = {name: r.id for name, r in trio.state.resources.items()}
    trio.up()
    assert trio.manifests == before  # createdAt included: no diff on every `up`
    assert {name: r.id for name, r in trio.state.resources.items()} == ids


def test_host_ports_are_distinct_on_the_engine(dev: Deployed, trio: Deployed) -> None:
    """Every published port got its own host port from the engine, across environments
    and stacks (read from the engine, not from what the program was handed back)."""
    bound: dict[str, list[str]] = {}
    for stack, session in all_sessions(dev, trio):
        container = stack.container(session)
        container.reload()
        for key, bindings in container.attrs["NetworkSettings"]["Ports"].items():
            # One host port per container port (IPv4 and IPv6 bindings share it).
            host_ports = {b["HostPort"] for b in bindings or []}
            assert len(host_ports) == 1, f"{container.name} {key}: bound to {host_ports}"
            bound.setdefault(host_ports.pop(), []).append(f"{container.name} {key}")
    assert sum(len(users) for users in bound.values()) == 5, bound  # 2 dev + 3 trio ports
    shared = {port: users for port, users in bound.items() if len(users) > 1}
    assert not shared, f"host ports bound more than once: {shared}"
