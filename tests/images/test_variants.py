"""The language runtime variants (images/python, images/node, images/go) on the real
engine: each is built once per test session FROM this session's core image, carries the
pinned toolchain, runs its hello-world (a compile and run for Go, a package install from
the configured registry for Python and Node.js), and, deployed by the harness as a
stack's ``variant``, reaches the ready marker with both agent CLIs, hardened like every
environment.

The registries are reached the way an environment reaches them: through the core image's
trust store (the proxy CA of images/core/certs) and the mirrors the image names
(NPM_CONFIG_REGISTRY, PIP_INDEX_URL)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import docker
import pytest

from dockyard.image import LAYERED_VARIANTS, pinned_versions
from tests.support.engine import LABELS, exec_ok, unique_name
from tests.support.hardening import assert_hardened
from tests.support.images import REPO, build_image, history_ids
from tests.support.stacks import Deployed

pytestmark = pytest.mark.docker

PINNED = pinned_versions()


@pytest.fixture(scope="session")
def variant_image(docker_client: docker.DockerClient, core_image: str) -> Callable[..., str]:
    """variant_image(variant, **build_args) -> tag, built on the core image only when its
    inputs are new (the tag is a digest of them, as for the core image)."""
    built: dict[tuple[str, tuple[tuple[str, str], ...]], str] = {}

    def get(variant: str, **build_args: str) -> str:
        key = (variant, tuple(sorted(build_args.items())))
        if key not in built:
            built[key] = build_image(
                docker_client,
                f"dockyard-{variant}",
                {"BASE_IMAGE": core_image, **build_args},
                context=REPO / "images" / variant,
            )
        return built[key]

    return get


def run(client: docker.DockerClient, image: str, script: str, **kwargs: Any) -> str:
    """Run ``script`` in bash as the image's user (the agent), removed afterwards; a failure
    carries the output."""
    name = unique_name("variant")
    container = client.containers.run(
        image,
        ["bash", "-c", script],
        entrypoint=[],
        name=name,
        labels=LABELS,
        detach=True,
        **kwargs,
    )
    try:
        status = container.wait(timeout=600)["StatusCode"]
        output = container.logs().decode()
    finally:
        container.remove(force=True)
    assert status == 0, f"{script!r} exited {status} in {image}:\n{output}"
    return output.strip()


# --- Contents -------------------------------------------------------------------------------

VERSION_CHECKS = {
    "python": (
        "python --version; python3 --version; uv --version | cut -d' ' -f1-2;"
        " pip --version | cut -d' ' -f1; gcc --version | head -1 | cut -d' ' -f1",
        [
            f"Python {PINNED['PYTHON_VERSION']}",
            f"Python {PINNED['PYTHON_VERSION']}",
            f"uv {PINNED['UV_VERSION']}",
            "pip",
            "gcc",
        ],
    ),
    "node": (
        "node --version; npm --version; pnpm --version; yarn --version; bun --version;"
        " test -f /usr/local/include/node/node_api.h && echo headers",
        [
            f"v{PINNED['NODE_VERSION']}",
            PINNED["NPM_VERSION"],
            PINNED["PNPM_VERSION"],
            PINNED["YARN_VERSION"],
            PINNED["BUN_VERSION"],
            "headers",
        ],
    ),
    "go": (
        "go env GOVERSION GOTOOLCHAIN GOROOT; printf 'package  main\\n' | gofmt",
        [f"go{PINNED['GO_VERSION']}", "local", "/usr/local/go", "package main"],
    ),
}


@pytest.mark.parametrize("variant", LAYERED_VARIANTS)
def test_variant_carries_its_pinned_toolchain_and_the_core_contract(
    docker_client: docker.DockerClient, variant_image: Callable[..., str], variant: str
) -> None:
    image = variant_image(variant)
    script, expected = VERSION_CHECKS[variant]
    assert run(docker_client, image, script).splitlines() == expected
    # Everything of the core image is still there, unchanged.
    core = run(docker_client, image, "claude --version; codex --version; id -un; id -u; pwd")
    assert core.splitlines() == [
        f"{PINNED['CLAUDE_CODE_VERSION']} (Claude Code)",
        f"codex-cli {PINNED['CODEX_VERSION']}",
        "agent",
        "1000",
        "/workspace",
    ]
    config = docker_client.images.get(image).attrs["Config"]
    assert config["User"] == "1000:1000"
    assert config["Entrypoint"] == ["/usr/local/bin/dockyard-entrypoint"]
    assert config["Healthcheck"]["Test"] == ["CMD", "/usr/local/bin/dockyard-healthcheck"]
    assert config["Labels"]["dockyard.variant"] == variant


def test_variants_share_every_core_layer(
    docker_client: docker.DockerClient, core_image: str, variant_image: Callable[..., str]
) -> None:
    core = [layer for layer, _ in history_ids(docker_client, core_image)]
    for variant in LAYERED_VARIANTS:
        layers = [layer for layer, _ in history_ids(docker_client, variant_image(variant))]
        assert layers[: len(core)] == core, f"{variant} does not start with the core layers"


# --- Hello worlds -----------------------------------------------------------------------------


def test_go_compiles_and_runs_hello_world(
    docker_client: docker.DockerClient, variant_image: Callable[..., str]
) -> None:
    script = (
        "set -e; mkdir -p /tmp/hello && cd /tmp/hello && go mod init example.com/hello -q 2>/dev/null"
        " || go mod init example.com/hello >/dev/null 2>&1;"
        ' printf \'package main\\n\\nimport "fmt"\\n\\nfunc main() { fmt.Println("hello from go") }\\n\''
        " > main.go && gofmt -l . && go vet ./... && go build -o hello . && ./hello"
    )
    assert run(docker_client, variant_image("go"), script).splitlines()[-1] == "hello from go"


def test_python_installs_from_the_configured_index_with_pip_and_uv(
    docker_client: docker.DockerClient, variant_image: Callable[..., str]
) -> None:
    image = variant_image("python")
    env = docker_client.images.get(image).attrs["Config"]["Env"]
    index = next(e.split("=", 1)[1] for e in env if e.startswith("PIP_INDEX_URL="))
    assert f"UV_DEFAULT_INDEX={index}" in env
    script = (
        "set -e; cd /tmp"
        " && uv venv -q uvenv && VIRTUAL_ENV=/tmp/uvenv uv pip install -q six==1.17.0"
        " && uvenv/bin/python -c 'import six; print(\"uv\", six.__version__)'"
        " && python -m venv pipenv && pipenv/bin/pip install -q six==1.17.0"
        " && pipenv/bin/python -c 'import six; print(\"pip\", six.__version__)'"
        # The compilers and CPython's headers an sdist's C extension builds with.
        " && printf '#include <Python.h>\\nint main(void) { return PY_MAJOR_VERSION - 3; }\\n'"
        " > ext.c && gcc $(python3-config --includes) ext.c -o ext && ./ext && echo headers"
    )
    assert run(docker_client, image, script).splitlines()[-3:] == [
        "uv 1.17.0",
        "pip 1.17.0",
        "headers",
    ]


def test_node_installs_from_the_configured_registry_with_npm_pnpm_and_bun(
    docker_client: docker.DockerClient, variant_image: Callable[..., str]
) -> None:
    image = variant_image("node")
    script = (
        "set -e; mkdir -p /tmp/npm /tmp/pnpm /tmp/bun"
        " && cd /tmp/npm && npm init -y >/dev/null"
        " && npm install --no-audit --no-fund --silent is-number@7.0.0"
        ' && node -e \'console.log("npm", require("is-number")(7))\''
        ' && cd /tmp/pnpm && printf \'{"name":"p","version":"1.0.0"}\' > package.json'
        " && pnpm add --silent is-number@7.0.0"
        ' && node -e \'console.log("pnpm", require("is-number")(7))\''
        ' && cd /tmp/bun && printf \'{"name":"b","version":"1.0.0"}\' > package.json'
        " && bun add --silent is-number@7.0.0"
        ' && bun -e \'console.log("bun", require("is-number")(7))\''
        " && npm config get registry"
    )
    lines = run(docker_client, image, script).splitlines()
    assert lines[-4:-1] == ["npm true", "pnpm true", "bun true"], lines
    env = docker_client.images.get(image).attrs["Config"]["Env"]
    assert f"NPM_CONFIG_REGISTRY={lines[-1]}" in env, "npm did not use the image's registry"


# --- Environments of a stack ---------------------------------------------------------------


@pytest.fixture(scope="module")
def stack_of(deploy: Callable[..., Deployed]) -> Callable[[str], Deployed]:
    """stack_of(variant): a stack (deployed once) with a claude and a codex environment of
    that variant, torn down at the module's end."""
    deployed: dict[str, Deployed] = {}

    def get(variant: str) -> Deployed:
        if variant not in deployed:
            environments = [
                {
                    "sessionId": f"{variant}-{backend}",
                    "backend": backend,
                    "variant": variant,
                    "limits": {"cpus": 1, "memory": "2g"},
                }
                for backend in ("claude", "codex")
            ]
            deployed[variant] = deploy(f"var{variant}", {"environments": environments})
        return deployed[variant]

    return get


