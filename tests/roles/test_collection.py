"""The Ansible collection dockyard.agents as a user gets it: `ansible-galaxy collection
build` from the repository root, installed into a temporary collections path, then used
from outside the repository — the inventory plugin by FQCN over a real environment's
manifests, and a playbook by FQCN against that environment's container."""

from __future__ import annotations

import json
import os
import re
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.ansible import VENV_BIN
from tests.support.stacks import CANARIES, Deployed

pytestmark = pytest.mark.docker

REPO = Path(__file__).resolve().parents[2]
FQCN = "dockyard.agents"


@pytest.fixture(scope="module")
def tarball(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("collection")
    subprocess.run(
        [
            str(VENV_BIN / "ansible-galaxy"),
            "collection",
            "build",
            "--output-path",
            str(out),
            str(REPO),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    (built,) = out.glob("dockyard-agents-*.tar.gz")
    return built


@pytest.fixture(scope="module")
def collections(tarball: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("collections")
    result = subprocess.run(
        [
            str(VENV_BIN / "ansible-galaxy"),
            "collection",
            "install",
            "--offline",
            "--no-deps",
            # The checkout's ansible.cfg names the checkout itself as dockyard.agents
            # (collections_path): without --force the install would find it "installed".
            "--force",
            "-p",
            str(path),
            str(tarball),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return path


def _names(tarball: Path) -> set[str]:
    with tarfile.open(tarball) as archive:
        return {member.name for member in archive.getmembers()}


def test_the_tarball_holds_the_collection_and_nothing_else(tarball: Path) -> None:
    names = _names(tarball)
    version = (REPO / "components" / "VERSION").read_text().strip()
    assert tarball.name == f"dockyard-agents-{version}.tar.gz"
    galaxy = yaml.safe_load((REPO / "galaxy.yml").read_text())
    assert galaxy["version"] == version
    assert set(galaxy["dependencies"]) == {"community.docker", "community.general"}
    for needed in (
        "meta/runtime.yml",
        "plugins/inventory/dockyard_manifests.py",
        "plugins/modules/config_merge.py",
        "playbooks/site.yml",
        "playbooks/environments.yml",
        "components/host/__init__.py",
    ):
        assert needed in names, needed
    roles = {p.name for p in (REPO / "roles").iterdir() if p.is_dir()}
    assert {n.split("/")[1] for n in names if n.startswith("roles/") and n.count("/") >= 1} >= roles
    for unwanted in ("tests/", "benchmarks/", "stacks/", "docs/", "policy/", "provider/"):
        assert not [n for n in names if n.startswith(unwanted)], unwanted
    assert not [n for n in names if n.endswith(("Dockerfile", ".crt", ".pem", "__main__.py"))]


def test_roles_read_only_their_own_files(tarball: Path) -> None:
    """No role reaches outside itself (`role_path/../..`, a role's library/): what a role
    reads is in its own files/, modules are the collection's, called by FQCN."""
    outside = re.compile(r"role_path\s*(?:\}\}|~\s*['\"])/\.\.|\.\./\.\./")
    found = [
        f"{path.relative_to(REPO)}:{number}"
        for path in (REPO / "roles").rglob("*")
        if path.is_file() and path.suffix in {".yml", ".j2", ".py"}
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if outside.search(line)
    ]
    assert found == []
    assert not list((REPO / "roles").glob("*/library"))
    names = _names(tarball)
    for module in ("config_merge", "host_state"):
        assert f"plugins/modules/{module}.py" in names
    assert "plugins/lookup/host_package.py" in names
    assert "plugins/module_utils/host_package.py" in names
    assert not [n for n in names if n.startswith(("images/", "playbooks/collections"))]


# A file a role shares with the images: (the role's copy, the one source).
ROLE_COPIES = {
    "roles/agent_tooling/files/versions.env": "images/versions.env",
    "roles/docker_host/files/bootstrap.sh": "images/base/bootstrap.sh",
    "roles/git_credentials/files/git-askpass.sh": "images/core/git-askpass.sh",
}


@pytest.mark.parametrize("copy", sorted(ROLE_COPIES))
def test_a_role_s_copy_of_an_image_file_is_identical_to_its_source(copy: str) -> None:
    source = ROLE_COPIES[copy]
    assert (REPO / copy).read_bytes() == (REPO / source).read_bytes(), (
        f"{copy} differs from {source}: cp {source} {copy}"
    )
    assert (REPO / copy).stat().st_mode & 0o111 == (REPO / source).stat().st_mode & 0o111


def package_files() -> list[str]:
    """The package's host modules host_common installs (and the collection carries)."""
    variables = yaml.safe_load((REPO / "roles" / "host_common" / "vars" / "main.yml").read_text())
    return list(variables["host_common_package_files"])


def test_the_collection_carries_the_host_modules_from_their_one_home(tarball: Path) -> None:
    """components/ in the tarball is exactly host_common's package files, each byte for
    byte the repository's own: no second copy, and nothing else of the package."""
    expected = {f"components/{path}" for path in package_files()}
    with tarfile.open(tarball) as archive:
        shipped = {
            m.name: archive.extractfile(m).read()  # type: ignore[union-attr]
            for m in archive.getmembers()
            if m.isfile() and m.name.startswith("components/")
        }
    assert sorted(set(shipped) ^ expected) == []
    differ = [name for name, data in shipped.items() if data != (REPO / name).read_bytes()]
    assert differ == []


@pytest.fixture(scope="module")
def fleet(deploy: Any) -> Deployed:
    target = deploy(
        "coll",
        {
            "environments": [
                {"sessionId": "c-claude", "backend": "claude", "secrets": ["GITHUB_TOKEN"]}
            ]
        },
        {"GITHUB_TOKEN": CANARIES["GITHUB_TOKEN"]},
    )
    target.wait_ready()
    return target


@pytest.fixture
def outside(tmp_path: Path, collections: Path) -> dict[str, str]:
    """An environment for ansible commands run the way a user of the collection runs them:
    from another directory, with only the installed collection (no checkout config)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("ANSIBLE_") or k == "ANSIBLE_NOCOLOR"
    }
    env.update(
        ANSIBLE_COLLECTIONS_PATH=f"{collections}:{VENV_BIN.parent / 'lib'}",
        ANSIBLE_CONFIG=str(tmp_path / "none.cfg"),
        PATH=f"{VENV_BIN}:{env.get('PATH', '')}",
    )
    (tmp_path / "none.cfg").write_text("[defaults]\nnocows = true\n")
    return env


def _inventory(tmp_path: Path, fleet: Deployed) -> Path:
    inventory = tmp_path / "team.dockyard_manifests.yml"
    inventory.write_text(
        yaml.safe_dump(
            {
                "plugin": f"{FQCN}.dockyard_manifests",
                "manifest_dirs": [str(fleet.cwd / ".companion" / "cloud" / "environments")],
                "keyed_groups": [{"key": "dockyard_backend", "prefix": "backend"}],
                "compose": {"agent_home": "'/home/' ~ ansible_user"},
            }
        )
    )
    return inventory


def test_the_inventory_plugin_by_fqcn_lists_real_environments(
    fleet: Deployed, outside: dict[str, str], tmp_path: Path
) -> None:
    inventory = _inventory(tmp_path, fleet)
    result = subprocess.run(
        [str(VENV_BIN / "ansible-inventory"), "-i", str(inventory), "--list"],
        cwd=tmp_path,
        env=outside,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    name = fleet.manifests["c-claude"]["container"]["name"]
    assert data["dockyard"]["hosts"] == [name]
    assert data["backend_claude"]["hosts"] == [name]  # keyed_groups
    # ansible-core 2.19 marks values a plugin provides as untrusted (never templated).
    hostvars = {
        k: v["__ansible_unsafe"] if isinstance(v, dict) and "__ansible_unsafe" in v else v
        for k, v in data["_meta"]["hostvars"][name].items()
    }
    assert hostvars["agent_home"] == "/home/agent"  # compose
    assert hostvars["dockyard_session_id"] == "c-claude"


def test_a_playbook_by_fqcn_configures_the_environment_and_reruns_clean(
    fleet: Deployed, outside: dict[str, str], tmp_path: Path
) -> None:
    inventory = _inventory(tmp_path, fleet)
    extra = json.dumps({"agent_config_project_name": "collection-check"})
    runs = []
    for _ in range(2):
        result = subprocess.run(
            [
                str(VENV_BIN / "ansible-playbook"),
                "-i",
                str(inventory),
                f"{FQCN}.environments",
                "-e",
                extra,
            ],
            cwd=tmp_path,
            env=outside,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
        runs.append(result.stdout)
    assert re.search(r"changed=0\s", runs[1].split("PLAY RECAP", 1)[1]), runs[1][-2000:]
    container = fleet.container("c-claude")
    claude_md = container.exec_run(["cat", "/config/claude/CLAUDE.md"]).output.decode()
    assert "collection-check" in claude_md


def test_every_playbook_is_addressable_by_its_collection_name(tarball: Path) -> None:
    """A collection playbook is named by its file name, which must be an identifier; the one
    hyphenated name kept for old command lines only imports its addressable twin."""
    names = {Path(n).name for n in _names(tarball) if re.fullmatch(r"playbooks/[^/]+\.yml", n)}
    assert "docker_host.yml" in names
    aliases = {n for n in names if not n[: -len(".yml")].isidentifier()}
    assert aliases == {"docker-host.yml"}
    (play,) = yaml.safe_load((REPO / "playbooks" / "docker-host.yml").read_text())
    assert play["ansible.builtin.import_playbook"] == "docker_host.yml"


def test_the_docker_host_playbook_runs_by_fqcn_and_validates_first(
    outside: dict[str, str], tmp_path: Path
) -> None:
    """`ansible-playbook dockyard.agents.docker_host` from outside the repository: found,
    and its up-front validation (which reads the roles next to the collection's playbooks)
    refuses a misspelled variable before any task of the role runs. Check mode, so even a
    validation that let it through would change nothing on this machine."""
    command = [
        str(VENV_BIN / "ansible-playbook"),
        "-i",
        "localhost,",
        "-c",
        "local",
        f"{FQCN}.docker_host",
    ]
    listed = subprocess.run(
        [*command, "--list-tasks"],
        cwd=tmp_path,
        env=outside,
        capture_output=True,
        text=True,
        check=False,
    )
    assert listed.returncode == 0, listed.stdout[-2000:] + listed.stderr[-2000:]
    assert "docker_host : Install the Docker engine" in listed.stdout
    extra = {
        "ansible_become": False,
        "ansible_python_interpreter": str(VENV_BIN / "python"),
        "docker_host_log_max_fiel": 5,
        "docker_host_api_timeout": 0,
    }
    run = subprocess.run(
        [*command, "--check", "-e", json.dumps(extra)],
        cwd=tmp_path,
        env=outside,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    output = run.stdout + run.stderr
    assert run.returncode != 0, output[-3000:]
    assert (
        "docker_host_log_max_fiel: not a variable of the role docker_host"
        " (did you mean docker_host_log_max_file?)" in output
    ), output[-3000:]
    assert "docker_host_api_timeout" in output
    assert "Install the Docker engine" not in output


def test_the_inventory_plugin_documents_its_examples_and_file_name(
    outside: dict[str, str], tmp_path: Path
) -> None:
    """`ansible-doc` of the installed plugin shows EXAMPLES and the file-name rule, the
    examples use only documented options, and the rule is the one the plugin applies:
    the first example, pointed at a real directory, is read under both documented
    suffixes and ignored under any other name."""
    doc = subprocess.run(
        [str(VENV_BIN / "ansible-doc"), "-t", "inventory", "--json", f"{FQCN}.dockyard_manifests"],
        cwd=tmp_path,
        env=outside,
        capture_output=True,
        text=True,
        check=True,
    )
    entry = json.loads(doc.stdout)[f"{FQCN}.dockyard_manifests"]
    description = " ".join(entry["doc"]["description"])
    assert "dockyard_manifests.yml" in description
    assert "dockyard_manifests.yaml" in description
    examples = list(yaml.safe_load_all(entry["examples"]))
    assert len(examples) >= 2
    documented = set(entry["doc"]["options"])
    for example in examples:
        assert set(example) <= documented, set(example) - documented
        assert example["plugin"] == f"{FQCN}.dockyard_manifests"
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    first = {**examples[0], "manifest_dirs": [str(manifests)]}
    for name, read in (
        ("team.dockyard_manifests.yml", True),
        ("team.dockyard_manifests.yaml", True),
        ("team.yml", False),
    ):
        path = tmp_path / name
        path.write_text(yaml.safe_dump(first))
        listed = subprocess.run(
            [str(VENV_BIN / "ansible-inventory"), "-i", str(path), "--list"],
            cwd=tmp_path,
            env={**outside, "ANSIBLE_INVENTORY_UNPARSED_FAILED": "true"},
            capture_output=True,
            text=True,
            check=False,
        )
        assert (listed.returncode == 0) is read, (name, listed.stderr[-6000:])
