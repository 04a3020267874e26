"""The documentation stays true to the code: links resolve, every stack config key is
documented, the published schema is the shipped one."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from pydantic import BaseModel
from pydantic.alias_generators import to_camel

from dockyard import config
from dockyard import manifest as contract

REPO = Path(__file__).resolve().parents[2]
DOCS = sorted((REPO / "docs").glob("*.md"))
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


@pytest.mark.parametrize("page", [REPO / "README.md", *DOCS], ids=lambda p: p.name)
def test_relative_links_resolve(page: Path) -> None:
    broken = [
        target
        for target in LINK.findall(page.read_text())
        if not target.startswith(("http://", "https://", "mailto:"))
        and not (page.parent / target).exists()
    ]
    assert broken == [], f"{page.name} links to missing files: {broken}"


def test_readme_links_every_doc() -> None:
    readme = (REPO / "README.md").read_text()
    assert [p.name for p in DOCS if f"(docs/{p.name})" not in readme] == []


def _keys(model: type[BaseModel]) -> set[str]:
    return {to_camel(name) for name in model.model_fields}


def test_stacks_doc_names_every_config_key() -> None:
    doc = (REPO / "docs" / "stacks.md").read_text()
    expected = {f"dockyard:{key}" for key in config.TOP_LEVEL_KEYS}
    expected |= {f"`{key}`" for key in _keys(config.Environment)}
    expected |= {f"`{key}`" for key in _keys(config.Limits)} - {"`nofileSoft`", "`nofileHard`"}
    expected |= {"`nofileSoft` / `nofileHard`"}
    expected |= {f"`{key}`" for key in _keys(config.Healthcheck)}
    expected |= {f"`{key}`" for key in _keys(config.ImageSource)}
    missing = sorted(key for key in expected if key not in doc)
    assert missing == [], f"docs/stacks.md does not document {missing}"
    for name in config.BUILTIN_PROFILES:
        assert f"`{name}`" in doc


def test_manifest_doc_publishes_the_shipped_schema() -> None:
    doc = (REPO / "docs" / "manifest.md").read_text()
    block = doc.split("<!-- manifest-schema -->", 1)[1].split("```json", 1)[1].split("```", 1)[0]
    assert json.loads(block) == contract.schema()
    for key in contract.schema()["required"]:
        assert f"| `{key}" in doc, f"docs/manifest.md has no row for {key}"
