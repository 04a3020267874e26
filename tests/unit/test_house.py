"""The house: one import name for the package, whatever file or doc names it.

The folder ``components/`` installs as ``dockyard``; importing it under its folder name
would load every module twice (``components.config.ConfigError`` is not
``dockyard.config.ConfigError``), so nothing in the repository may do it.
"""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SKIP = {".venv", ".git", "node_modules", "build", "dist", "__pycache__"}
FOLDER_IMPORT = re.compile(
    r"^\s*(?:from\s+components(?:\.|\s+import\b)|import\s+components\b)|-m\s+components\.",
    re.MULTILINE,
)


def _files(*suffixes: str) -> list[Path]:
    return [
        path
        for path in REPO.rglob("*")
        if path.suffix in suffixes
        and path.is_file()
        and not SKIP.intersection(path.relative_to(REPO).parts)
    ]


def test_nothing_imports_the_package_by_its_folder_name() -> None:
    offenders = [
        f"{path.relative_to(REPO)}:{text[: match.start()].count(chr(10)) + 1}"
        for path in _files(".py", ".md", ".yml", ".yaml", ".j2", ".toml", ".cfg")
        if path != Path(__file__)
        for text in [path.read_text(encoding="utf-8", errors="replace")]
        for match in FOLDER_IMPORT.finditer(text)
    ]
    makefile = (REPO / "Makefile").read_text()
    offenders += [f"Makefile: {m.group(0)}" for m in FOLDER_IMPORT.finditer(makefile)]
    assert not offenders, f"import the package as `dockyard`, never `components`: {offenders}"


def test_the_folder_import_check_catches_each_form() -> None:
    """The pattern above is the whole test: each way of naming the folder must match."""
    for line in (
        "import components",
        "from components import config",
        "from components.config import parse",
        "    from components.sessions import Sessions",
        "python -m components.manifest write",
    ):
        assert FOLDER_IMPORT.search(line), line
    for line in ("import dockyard", "'..' components)", "from dockyard import components"):
        assert not FOLDER_IMPORT.search(line), line


def test_a_fresh_clone_installs_the_package_for_pulumi() -> None:
    """Pulumi creates the project's and the provider's virtualenv from requirements.txt
    (toolchain pip): that file must install this checkout as ``dockyard``."""
    lines = [
        line.strip()
        for line in (REPO / "requirements.txt").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert lines == ["-e ."]
    for name in ("Pulumi.yaml", "PulumiPlugin.yaml"):
        text = (REPO / name).read_text()
        assert "toolchain: pip" in text
        assert "virtualenv: .venv" in text


# --- Layers and late imports ------------------------------------------------------------------

# A module imported inside a function, and why. Only two reasons hold: a heavy SDK that
# `dockyard --help` and the host scripts should not pay for, or an optional extra. Never
# to dodge an import cycle (import-linter's contracts count these imports too).
HEAVY_SDKS = ("pulumi", "pulumi_docker", "pulumi_command", "docker", "yaml")
LATE_INTERNAL = {
    ("dockyard.program", "dockyard.kubernetes"): (
        "pulumi_kubernetes is the optional extra dockyard[kubernetes]: only a kubernetes "
        "stack loads it"
    ),
    ("dockyard.sessions.driver", "dockyard.program"): (
        "the Pulumi program loads pulumi_docker and pulumi_command: only a driver that "
        "applies a plan pays for them"
    ),
    ("dockyard.sessions.driver", "dockyard.image"): (
        "the image component loads pulumi_docker: only an image build pays for it"
    ),
    ("dockyard.api.commands", "dockyard.api.store"): (
        "SQLAlchemy and Alembic: only `dockyard keys` and `dockyard serve` pay for them"
    ),
    ("dockyard.api.commands", "dockyard.api.app"): (
        "FastAPI and the routers: only `dockyard serve` pays for them"
    ),
    ("dockyard.api.commands", "uvicorn"): "the ASGI server: only `dockyard serve` pays for it",
    ("dockyard.api.commands", "dockyard.api.header_timeout"): (
        "uvicorn's httptools protocol: only `dockyard serve` pays for it"
    ),
    ("dockyard.cli.remote", "dockyard.client"): (
        "httpx (about 150 ms): only a verb given --server pays for it"
    ),
}


def _late_imports() -> list[tuple[str, str]]:
    """(module, imported) for every import inside a function body under components/."""
    found = []
    for path in sorted((REPO / "components").rglob("*.py")):
        parts = path.relative_to(REPO / "components").with_suffix("").parts
        module = ".".join(("dockyard", *(p for p in parts if p != "__init__")))
        package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for inner in ast.walk(node):
                if isinstance(inner, ast.Import):
                    found += [(module, alias.name) for alias in inner.names]
                elif isinstance(inner, ast.ImportFrom):
                    base = package
                    for _ in range(max(inner.level - 1, 0)):
                        base = base.rsplit(".", 1)[0]
                    target = inner.module or ""
                    if inner.level:
                        target = f"{base}.{target}" if target else base
                    if target == "dockyard" or (inner.level and not inner.module):
                        found += [(module, f"{target}.{alias.name}") for alias in inner.names]
                    else:
                        found.append((module, target))
    return found


def test_late_imports_are_heavy_sdks_or_listed_with_their_reason() -> None:
    unexplained = sorted(
        {
            (module, imported)
            for module, imported in _late_imports()
            if imported.split(".")[0] not in HEAVY_SDKS and (module, imported) not in LATE_INTERNAL
        }
    )
    assert not unexplained, (
        "imports inside functions need a reason (a heavy SDK, or LATE_INTERNAL with why); "
        f"move these to the top of their module: {unexplained}"
    )
    stale = set(LATE_INTERNAL) - set(_late_imports())
    assert not stale, f"LATE_INTERNAL lists imports that no longer exist: {sorted(stale)}"


def test_the_layer_contracts_are_declared_and_run_by_make_lint() -> None:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]
    contracts = {c["id"]: c for c in config["contracts"]}
    assert contracts["layers"]["type"] == "layers"
    assert contracts["layers"]["exhaustive"] is True
    layers = contracts["layers"]["layers"]
    service = layers.index("sessions")
    faces = {name.strip(" ()") for layer in layers[:service] for name in layer.split("|")}
    assert {"cli", "api", "provider", "workspace_backup"} <= faces
    assert layers[service + 1] == "program"
    assert "ignore_imports" not in contracts["layers"], "no exceptions to the layers"
    assert "config" in layers
    assert layers[-1].split(":")[0].strip() == "contract"
    assert contracts["cycles"]["type"] == "acyclic_siblings"
    assert "$(BIN)/lint-imports" in (REPO / "Makefile").read_text()
