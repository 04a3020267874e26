"""What README.md and docs/ say matches the code, generically, so drift is caught where it
happens (a module moved, a key renamed, a heading reworded):

- every shell block is either run by a test (`<!-- docs-test: run NAME -->` before it, NAME
  in RUN_BLOCKS) or says why it cannot run here (`<!-- docs-test: skip REASON -->`);
- every relative link resolves, anchors included (GitHub's heading slugs);
- every repository path a doc names in backticks exists (globs and <placeholders> match
  something), so a module that moves or splits is caught;
- every stack key (`dockyard:key`), every "allowed:" key list, every role variable and
  every YAML stack example agrees with the configuration model and the roles' specs;
- the audit actions and the component package's inputs are the code's.
"""

from __future__ import annotations

import ast
import glob
import importlib
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from pydantic.alias_generators import to_camel

from dockyard import config

REPO = Path(__file__).resolve().parents[2]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SHELL = {"sh", "bash", "shell", "console"}
MARKER = re.compile(r"^\s*<!-- docs-test: (run|skip) (.*?)\s*-->\s*$")
# Blocks a test runs, by the NAME in their marker: where the test is.
RUN_BLOCKS = {
    "install": "tests/images/test_docs_examples.py::test_readme_install_lines_work_from_a_clean_virtualenv",
    "shell-setup": "tests/unit/test_docs_match_code.py::test_readme_shell_setup_is_what_make_prints",
}
# Top-level folders of the repository: a backticked token starting with one is a path.
TOP = [
    *sorted(
        p.name + "/"
        for p in REPO.iterdir()
        if p.is_dir()
        and not p.name.startswith((".venv", ".git", "__", ".pytest", ".ruff"))
        and not p.name.endswith(".egg-info")
    ),
    ".github/",
    ".ci/",
]
ROLES = sorted(p.parent.parent.name for p in (REPO / "roles").glob("*/meta/argument_specs.yml"))


@dataclass
class Block:
    page: Path
    line: int  # 1-based line of the opening fence
    language: str
    text: str
    marker: tuple[str, str] | None

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    lines = page.read_text().splitlines()
    found, i = [], 0
    while i < len(lines):
        opening = re.match(r"^(\s*)(`{3,})(\S*)", lines[i])
        if opening:
            indent, fence, language = opening.groups()
            end = i + 1
            while not re.match(rf"^\s*{fence}\s*$", lines[end]):
                end += 1
            before = next((lines[k] for k in range(i - 1, -1, -1) if lines[k].strip()), "")
            marker = MARKER.match(before)
            body = "\n".join(line.removeprefix(indent) for line in lines[i + 1 : end])
            found.append(
                Block(page, i + 1, language, body, marker.groups() if marker else None)  # type: ignore[arg-type]
            )
            i = end
        i += 1
    return found


ALL_BLOCKS = [b for page in PAGES for b in blocks(page)]


def run_block(name: str) -> Block:
    """The block a test runs, by its marker's NAME."""
    (block,) = [b for b in ALL_BLOCKS if b.marker == ("run", name)]
    return block


# --- command blocks: run, or marked with the reason they cannot run here ------------------


def test_every_shell_block_is_run_or_says_why_not() -> None:
    problems = []
    for block in ALL_BLOCKS:
        if block.language not in SHELL:
            continue
        if block.marker is None:
            problems.append(f"{block.where}: a shell block neither run nor marked")
        elif block.marker[0] == "skip" and len(block.marker[1].split()) < 3:
            problems.append(f"{block.where}: skip without a reason")
        elif block.marker[0] == "run" and block.marker[1] not in RUN_BLOCKS:
            problems.append(f"{block.where}: no test runs {block.marker[1]!r}")
    assert problems == []


def test_every_run_marker_has_its_test_and_every_test_its_block() -> None:
    named = sorted(b.marker[1] for b in ALL_BLOCKS if b.marker and b.marker[0] == "run")
    assert named == sorted(RUN_BLOCKS)
    for name, where in RUN_BLOCKS.items():
        path, function = where.split("::")
        source = (REPO / path).read_text()
        assert f"def {function}(" in source, where
        assert f'run_block("{name}")' in source, f"{where} does not read its block"


