"""Bad input, hostile input included: nothing is created and the message is exact.

Three doors, one table each:
- stack configs, run through the real program with the harness on the real engine
  (what `pulumi up` would do): the exact problem line, a failed run, and no container,
  network, volume or manifest file of the stack afterwards;
- manifests, fed to every consumer (`dockyard.manifest write`, the Modal planner, the
  inventory plugin): exact message, non-zero exit, no file written, no host listed;
- role variables, through playbooks/site.yml and environments.yml: the exact message,
  a failed run with changed=0, no file written.

Hostile values carry a marker command (`touch <marker>`); if anything ever ran them as
shell, the marker would exist — it is checked after every case. Values that are valid
but hostile (shell metacharacters in env values, the project path) are deployed and
must arrive as literal data.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import docker
import pulumi
import pytest

from tests.support.ansible import LOCAL, REPO, list_inventory, manifest_inventory, run_playbook
from tests.support.engine import RUN_ID, exec_ok, is_ready, wait_for
from tests.support.stacks import Deployed

pytestmark = [pytest.mark.docker]

MARKER = Path(f"/tmp/dockyard-pwned-{RUN_ID}")
TOUCH = f"touch {MARKER}"
E = "dockyard:environments[0]"
SESSION = (
    "(allowed: a container name: letters, digits, '_', '.', '-', starting with a letter or "
    "digit, at most 63 characters)"
)
ROOTS = "(allowed: a host path under the project directory or a bindRoots entry: '{cwd}')"
ENGINE = (
    "(allowed: host paths that neither are nor contain the Docker engine's socket or state: "
    "/var/run/docker.sock, /run/docker.sock, /var/lib/docker, /run/containerd, "
    "/var/run/containerd)"
)
HOST_PATH = "(allowed: an absolute host path without '..' or '.' components)"
TEXT = "(allowed: a one-line string or number of at most 4096 characters, no control characters)"
HOST_DIR = (
    "(allowed: an absolute host directory without '.' or '..' components or control characters)"
)
CONTAINER_PATH = "(allowed: an absolute container path without '..' or '.' components)"
ENV_NAME = (
    "(allowed: an environment variable name: letters, digits, '_', not starting with a digit, "
    "at most 255 characters)"
)
WORKSPACE = HOST_DIR


def env(**fields: Any) -> dict[str, Any]:
    return {"environments": [{"sessionId": "victim", **fields}]}


# (id, stack config, expected problem line; {cwd} is the project directory)
STACK_CASES: list[tuple[str, dict[str, Any], str]] = [
    (
        "session traversal",
        env(sessionId="../../etc"),
        f"{E}.sessionId: '../../etc' is not allowed {SESSION}",
    ),
    (
        "session absolute",
        env(sessionId="/root"),
        f"{E}.sessionId: '/root' is not allowed {SESSION}",
    ),
    ("session slash", env(sessionId="a/b"), f"{E}.sessionId: 'a/b' is not allowed {SESSION}"),
    (
        "session command substitution",
        env(sessionId=f"$({TOUCH})"),
        f"{E}.sessionId: '$({TOUCH})' is not allowed {SESSION}",
    ),
    (
        "session semicolon",
        env(sessionId=f"x;{TOUCH}"),
        f"{E}.sessionId: 'x;{TOUCH}' is not allowed {SESSION}",
    ),
    (
        "session backticks",
        env(sessionId=f"`{TOUCH}`"),
        f"{E}.sessionId: '`{TOUCH}`' is not allowed {SESSION}",
    ),
    ("session newline", env(sessionId="a\nb"), f"{E}.sessionId: 'a\\nb' is not allowed {SESSION}"),
    (
        "session cyrillic look-alike",
        env(sessionId="\u0430lice"),
        f"{E}.sessionId: '\\u0430lice' is not allowed {SESSION}",
    ),
    (
        "session fullwidth look-alike",
        env(sessionId="alice\uff0fbob"),
        f"{E}.sessionId: 'alice\\uff0fbob' is not allowed {SESSION}",
    ),
    (
        "session oversized",
        env(sessionId="a" * 64),
        f"{E}.sessionId: '{'a' * 64}' is not allowed {SESSION}",
    ),
    (
        "volume host traversal",
        env(volumes=["{cwd}/../../etc:/data"]),
        f"{E}.volumes[0]: '{{cwd}}/../../etc:/data' is not allowed {HOST_PATH}",
    ),
    (
        "volume relative traversal",
        env(volumes=["../secrets:/data"]),
        f"{E}.volumes[0]: '../secrets:/data' is not allowed (allowed: an absolute host path (starting with /) or a volume name, not a relative path)",
    ),
    (
        "volume outside roots",
        env(volumes=["/etc:/data:ro"]),
        f"{E}.volumes[0]: '/etc:/data:ro' is not allowed {ROOTS}",
    ),
    (
        "volume home outside roots",
        env(volumes=["/root/.ssh:/home/agent/.ssh"]),
        f"{E}.volumes[0]: '/root/.ssh:/home/agent/.ssh' is not allowed {ROOTS}",
    ),
    (
        "docker socket",
        env(volumes=["/var/run/docker.sock:/var/run/docker.sock"]),
        f"{E}.volumes[0]: '/var/run/docker.sock:/var/run/docker.sock' is not allowed {ENGINE}",
    ),
    (
        "docker socket via /run",
        env(volumes=["/run:/host-run"]),
        f"{E}.volumes[0]: '/run:/host-run' is not allowed {ENGINE}",
    ),
    (
        "engine state",
        env(volumes=["/var/lib/docker:/d"]),
        f"{E}.volumes[0]: '/var/lib/docker:/d' is not allowed {ENGINE}",
    ),
    ("host root", env(volumes=["/:/host"]), f"{E}.volumes[0]: '/:/host' is not allowed {ENGINE}"),
    (
        "volume target traversal",
        env(volumes=["cache:/workspace/../etc"]),
        f"{E}.volumes[0]: 'cache:/workspace/../etc' is not allowed {CONTAINER_PATH}",
    ),
    (
        "volume onto secrets",
        env(volumes=["cache:/run/secrets"]),
        f"{E}.volumes[0]: 'cache:/run/secrets' is not allowed (allowed: a container path other than / and /workspace, /config, /checkpoints, /run/secrets (dockyard mounts those))",
    ),
    (
        "volume name metacharacters",
        env(volumes=[f"$({TOUCH}):/data"]),
        f"{E}.volumes[0]: '$({TOUCH}):/data' is not allowed (allowed: an absolute host path (starting with /) or a volume name, not a relative path)",
    ),
    (
        "workspace outside roots",
        env(workspaceHostPath="/srv"),
        f"{E}.workspaceHostPath: '/srv' is not allowed {ROOTS}",
    ),
    (
        "workspace traversal",
        env(workspaceHostPath="{cwd}/../x"),
        f"{E}.workspaceHostPath: '{{cwd}}/../x' is not allowed {WORKSPACE}",
    ),
    (
        "workspace relative",
        env(workspaceHostPath="ws"),
        f"{E}.workspaceHostPath: 'ws' is not allowed {WORKSPACE}",
    ),
    (
        "workspace missing",
        env(workspaceHostPath="{cwd}/nowhere"),
        f"{E}.workspaceHostPath: '{{cwd}}/nowhere' is not allowed (allowed: an existing host directory, writable by the agent, uid 1000)",
    ),
    (
        "env value newline",
        env(env={"GREETING": f"hi\n{TOUCH}"}),
        f"{E}.env.GREETING: <a string of {len(TOUCH) + 3} characters> is not allowed {TEXT}",
    ),
    (
        "env value oversized",
        env(env={"BLOB": "x" * 5000}),
        f"{E}.env.BLOB: <a string of 5000 characters> is not allowed {TEXT}",
    ),
    (
        "env name metacharacters",
        env(env={f"A;{TOUCH}": "1"}),
        f"{E}.env.<key 1>: this key is not allowed {ENV_NAME}",
    ),
    (
        "env name look-alike",
        env(env={"\u0420ATH": "1"}),
        f"{E}.env.<key 1>: this key is not allowed {ENV_NAME}",
    ),
    (
        "env overrides dockyard",
        env(env={"DOCKYARD_BACKEND": "codex"}),
        f"{E}.env.DOCKYARD_BACKEND: this key is not allowed (allowed: names outside DOCKYARD_*, which dockyard sets itself)",
    ),
    (
        "secret as env",
        env(env={"ANTHROPIC_API_KEY": "sk-ant-plain"}),
        f"{E}.env.ANTHROPIC_API_KEY: this key is not allowed (allowed: no credential-named key in plain configuration (visible in docker inspect and to every process); list ANTHROPIC_API_KEY under secrets instead: a secret in this stack's config; run `pulumi config set --secret ANTHROPIC_API_KEY <value>`)",
    ),
    (
        "secret name metacharacters",
        env(secrets=[f"X;{TOUCH}"]),
        f"{E}.secrets[0]: <a string of {len(TOUCH) + 2} characters> is not allowed {ENV_NAME}",
    ),
    (
        "label key metacharacters",
        env(labels={"a b;c": "x"}),
        f"{E}.labels.<key 1>: this key is not allowed (allowed: a label key of lower-case letters, digits, '.', '_', '/', '-', at most 128 characters)",
    ),
    (
        "port as text",
        env(ports=[f"3000;{TOUCH}"]),
        f"{E}.ports[0]: '3000;{TOUCH}' is not allowed (allowed: an integer container port 1-65535)",
    ),
    (
        "port out of range",
        env(ports=[70000]),
        f"{E}.ports[0]: 70000 is not allowed (allowed: an integer container port 1-65535)",
    ),
    (
        "backend unknown",
        env(backend="bash"),
        f"{E}.backend: 'bash' is not allowed (allowed: one of 'claude' or 'codex')",
    ),
    (
        "image ref metacharacters",
        {"image": {"ref": f"x;{TOUCH}"}},
        f"dockyard:image.ref: 'x;{TOUCH}' is not allowed (allowed: an image reference such as ghcr.io/acme/dockyard-core:1.2 (lower-case repository path, optional :tag and @sha256:digest))",
    ),
    (
        "docker host metacharacters",
        {"dockerHost": f"ssh://agent@host;{TOUCH}"},
        f"dockyard:dockerHost: 'ssh://agent@host;{TOUCH}' is not allowed (allowed: a Docker host URL: unix:///path, tcp://host:port or ssh://user@host[:port], ports 1-65535)",
    ),
    (
        "manifest dir traversal",
        {"manifestDir": "../../etc/cron.d"},
        "dockyard:manifestDir: '../../etc/cron.d' is not allowed (allowed: a directory path (relative to cwd, or absolute) without '.' or '..' components or control characters)",
    ),
    (
        "bind root relative",
        {"bindRoots": ["srv"]},
        f"dockyard:bindRoots[0]: 'srv' is not allowed {HOST_DIR}",
    ),
    (
        "memory negative",
        env(limits={"memory": "-1g"}),
        f"{E}.limits.memory: '-1g' is not allowed (allowed: a size from 6 MB to 4 TiB: MB as a number (8192) or with a unit (512m, 8g))",
    ),
    (
        "pids zero",
        env(limits={"pids": 0}),
        f"{E}.limits.pids: 0 is not allowed (allowed: an integer 1-4194304)",
    ),
]


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hostile-project")


@pytest.fixture(autouse=True)
def no_marker() -> Any:
    MARKER.unlink(missing_ok=True)
    yield
    assert not MARKER.exists(), f"a hostile value was executed: {MARKER} exists"


def fill(value: Any, cwd: Path) -> Any:
    return json.loads(json.dumps(value).replace("{cwd}", str(cwd)))


@pytest.mark.parametrize(
    ("values", "expected"), [c[1:] for c in STACK_CASES], ids=[c[0] for c in STACK_CASES]
)
def test_bad_stack_config_creates_nothing(
    values: dict[str, Any], expected: str, project: Path, docker_client: docker.DockerClient
) -> None:
    stack = f"bad{RUN_ID[:6]}"
    target = Deployed(
        docker_client,
        stack,
        project,
        {"cwd": str(project), "image": {"tag": "it"}, **fill(values, project)},
        {},
    )
    try:
        with pytest.raises(pulumi.RunError) as info:
            target.up()
        message = str(info.value)
        assert f"  - {expected.replace('{cwd}', str(project))}" in message.splitlines(), message
        assert "nothing was created" in message
        assert target.state.resources == {}
        assert target.leftovers() == []
        assert not (project / ".companion").exists()
    finally:
        target.force_cleanup()


def test_hostile_but_valid_values_arrive_as_data(
    deploy: Any, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Shell metacharacters in env values and in the project path reach the engine and
    the manifest command as data: literal in the container, never run on host or inside."""
    hostile = f"$({TOUCH}); `{TOUCH}` | {TOUCH} && '\" {TOUCH}"
    project = tmp_path_factory.mktemp("hostile") / f"pro ject;$({TOUCH})"
    project.mkdir(parents=True)  # the marker path adds directories: still data
    stack = deploy("hostile", {"cwd": str(project), **env(env={"HOSTILE": hostile})})
    container = stack.container("victim")
    wait_for(lambda: is_ready(container), 60, what="ready")
    assert exec_ok(container, ["printenv", "HOSTILE"]).rstrip("\n") == hostile
    assert (
        exec_ok(container, ["tmux", "show-environment", "-g", "HOSTILE"]).strip()
        == f"HOSTILE={hostile}"
    )
    assert container.exec_run(["test", "-e", str(MARKER)]).exit_code == 1
    manifest = json.loads((project / ".companion/cloud/environments/victim.json").read_text())
    assert manifest["cwd"] == str(project)
    assert manifest["requested"]["env"] == ["HOSTILE"]