@pytest.mark.parametrize("variant", LAYERED_VARIANTS)
def test_environments_of_a_variant_are_ready_with_both_clis_and_hardened(
    stack_of: Callable[[str], Deployed], variant: str
) -> None:
    stack = stack_of(variant)
    stack.wait_ready(timeout=90)
    for backend in ("claude", "codex"):
        session = f"{variant}-{backend}"
        manifest = stack.manifests[session]
        assert manifest["image"].startswith(f"dockyard-{variant}:it-"), manifest["image"]
        container = stack.container(session)
        assert container.attrs["Config"]["Image"] == manifest["image"]
        assert_hardened(container)
        cli = exec_ok(container, ["bash", "-c", f"{backend} --version"]).strip()
        assert cli, f"{backend} gave no version in {session}"
        tool = {"python": "python --version", "node": "node --version", "go": "go version"}
        assert exec_ok(container, ["bash", "-c", tool[variant]]).strip()


# --- Layer order ------------------------------------------------------------------------------

BUMPS = [
    ("node", "BUN_VERSION", "1.4.3", "bun --version", "1.4.3"),
    ("python", "UV_VERSION", "0.13.8", "uv --version | cut -d' ' -f2", "0.13.8"),
    ("go", "GO_VERSION", "1.27.2", "go env GOVERSION", "go1.27.2"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("variant", "arg", "value", "check", "expected"), BUMPS)
def test_bumping_one_toolchain_rebuilds_only_its_layers(
    docker_client: docker.DockerClient,
    variant_image: Callable[..., str],
    variant: str,
    arg: str,
    value: str,
    check: str,
    expected: str,
) -> None:
    old = history_ids(docker_client, variant_image(variant))
    new = history_ids(docker_client, variant_image(variant, **{arg: value}))
    assert run(docker_client, variant_image(variant, **{arg: value}), check) == expected
    first_changed = next(i for i, (a, b) in enumerate(zip(old, new, strict=False)) if a != b)
    # Everything below the first layer that uses the bumped version is reused, and that
    # layer is the toolchain's own: its COPY from the fetch stage, or its install.
    step = new[first_changed][1]
    owner = {"node": " in /usr/local/bin/", "python": "uv==", "go": " in /usr/local/go/"}
    assert owner[variant] in step, f"{variant}: first rebuilt step is {step[:160]}"