def test_readme_shell_setup_is_what_make_prints(tmp_path: Path) -> None:
    """The README's lines after `make up`, run in bash from the checkout with a fresh HOME,
    set what `make shell-setup` (printed by `make up`) sets: the passphrase file the
    Makefile generates and a PATH on which `dockyard` is .venv/bin/dockyard."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PULUMI_CONFIG_PASSPHRASE", "PULUMI_CONFIG_PASSPHRASE_FILE")
    }
    env.update(HOME=str(tmp_path), PATH="/usr/bin:/bin")
    probe = 'printf "%s\\n" "$PULUMI_CONFIG_PASSPHRASE_FILE" "$(command -v dockyard)" "$(command -v pulumi || true)"'

    def evaluated(script: str) -> list[str]:
        run = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", f"{script}\n{probe}"],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        return run.stdout.splitlines()

    printed = subprocess.run(
        ["make", "--no-print-directory", "-s", "shell-setup"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert printed.count("export ") == 2, printed
    from_readme = evaluated(run_block("shell-setup").text)
    assert from_readme == evaluated(printed)
    assert from_readme[0] == f"{tmp_path}/.config/dockyard/pulumi-passphrase"
    assert from_readme[1] == str(REPO / ".venv" / "bin" / "dockyard")
    # The Makefile's own default is the same file.
    assert (
        "PASSPHRASE_FILE ?= $(HOME)/.config/dockyard/pulumi-passphrase"
        in (REPO / "Makefile").read_text()
    )


# --- links and anchors --------------------------------------------------------------------


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, markup and punctuation dropped, spaces
    to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip()).lower()
    text = re.sub(r"[^\w\- ]", "", text.replace("`", ""))
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"^\s*```.*?^\s*```", "", page.read_text(), flags=re.S | re.M)
    found, seen = set(), {}
    for heading in re.findall(r"^#{1,6} (.+)$", text, re.M):
        base = slug(heading)
        count = seen.get(base, 0)
        found.add(base if count == 0 else f"{base}-{count}")
        seen[base] = count + 1
    found |= set(re.findall(r'<a (?:name|id)="([^"]+)"', text))
    return found


def test_slugs_are_githubs() -> None:
    assert slug("The base image is missing (air-gapped sites)") == (
        "the-base-image-is-missing-air-gapped-sites"
    )
    assert slug("TLS errors behind a proxy: `self-signed certificate in certificate chain`") == (
        "tls-errors-behind-a-proxy-self-signed-certificate-in-certificate-chain"
    )


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_and_anchor_resolves(page: Path) -> None:
    text = re.sub(r"^\s*```.*?^\s*```", "", page.read_text(), flags=re.S | re.M)
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no such file")
        elif anchor and (file.suffix != ".md" or anchor not in anchors(file)):
            broken.append(f"{target}: no such heading in {file.relative_to(REPO)}")
    assert broken == []


# --- paths a doc names --------------------------------------------------------------------


def named_paths(page: Path) -> list[tuple[int, str]]:
    """Backticked tokens that are repository paths: those that start with a top-level
    folder; `dockyard/...` (the package's import path: components/); and, in a table row
    whose first cell is a folder (README's layout), the files and folders it names there
    (`program.py`, `config/`), relative to that folder."""
    found = []
    for number, line in enumerate(page.read_text().splitlines(), 1):
        cells = line.split("|")
        folder = re.fullmatch(r"\s*`([\w./-]+/)`\s*", cells[1]) if len(cells) > 2 else None
        for token in re.findall(r"`([^`\s]+)`", line):
            token = token.rstrip(".,:;").split("::")[0].split(":")[0]
            if token.startswith("dockyard/"):
                token = "components/" + token.removeprefix("dockyard/")
            if token.startswith(tuple(TOP)):
                found.append((number, token))
            elif folder and re.fullmatch(r"[\w*<>.-]+(\.py|/)", token):
                found.append((number, folder.group(1) + token))
    return found


def named_modules(page: Path) -> list[tuple[int, str]]:
    """Backticked dotted names in the package: `dockyard.sessions`, `dockyard.program.run`
    (a name whose first part is a module of components/; container labels such as
    `dockyard.egress.allow` and the collection's `dockyard.agents.*` are not code)."""
    from dockyard import contract

    modules = {p.stem for p in (REPO / "components").glob("*.py")}
    modules |= {p.name for p in (REPO / "components").iterdir() if (p / "__init__.py").exists()}
    return [
        (number, token)
        for number, line in enumerate(page.read_text().splitlines(), 1)
        for token in re.findall(r"`(dockyard(?:\.[A-Za-z_]\w*)+)`", line)
        if token.split(".")[1] in modules and token not in contract.LABELS
    ]


def resolves(dotted: str) -> bool:
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            target = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            if not hasattr(target, name):
                return False
            target = getattr(target, name)
        return True
    return False


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_module_a_doc_names_exists(page: Path) -> None:
    missing = [f"{page.name}:{n}: {t}" for n, t in named_modules(page) if not resolves(t)]
    assert missing == []


# Files a doc tells the user to create (a stack of their own), not files of the repository.
USER_FILES = re.compile(r"stacks/Pulumi\.[\w<>-]+\.yaml")


def generated() -> set[str]:
    """Paths the repository's .gitignore names outright (output a command writes, such
    as benchmarks/results/): a clean clone does not have them, and a doc may name them."""
    lines = (REPO / ".gitignore").read_text().splitlines()
    return {line.strip().strip("/") for line in lines if line.strip() and line[0] not in "#!*"}


def exists(token: str) -> bool:
    """The path, a glob of it (<placeholder> and {a,b} as wildcards), or a path inside
    every role (`meta/argument_specs.yml`) exists, or it is output the .gitignore names."""
    if USER_FILES.fullmatch(token) or token.strip("/") in generated():
        return True
    pattern = re.sub(r"<[^>]*>", "*", token)
    pattern = re.sub(r"\{[^}]*\}", "*", pattern)
    return any(glob.glob(str(REPO / p)) for p in (pattern, f"roles/*/{pattern}"))


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_repository_path_a_doc_names_exists(page: Path) -> None:
    missing = [f"{page.name}:{n}: {token}" for n, token in named_paths(page) if not exists(token)]
    assert missing == []


def test_the_path_check_catches_a_moved_module(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "See `components/config.py` and `roles/<role>/meta/argument_specs.yml`.\n"
        "| `components/` | `program.py`, `config/`, `model.py` |\n"
        "`dockyard/nosuch.py` and `dockyard.config.nosuch` and `dockyard.sessions`\n"
    )
    assert [t for _, t in named_paths(page) if not exists(t)] == [
        "components/config.py",
        "components/model.py",
        "components/nosuch.py",
    ]
    assert [t for _, t in named_modules(page) if not resolves(t)] == ["dockyard.config.nosuch"]


# --- configuration keys and role variables ------------------------------------------------


def environment_keys() -> set[str]:
    return {to_camel(name) for name in config.Environment.model_fields}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_stack_key_a_doc_names_exists(page: Path) -> None:
    text = page.read_text()
    named = set(re.findall(r"\bdockyard:([a-z][A-Za-z]*)\b", text))
    # `dockyard:index:...` are Pulumi type tokens, not stack keys.
    named -= {"index"}
    assert sorted(named - set(config.TOP_LEVEL_KEYS)) == []


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_allowed_key_list_is_the_models(page: Path) -> None:
    """An error example listing an environment's allowed keys lists exactly the model's."""
    for listed in re.findall(r"unknown key \(allowed: ([^;)]*)", page.read_text()):
        keys = {k.strip() for k in listed.split(",")}
        if "sessionId" in keys:
            assert keys == environment_keys()


def role_options() -> dict[str, set[str]]:
    return {
        role: set(
            yaml.safe_load((REPO / "roles" / role / "meta" / "argument_specs.yml").read_text())[
                "argument_specs"
            ]["main"]["options"]
        )
        for role in ROLES
    }


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_role_variable_a_doc_names_exists(page: Path) -> None:
    options = role_options()
    text = page.read_text()
    unknown = sorted(
        name
        for role in ROLES
        if role != "host_common"
        for name in re.findall(rf"`({role}_[a-z0-9_]+)", text)
        if name not in options[role]
    )
    assert unknown == []


def stack_examples() -> list[Block]:
    found = []
    for block in ALL_BLOCKS:
        if block.language not in ("yaml", "yml"):
            continue
        try:
            data = yaml.safe_load(block.text)
        except yaml.YAMLError:
            continue
        if isinstance(data, dict) and any(
            str(k).startswith("dockyard:") for k in (data.get("config") or {})
        ):
            found.append(block)
    return found


def test_the_stack_examples_are_found() -> None:
    assert any(b.page.name == "README.md" for b in stack_examples())
    assert len(stack_examples()) >= 3


@pytest.mark.parametrize("block", stack_examples(), ids=lambda b: b.where)
def test_every_stack_example_is_valid(block: Block, tmp_path: Path) -> None:
    """Each YAML example with a `config:` of dockyard keys passes `dockyard validate`
    (placeholders in `<...>` are not allowed in a stack example)."""
    stack = tmp_path / "stacks" / "Pulumi.example.yaml"
    stack.parent.mkdir()
    stack.write_text(block.text)
    run = subprocess.run(
        [str(REPO / ".venv" / "bin" / "dockyard"), "validate", "--stack", str(stack)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, f"{block.where}:\n{run.stdout}{run.stderr}"


# --- audit actions, component inputs ------------------------------------------------------


def audit_actions() -> set[str]:
    """Action names the code writes to the audit trail: string arguments of calls to
    `recorded`, `_audit`, `_audited`, `audit` in the package and the host scripts."""
    found = set()
    sources = [*(REPO / "components").rglob("*.py"), *(REPO / "roles").glob("*/files/*.py")]
    for source in sources:
        for node in ast.walk(ast.parse(source.read_text())):
            if not isinstance(node, ast.Call):
                continue
            name = getattr(node.func, "attr", getattr(node.func, "id", ""))
            if name not in ("recorded", "_audit", "_audited", "audit"):
                continue
            for arg in node.args[:2]:
                if (
                    isinstance(arg, ast.Constant)
                    and isinstance(arg.value, str)
                    and re.fullmatch(r"[a-z]+(-[a-z]+)*", arg.value)
                ):
                    found.add(arg.value)
    return found


def test_sessions_doc_names_every_audit_action() -> None:
    actions = audit_actions()
    assert {"create", "destroy", "ssh-certificate"} <= actions, actions
    section = (REPO / "docs" / "sessions.md").read_text().split("## Audit trail", 1)[1]
    section = section.split("\n## ", 1)[0]
    assert sorted(a for a in actions if f"`{a}`" not in section) == []


def test_packaging_doc_lists_every_component_input() -> None:
    from dockyard import provider

    row = next(
        line
        for line in (REPO / "docs" / "packaging.md").read_text().splitlines()
        if line.startswith("| `dockyard:index:AgentEnvironment`")
    )
    inputs = {to_camel(n) for n in provider.AgentEnvironmentInputs.__annotations__}
    assert sorted(i for i in inputs if f"`{i}`" not in row) == []
    image_row = next(
        line
        for line in (REPO / "docs" / "packaging.md").read_text().splitlines()
        if line.startswith("| `dockyard:index:AgentImage`")
    )
    image_inputs = {to_camel(n) for n in provider.AgentImageInputs.__annotations__}
    assert sorted(i for i in image_inputs if f"`{i}`" not in image_row) == []


def test_readme_versions_are_the_projects() -> None:
    """Versions a README command names (the wheel, the collection tarball, the git tag)."""
    version = (REPO / "components" / "VERSION").read_text().strip()
    readme = (REPO / "README.md").read_text()
    named = set(re.findall(r"dockyard(?:-agents)?-(\d+\.\d+\.\d+)", readme))
    named |= set(re.findall(r"@v(\d+\.\d+\.\d+)", readme))
    assert named == {version}