# --- Manifests -------------------------------------------------------------------------


def good_manifest() -> dict[str, Any]:
    return {
        "version": 1,
        "environmentId": "dockyard-dev-alice",
        "sessionId": "alice",
        "backend": "claude",
        "createdAt": "2026-11-23T10:00:00.000Z",
        "cwd": "/home/me/project",
        "image": "dockyard-core:dev",
        "container": {
            "id": "0123456789ab",
            "name": "dockyard-dev-alice",
            "cwd": "/workspace",
            "portMappings": [{"containerPort": 3000, "hostPort": 32768}],
        },
        "requested": {"ports": [3000], "volumes": [], "env": ["APP_MODE"]},
    }


def broken(path: str, value: Any) -> dict[str, Any]:
    manifest = good_manifest()
    *parents, last = path.split(".")
    node: Any = manifest
    for key in parents:
        node = node[int(key)] if key.isdigit() else node[key]
    if value is DELETE:
        del node[last]
    else:
        node[int(last) if last.isdigit() else last] = value
    return manifest


DELETE = object()

# (id, manifest, expected text in the error)
MANIFEST_CASES: list[tuple[str, Any, str]] = [
    ("version 2", broken("version", 2), "version: 1 was expected"),
    (
        "secret value smuggled in",
        broken("requested.env", ["APP_MODE=sk-live"]),
        "requested/env/0: 'APP_MODE=sk-live' does not match '^[A-Za-z_][A-Za-z0-9_]{0,254}$(?!\\\\n)'",
    ),
    (
        "extra key",
        {**good_manifest(), "secrets": {"A": "b"}},
        "(top): Additional properties are not allowed ('secrets' was unexpected)",
    ),
    ("missing container", broken("container", DELETE), "(top): 'container' is a required property"),
    (
        "backend unknown",
        broken("backend", "bash"),
        "backend: 'bash' is not one of ['claude', 'codex']",
    ),
    (
        "session traversal",
        broken("sessionId", "../../etc/passwd"),
        "sessionId: '../../etc/passwd' does not match '^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$(?!\\\\n)'",
    ),
    (
        "container name metacharacters",
        broken("container.name", f"x; {TOUCH}"),
        f"container/name: 'x; {TOUCH}' does not match '^[A-Za-z0-9][A-Za-z0-9_.-]{{1,254}}$(?!\\\\n)'",
    ),
    (
        "container id not hex",
        broken("container.id", "$(id)"),
        "container/id: '$(id)' does not match '^[0-9a-f]{1,64}$(?!\\\\n)'",
    ),
    (
        "host port as text",
        broken("container.portMappings.0.hostPort", "32768"),
        "container/portMappings/0/hostPort: '32768' is not of type 'integer'",
    ),
    (
        "created without millis",
        broken("createdAt", "2026-11-23T10:00:00Z"),
        "createdAt: '2026-11-23T10:00:00Z' does not match",
    ),
    ("cwd relative", broken("cwd", "../home"), "cwd: '../home' does not match '^/'"),
]


