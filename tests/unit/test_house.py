"""The house: one import name for the package, whatever file or doc names it.

The folder ``components/`` installs as ``dockyard``; importing it under its folder name
would load every module twice (``components.config.ConfigError`` is not
``dockyard.config.ConfigError``), so nothing in the repository may do it.
"""

from __future__ import annotations

import re
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