@pytest.mark.parametrize(
    ("manifest", "expected"), [c[1:] for c in MANIFEST_CASES], ids=[c[0] for c in MANIFEST_CASES]
)
def test_bad_manifest_is_refused_by_every_consumer(
    manifest: Any, expected: str, tmp_path: Path
) -> None:
    text = json.dumps(manifest)
    # 1. The writer (the components' manifest command): refuses, writes nothing.
    target = tmp_path / "out" / "alice.json"
    writer = _python(
        ["-m", "dockyard.manifest", "write"],
        {"DOCKYARD_MANIFEST": text, "DOCKYARD_MANIFEST_PATH": str(target)},
    )
    assert writer.returncode == 1
    assert expected in writer.stderr, writer.stderr
    assert not target.parent.exists() or list(target.parent.iterdir()) == []
    # 2. The Modal planner: refuses, prints no plan.
    source = tmp_path / "in" / "alice.json"
    source.parent.mkdir()
    source.write_text(text)
    planner = _python(["-m", "dockyard.modal_plan", str(source)])
    assert planner.returncode == 1
    assert expected in planner.stderr, planner.stderr
    assert planner.stdout == ""
    # 3. The inventory plugin: the inventory fails, naming the file; no host.
    inventory = manifest_inventory(tmp_path / "bad.dockyard_manifests.yml", source.parent)
    listing = list_inventory(
        inventory, {"ANSIBLE_INVENTORY_UNPARSED_FAILED": "true", "ANSIBLE_NOCOLOR": "1"}
    )
    assert listing.returncode != 0
    output = " ".join((listing.stdout + listing.stderr).split())
    assert str(source) in output, output
    assert " ".join(expected.split()) in output, output


def _python(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, **(env or {})},
        check=False,
    )


# --- Role variables ----------------------------------------------------------------------

# (id, playbook, variables, expected text)
ROLE_CASES: list[tuple[str, str, dict[str, Any], str]] = [
    (
        "version traversal",
        "site.yml",
        {"agent_tooling_codex_version": "../../../etc"},
        "agent_tooling_codex_version: \"../../../etc\" is not allowed (allowed: a version such as 0.169.0: letters, digits, '.', '+', '_', '-', no '..' (it names a directory))",
    ),
    (
        "version metacharacters",
        "site.yml",
        {"agent_tooling_claude_version": f"1.0; {TOUCH}"},
        f'agent_tooling_claude_version: "1.0; {TOUCH}" is not allowed',
    ),
    (
        "registry metacharacters",
        "site.yml",
        {"agent_tooling_npm_registry": f"https://r.example/$({TOUCH})"},
        f'agent_tooling_npm_registry: "https://r.example/$({TOUCH})" is not allowed (allowed: an http(s) URL without whitespace or shell metacharacters)',
    ),
    (
        "prefix traversal",
        "site.yml",
        {"agent_tooling_prefix": "/opt/../etc"},
        "agent_tooling_prefix: \"/opt/../etc\" is not allowed (allowed: an absolute path without '..' components, whitespace or shell metacharacters)",
    ),
    (
        "health label metacharacters",
        "site.yml",
        {"env_health_label": f"x=1; {TOUCH}"},
        f'env_health_label: "x=1; {TOUCH}" is not allowed',
    ),
    (
        "health report relative",
        "site.yml",
        {"env_health_report_file": "report.json"},
        'env_health_report_file: "report.json" is not allowed',
    ),
    (
        "idle action unknown",
        "site.yml",
        {"idle_monitor_action": "reboot"},
        "value of idle_monitor_action must be one of: stop, pause, hibernate, poweroff, got: reboot",
    ),
    (
        "idle minutes text",
        "site.yml",
        {"idle_monitor_idle_minutes": "ten"},
        "argument 'idle_monitor_idle_minutes' is of type str and we were unable to convert to int",
    ),
    (
        "disk pct text",
        "site.yml",
        {"env_health_max_disk_pct": "lots"},
        "argument 'env_health_max_disk_pct' is of type str and we were unable to convert to float",
    ),
    (
        "log size malformed",
        "site.yml",
        {"docker_host_log_max_size": "10 MB"},
        'docker_host_log_max_size: "10 MB" is not allowed (allowed: a size with a unit such as 10m, 500k, 1g)',
    ),
    (
        "service manager unknown",
        "site.yml",
        {"docker_host_service_manager": "upstart"},
        "value of docker_host_service_manager must be one of: auto, systemd, sysvinit, background, got: upstart",
    ),
    (
        "git user metacharacters",
        "environments.yml",
        {"git_credentials_user": f"agent;{TOUCH}"},
        f"git_credentials_user: \"agent;{TOUCH}\" is not allowed (allowed: a Unix user name (lower-case letters, digits, '_', '-'; at most 32))",
    ),
    (
        "git url metacharacters",
        "environments.yml",
        {"git_credentials_url": f"https://github.com/`{TOUCH}`"},
        f'git_credentials_url: "https://github.com/`{TOUCH}`" is not allowed',
    ),
]


@pytest.mark.parametrize(
    ("playbook", "variables", "expected"),
    [c[1:] for c in ROLE_CASES],
    ids=[c[0] for c in ROLE_CASES],
)
def test_bad_role_variables_fail_before_any_change(
    playbook: str, variables: dict[str, Any], expected: str, tmp_path: Path
) -> None:
    # Every path a role would write goes under tmp_path, so "nothing written" is checkable.
    written = tmp_path / "root"
    harmless = {
        **LOCAL,
        "dockyard_docker_hosts": "all",
        "agent_tooling_prefix": str(written / "agents"),
        "agent_tooling_bin_dir": str(written / "bin"),
        "env_health_report_file": str(written / "report.json"),
        "idle_monitor_state_file": str(written / "idle.json"),
        "agent_config_root": str(written / "config"),
        "git_credentials_gitconfig": str(written / "gitconfig"),
        "git_credentials_helper_path": str(written / "askpass"),
    }
    inventory = tmp_path / "hosts.ini"
    inventory.write_text("[dockyard]\nlocalhost ansible_connection=local\n")
    run = run_playbook(
        playbook, inventory=inventory, extra_vars={**harmless, **variables}, check=False
    )
    assert run.rc != 0
    assert run.changed() == {"localhost": 0}, run.output[-3000:]
    flat = " ".join(run.output.split())
    assert " ".join(expected.split()) in flat, run.output[-3000:]
    assert not written.exists()
