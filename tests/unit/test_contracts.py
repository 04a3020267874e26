"""Contract tests: wherever one fact crosses a boundary (Python, shell, Make, Ansible, a
GitHub workflow, a Dockerfile, a JSON Schema, the docs), each side is read *as that side
reads it* — the shell's own regex engine, Ansible's own templating, the workflow's own
step — and the answers are compared. A fact with one source is shown to reach every
reader; a copy that has to stay (a Dockerfile ARG default) is shown to equal its source.

Image side, the facts pinned here:
- pinned build args (agent CLI versions, npm, base image): images/versions.env, as read
  by components/image.py, `make image`, the core-image workflow and the agent_tooling
  role's defaults; equal to the Dockerfile's ARG defaults, the base image defaults of
  images/base/bootstrap.sh and the docker_host role, and docs/core-image.md; accepted
  by the role's own value checks;
- session ids: dockyard.config.SESSION_ID == the manifest schema's sessionId (under
  Python's jsonschema and ECMA-262) == the entrypoint's check;
- environment variable names: dockyard.config.ENV_NAME == the schema's requested.env;
  the entrypoint's secret-file check takes every one of them;
- environment ids and container names: every one dockyard derives is accepted by the
  schema, whose container.name is Docker's own name grammar;
- manifest contract v1: the reference example validates as is; dockyard's writer is
  stricter than the schema and says so.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from ansible.plugins.loader import init_plugin_loader

from dockyard import config
from dockyard import contract as facts
from dockyard import manifest as contract
from dockyard.assets import PROVENANCE_ARGS
from dockyard.environment import resource_prefix
from dockyard.image import VARIANT_ARGS, default_build_args, pinned_versions, read_build_args
from tests.support.scripts import load_script

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
ENTRYPOINT = REPO / "images" / "core" / "entrypoint.sh"
DOCKERFILE = REPO / "images" / "core" / "Dockerfile"
AGENT_TOOLING = REPO / "roles" / "agent_tooling"


def schema_property(*path: str) -> dict[str, Any]:
    node = contract.schema()
    for key in path:
        node = node["properties"][key] if key != "items" else node["items"]
    return node


# --- Image versions: images/versions.env ------------------------------------------------


def test_versions_file_holds_the_pinned_build_args() -> None:
    pinned = pinned_versions()
    assert set(pinned) >= {"BASE_IMAGE", "NPM_VERSION", "CLAUDE_CODE_VERSION", "CODEX_VERSION"}
    # The variants overlay it: a name they share is one they mean to change.
    for variant, path in VARIANT_ARGS.items():
        assert set(read_build_args(path)) <= set(pinned), f"{variant}: unknown build args"


def test_versions_file_format_is_refused_when_readers_would_differ(tmp_path: Path) -> None:
    """The strict format is what keeps Make, Ansible and the workflow reading one value."""
    for line in ('CODEX_VERSION="0.169.0"', "CODEX_VERSION = 0.169.0", "codex=1", "X=$(id)"):
        path = tmp_path / "versions.env"
        path.write_text(f"# pinned\n{line}\n")
        with pytest.raises(ValueError, match=r"versions.env:2: .* is not allowed \(allowed: "):
            read_build_args(path)
    path.write_text("A=1\nA=2\n")
    with pytest.raises(ValueError, match=r"versions.env:2: 'A=2' repeats a name"):
        read_build_args(path)


def test_dockerfile_arg_defaults_equal_the_pinned_versions() -> None:
    """Defaults stay so a plain `docker build images/<name>` works; they must not drift.
    A name is pinned for the Dockerfile that declares it (core, or a variant's)."""
    declared: dict[str, list[str]] = {}
    for dockerfile in sorted(DOCKERFILE.parents[1].glob("*/Dockerfile")):
        for match in re.finditer(r"^ARG ([A-Z][A-Z0-9_]*)=(\S+)$", dockerfile.read_text(), re.M):
            declared.setdefault(match.group(1), []).append(match.group(2))
    for name, value in pinned_versions().items():
        assert name in declared, f"images/versions.env pins {name}, no ARG of a Dockerfile"
        assert set(declared[name]) == {value}, f"Dockerfile ARG {name}={declared[name]}"


def test_make_image_passes_the_pinned_versions() -> None:
    env = {k: v for k, v in os.environ.items() if k not in {"BASE_IMAGE", "IMAGE", "MAKEFLAGS"}}
    dry = subprocess.run(
        ["make", "--no-print-directory", "-n", "image"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    command = " ".join(dry.stdout.replace("\\\n", " ").split())
    build = command[command.index("docker build") :]
    passed = dict(arg.split("=", 1) for arg in re.findall(r"--build-arg (\S+)", build))
    # The pinned versions, plus the provenance labels' values (as every build path sets).
    assert {k: v for k, v in passed.items() if k not in PROVENANCE_ARGS} == pinned_versions()
    assert sorted(k for k in passed if k in PROVENANCE_ARGS) == sorted(PROVENANCE_ARGS)
    assert len(re.findall(r"--build-arg ", build)) == len(passed), build  # each once


@pytest.mark.parametrize("variant", ["core", *VARIANT_ARGS])
def test_core_image_workflow_builds_with_the_files_build_args(variant: str, tmp_path: Path) -> None:
    """The workflow's own step, run as GitHub runs it (bash -eo pipefail)."""
    workflow = yaml.safe_load((REPO / ".github" / "workflows" / "core-image.yml").read_text())
    steps = workflow["jobs"]["build"]["steps"]
    step = next(s for s in steps if s.get("id") == "args")
    assert step["env"] == {"VARIANT": "${{ matrix.variant }}"}
    output = tmp_path / "github_output"
    subprocess.run(
        ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step["run"]],
        cwd=REPO,
        env={"PATH": os.environ["PATH"], "VARIANT": variant, "GITHUB_OUTPUT": str(output)},
        check=True,
    )
    match = re.fullmatch(r"args<<(\S+)\n(.*)\n\1\n", output.read_text(), re.S)
    assert match, output.read_text()
    lines = match.group(2).splitlines()
    args = dict(line.split("=", 1) for line in lines)
    assert len(args) == len(lines), f"a build arg is passed twice: {lines}"
    pinned = {k: v for k, v in default_build_args(variant).items() if k not in PROVENANCE_ARGS}
    assert args == pinned
    # The provenance labels' values come from their own step, as every build path sets them.
    step = next(s for s in steps if s.get("id") == "provenance")
    output.unlink()
    subprocess.run(
        ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step["run"]],
        cwd=REPO,
        env={
            "PATH": os.environ["PATH"],
            "GITHUB_OUTPUT": str(output),
            "GITHUB_SHA": "0" * 40,
            "GITHUB_SERVER_URL": "https://github.com",
            "GITHUB_REPOSITORY": "acme/dockyard",
        },
        check=True,
    )
    match = re.fullmatch(r"args<<(\S+)\n(.*)\n\1\n", output.read_text(), re.S)
    assert match, output.read_text()
    labels = dict(line.split("=", 1) for line in match.group(2).splitlines())
    assert sorted(labels) == sorted(PROVENANCE_ARGS)
    assert labels["DOCKYARD_VERSION"] == (REPO / "components" / "VERSION").read_text().strip()
    assert labels["DOCKYARD_SOURCE"] == "https://github.com/acme/dockyard"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", labels["DOCKYARD_CREATED"])


def render_role_vars(role: str, names: Iterable[str], **context: str) -> dict[str, Any]:
    """``names`` from the role's defaults, templated by Ansible itself with ``context``
    (e.g. role_path, as inside the role, or only playbook_dir, as in the playbooks'
    up-front validation)."""
    expression = "{{ {" + ", ".join(f"'{n}': {n}" for n in names) + "} | to_json }}"
    command = [
        str(VENV_BIN / "ansible"),
        "localhost",
        "-i",
        "localhost,",
        "-c",
        "local",
        "-m",
        "ansible.builtin.debug",
        "-a",
        f"msg={expression}",
        "-e",
        f"@{REPO / 'roles' / role / 'defaults' / 'main.yml'}",
    ]
    if "playbook_dir" in context:
        command += ["--playbook-dir", context.pop("playbook_dir")]
    for key, value in context.items():
        command += ["-e", f"{key}={value}"]
    run = subprocess.run(
        command,
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "ANSIBLE_STDOUT_CALLBACK": "json", "ANSIBLE_LOAD_CALLBACK_PLUGINS": "1"},
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    result = json.loads(run.stdout)["plays"][0]["tasks"][0]["hosts"]["localhost"]
    return dict(json.loads(result["msg"]))


@pytest.mark.parametrize(
    "context",
    [
        {"role_path": str(AGENT_TOOLING)},
        {"playbook_dir": str(REPO / "playbooks")},
    ],
    ids=["inside the role", "playbook validation"],
)
def test_agent_tooling_defaults_read_the_versions_file(context: dict[str, str]) -> None:
    names = {"agent_tooling_claude_version": "CLAUDE_CODE_VERSION"}
    names["agent_tooling_codex_version"] = "CODEX_VERSION"
    rendered = render_role_vars("agent_tooling", names, **context)
    pinned = pinned_versions()
    assert rendered == {var: pinned[arg] for var, arg in names.items()}


def test_agent_tooling_keeps_no_copy_of_the_versions() -> None:
    specs = yaml.safe_load((AGENT_TOOLING / "meta" / "argument_specs.yml").read_text())
    options = specs["argument_specs"]["main"]["options"]
    defaults = (AGENT_TOOLING / "defaults" / "main.yml").read_text()
    checks = yaml.safe_load((AGENT_TOOLING / "meta" / "value_checks.yml").read_text())
    for var, arg in (
        ("agent_tooling_claude_version", "CLAUDE_CODE_VERSION"),
        ("agent_tooling_codex_version", "CODEX_VERSION"),
    ):
        assert "default" not in options[var], f"argument_specs states a default for {var}"
        assert pinned_versions()[arg] not in defaults, f"defaults/main.yml copies {arg}"
        # The role's own format check takes the pinned version (it names a directory).
        assert re.search(checks[var]["pattern"], pinned_versions()[arg]), checks[var]


def test_base_image_defaults_elsewhere_equal_the_pinned_one() -> None:
    base = pinned_versions()["BASE_IMAGE"]
    bootstrap = (REPO / "images" / "base" / "bootstrap.sh").read_text()
    assert re.findall(r'tag="\$\{DOCKYARD_BASE_TAG:-([^}]+)\}"', bootstrap) == [base]
    rendered = render_role_vars(
        "docker_host", ["docker_host_base_image_tag"], role_path=str(REPO / "roles" / "docker_host")
    )
    assert rendered == {"docker_host_base_image_tag": base}


def test_core_image_doc_states_the_pinned_versions() -> None:
    doc = (REPO / "docs" / "core-image.md").read_text()
    stated: list[tuple[str, str]] = []
    for name in pinned_versions():
        stated += [(name, v) for v in re.findall(rf"\| `{name}` \| `([^`]+)` \|", doc)]
        stated += [(name, v) for v in re.findall(rf"`{name}`, default ([^\s)]+)", doc)]
    assert {name for name, _ in stated} >= {"CLAUDE_CODE_VERSION", "CODEX_VERSION", "NPM_VERSION"}
    assert [(n, v) for n, v in stated if pinned_versions()[n] != v] == []


# --- Names and patterns: config <-> entrypoint <-> manifest schema ------------------------
#
# Each source's pattern is read as text, and examples are generated from its structure (a
# sequence of character classes with bounds): every class boundary, the characters just
# outside each range, look-alikes outside ASCII, each length bound and one past it, and
# the newline tricks. Every source then judges the union of all sources' examples, each
# with its own engine.

HOSTILE = [" ", "\t", "\n", "/", ":", "$", "é", "\u0661", "\u212a", "\uff21", "\u00b2"]
"""Whitespace, path and shell characters; 'é'; an Arabic-Indic digit, which Python's
``\\d`` takes; the Kelvin sign, which case-insensitive matching folds to 'k'; a
full-width 'A'; a superscript two."""

CLASS_ITEM = re.compile(r"\[((?:\\.|[^\]\\])+)\](?:\{(\d+),(\d+)\}|([*+]))?")


@dataclass(frozen=True)
class ClassItem:
    members: frozenset[str]
    near: frozenset[str]
    low: int
    high: int | None


def class_members(text: str) -> tuple[set[str], set[str]]:
    """The characters of a bracket class and those just outside each of its ranges."""
    members: set[str] = set()
    edges: set[str] = set()
    chars = re.findall(r"\\.|.", text)
    chars = [c[-1] for c in chars]
    i = 0
    while i < len(chars):
        if i + 2 < len(chars) and chars[i + 1] == "-":
            low, high = ord(chars[i]), ord(chars[i + 2])
            members.update(chr(c) for c in range(low, high + 1))
            edges.update({chr(low - 1), chr(high + 1)})
            i += 3
        else:
            members.add(chars[i])
            edges.update({chr(ord(chars[i]) - 1), chr(ord(chars[i]) + 1)})
            i += 1
    return members, edges - members


def parse_simple_pattern(pattern: str) -> list[ClassItem]:
    body = pattern.removeprefix("^")
    for end in ("$(?!\\n)", "$"):
        if body.endswith(end):
            body = body.removesuffix(end)
            break
    items, pos = [], 0
    while pos < len(body):
        match = CLASS_ITEM.match(body, pos)
        assert match, (
            f"{pattern!r}: cannot read {body[pos:]!r} (the example generator reads [class]{{m,n}} sequences)"
        )
        members, near = class_members(match.group(1))
        if match.group(2):
            low, high = int(match.group(2)), int(match.group(3))
        else:
            low, high = {"*": (0, None), "+": (1, None), None: (1, 1)}[match.group(4)]
        items.append(ClassItem(frozenset(members), frozenset(near), low, high))
        pos = match.end()
    return items


def examples_from(pattern: str) -> set[str]:
    items = parse_simple_pattern(pattern)
    sample = [min(item.members) for item in items]

    def build(counts: list[int], replace: tuple[int, str] | None = None) -> str:
        parts = [sample[i] * n for i, n in enumerate(counts)]
        if replace is not None:
            index, char = replace
            parts[index] = char + parts[index][1:]
        return "".join(parts)

    base = [max(item.low, 1) for item in items]
    examples = {"", build([item.low for item in items]), build(base)}
    for index, item in enumerate(items):
        for char in sorted(item.members | item.near | set(HOSTILE)):
            examples.add(build(base, (index, char)))
        for length in filter(None, (item.high,)):
            for n in (length, length + 1):
                examples.add(build([n if i == index else c for i, c in enumerate(base)]))
    plain = build(base)
    examples |= {plain + "\n", "\n" + plain, plain + " ", plain[:1] + "\n" + plain[1:] + "x"}
    return {e for e in examples if "\0" not in e}


def bash_regex(source: Path, variable: str) -> str:
    """The regex a script's ``[[ "$variable" =~ ... ]]`` (or ``[[ ! ... ]]``) checks."""
    found = re.findall(rf'\[\[ !? ?"\${variable}" =~ (\S+) \]\]', source.read_text())
    assert len(found) == 1, f"{source.name}: expected one check of ${variable}, found {found}"
    return str(found[0])


def bash_judge(regex: str) -> Callable[[list[str]], list[bool]]:
    """Bash's own [[ =~ ]] (POSIX ERE) in the image's locale, one process for all."""

    def judge(candidates: list[str]) -> list[bool]:
        script = 're="$1"; while IFS= read -r -d "" s; do [[ $s =~ $re ]] && echo 1 || echo 0; done'
        run = subprocess.run(
            ["bash", "-c", script, "judge", regex],
            input="".join(c + "\0" for c in candidates),
            capture_output=True,
            text=True,
            env={"PATH": os.environ["PATH"], "LC_ALL": "C.UTF-8"},
            check=True,
        )
        return [line == "1" for line in run.stdout.splitlines()]

    return judge


def ecma_judge(pattern: str) -> Callable[[list[str]], list[bool]]:
    """ECMA-262, the dialect JSON Schema names (node's RegExp with the u flag), which the
    reference application's TypeScript validators use."""

    def judge(candidates: list[str]) -> list[bool]:
        node = shutil.which("node")
        if node is None:
            pytest.fail(
                "node is missing: the ECMA-262 side of the schema needs it (apt-get install nodejs)"
            )
        script = (
            "const [p, c] = JSON.parse(require('fs').readFileSync(0, 'utf8'));"
            "const r = new RegExp(p, 'u');"
            "process.stdout.write(JSON.stringify(c.map((s) => r.test(s))));"
        )
        run = subprocess.run(
            [node, "-e", script],
            input=json.dumps([pattern, candidates]),
            capture_output=True,
            text=True,
            check=True,
        )
        return [bool(x) for x in json.loads(run.stdout)]

    return judge


def python_judge(accepts: Callable[[str], bool]) -> Callable[[list[str]], list[bool]]:
    return lambda candidates: [accepts(c) for c in candidates]


def schema_accepts(subschema: dict[str, Any]) -> Callable[[str], bool]:
    return jsonschema.Draft202012Validator(subschema).is_valid


def config_accepts_session(session: str) -> bool:
    """The whole rule path: dockyard.config.parse, as `pulumi preview` runs it."""
    raw = {"dockyard:environments": [{"sessionId": session}]}
    try:
        config.parse(raw, stack="dev", cwd="/p")
    except config.ConfigError:
        return False
    return True


def verdicts(
    judges: dict[str, Callable[[list[str]], list[bool]]], candidates: list[str]
) -> dict[str, dict[str, bool]]:
    results = {name: judge(candidates) for name, judge in judges.items()}
    for name, result in results.items():
        assert len(result) == len(candidates), f"{name} judged {len(result)} of {len(candidates)}"
    return {c: {name: results[name][i] for name in judges} for i, c in enumerate(candidates)}


def session_sources() -> dict[str, str]:
    return {
        "config": config.SESSION_ID.pattern,
        "schema": schema_property("sessionId")["pattern"],
        "entrypoint": bash_regex(ENTRYPOINT, "session"),
    }


def test_session_id_means_the_same_in_config_entrypoint_and_schema() -> None:
    sources = session_sources()
    candidates = sorted(set().union(*(examples_from(p) for p in sources.values())))
    judged = verdicts(
        {
            "config.SESSION_ID": python_judge(lambda s: bool(config.SESSION_ID.fullmatch(s))),
            "config.parse": python_judge(config_accepts_session),
            "schema (jsonschema)": python_judge(schema_accepts(schema_property("sessionId"))),
            "schema (ECMA-262)": ecma_judge(sources["schema"]),
            "entrypoint (bash)": bash_judge(sources["entrypoint"]),
        },
        candidates,
    )
    disagreements = {c: v for c, v in judged.items() if len(set(v.values())) > 1}
    assert disagreements == {}, f"sources: {sources}"
    accepted = {c for c, v in judged.items() if all(v.values())}
    refused = {c for c, v in judged.items() if not any(v.values())}
    # The examples reach both sides of every boundary.
    assert max(map(len, accepted)) == 63
    assert 64 in {len(c) for c in refused}
    assert {c + "\n" for c in accepted} & refused
    assert [h for h in HOSTILE if not any(h in c for c in refused)] == []


def test_env_names_mean_the_same_in_config_and_schema() -> None:
    schema_pattern = schema_property("requested", "env", "items")["pattern"]
    entrypoint = bash_regex(ENTRYPOINT, "name")
    candidates = sorted(examples_from(config.ENV_NAME.pattern) | examples_from(schema_pattern))
    judged = verdicts(
        {
            "config.ENV_NAME": python_judge(lambda s: bool(config.ENV_NAME.fullmatch(s))),
            "schema (jsonschema)": python_judge(
                schema_accepts(schema_property("requested", "env", "items"))
            ),
            "schema (ECMA-262)": ecma_judge(schema_pattern),
            "entrypoint (bash)": bash_judge(entrypoint),
        },
        candidates,
    )
    disagreements = {}
    for candidate, verdict in judged.items():
        entry = verdict.pop("entrypoint (bash)")
        if len(set(verdict.values())) > 1:
            disagreements[candidate] = verdict
        # The entrypoint reads secret files dockyard wrote: it must take every name the
        # config takes; past the config's length bound it may take more.
        elif entry != verdict["config.ENV_NAME"] and (not entry or len(candidate) <= 255):
            disagreements[candidate] = {**verdict, "entrypoint (bash)": entry}
    assert disagreements == {}
    assert {255, 256} <= {len(c) for c in candidates}


DOCKER_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]+")
"""The engine's own container-name grammar (moby daemon/names: RestrictedNamePattern)."""
PULUMI_STACK_NAME = re.compile(r"[A-Za-z0-9_.-]{1,100}")
"""What Pulumi accepts as a stack name (its backends refuse longer or other names)."""


def test_every_derived_environment_id_is_a_valid_manifest_and_container_name() -> None:
    sessions = [
        s for s in examples_from(config.SESSION_ID.pattern) if config.SESSION_ID.fullmatch(s)
    ]
    stacks = [p.stem.removeprefix("Pulumi.") for p in (REPO / "stacks").glob("Pulumi.*.yaml")]
    stacks += ["a", "x" * 100, "team.prod_2-eu", "-", "."]
    assert all(PULUMI_STACK_NAME.fullmatch(s) for s in stacks)
    environment_id = schema_accepts(schema_property("environmentId"))
    container_name = schema_accepts(schema_property("container", "name"))
    refused = [
        prefix
        for stack in stacks
        for session in sessions
        if not (
            environment_id(prefix := resource_prefix(stack, session))
            and container_name(prefix)
            and DOCKER_NAME.fullmatch(prefix)
        )
    ]
    assert refused == []


def test_schema_container_name_is_dockers_name_grammar() -> None:
    pattern = schema_property("container", "name")["pattern"]
    accepts = schema_accepts(schema_property("container", "name"))
    differ = [
        c
        for c in examples_from(pattern)
        | examples_from(DOCKER_NAME.pattern.removesuffix("+") + "{1,254}")
        if len(c) <= 255 and accepts(c) != bool(DOCKER_NAME.fullmatch(c))
    ]
    assert differ == []


# --- Manifest contract v1 ---------------------------------------------------------------


def reference_example() -> dict[str, Any]:
    doc = (REPO / "docs" / "manifest.md").read_text()
    block = doc.split("<!-- reference-manifest -->", 1)[1].split("```json", 1)[1]
    return dict(json.loads(block.split("```", 1)[0]))


def test_contract_reference_example_validates_as_is() -> None:
    example = reference_example()
    # The contract's own values, the ones an earlier schema refused among them.
    assert example["container"]["id"] == "abc123"
    assert example["createdAt"] == "2026-02-13T00:00:00.000Z"
    contract.validate(example, "docs/manifest.md reference example")


def test_dockyards_writer_is_stricter_than_the_schema_and_says_why() -> None:
    with pytest.raises(contract.ManifestError) as info:
        contract.check_written(reference_example(), "reference.json")
    assert str(info.value).splitlines()[1:] == [
        "  container/id: 'abc123' is not allowed (allowed: the engine's full container id, "
        "64 lowercase hex digits)",
        "  environmentId: 'session-123' is not allowed (allowed: the container name, "
        "'companion-abc123')",
    ]


# --- Host side ----------------------------------------------------------------------------
#
# Facts between the components, the host library (dockyard.host, which reads its labels from
# dockyard.contract), the host scripts, the roles, the playbooks and the inventory plugin:
# - label names: the labels the components set == dockyard.host.LABELS; the host scripts
#   hold no label string of their own; every selector in roles, playbooks and the inventory
#   plugin names one of them; the default selector of every role and script is
#   dockyard.host.MANAGED_SELECTOR;
# - label grammar: dockyard.host.LABEL_KEY gives dockyard.config.LABEL_KEY's verdict;
#   the roles' *_label value checks, applied as Ansible applies them, give
#   dockyard.host.parse_selector's verdict and state its allowed text;
# - environment ids: the inventory plugin reads back the stack resource_prefix wrote;
# - role variables: defaults/main.yml == meta/argument_specs.yml for every role and entry
#   point (same names, all prefixed and described, literal defaults equal, templated ones
#   not copied, types and choices agree);
# - host-script defaults: the health report's and idle monitor's DEFAULTS (what their CLI
#   falls back to) and the egress guard's argparse defaults == the role defaults they stand
#   for, and the configuration each role writes has exactly the keys its script reads;
# - the health report fields the table template and the playbook read exist;
# - the manifest schema: the host's stdlib validator knows every keyword the shipped schema
#   uses and gives jsonschema's verdict, naming the same places, on a corpus.

HOST_SCRIPTS = {
    "env_health": "dockyard-health.py",
    "idle_monitor": "dockyard-idle-monitor.py",
    "egress_guard": "dockyard-egress-guard.py",
}
health_script = load_script("env_health", HOST_SCRIPTS["env_health"])
idle_script = load_script("idle_monitor", HOST_SCRIPTS["idle_monitor"])
egress_script = load_script("egress_guard", HOST_SCRIPTS["egress_guard"])
host = health_script.host  # the library exactly as the scripts import it
LABELISH = re.compile(r"dockyard\.[a-z0-9][a-z0-9._/-]*")
ROLES = sorted(p.name for p in (REPO / "roles").iterdir() if (p / "defaults").is_dir())


def string_constants(path: Path) -> set[str]:
    return {
        node.value
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    }


def component_labels() -> set[str]:
    """Every label key in the components' code: strings shaped like one, except the
    Kubernetes annotations (constants named *_ANNOTATION), which are not engine labels."""
    found = set()
    for path in (REPO / "components").rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        annotations = {
            id(node.value)
            for node in ast.walk(tree)
            if isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and "ANNOTATION" in t.id for t in node.targets)
        }
        found |= {
            node.value
            for node in ast.walk(tree)
            if isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and LABELISH.fullmatch(node.value)
            and id(node) not in annotations
        }
    return found


def role_defaults(role: str) -> dict[str, Any]:
    return yaml.safe_load((REPO / "roles" / role / "defaults" / "main.yml").read_text()) or {}


def role_vars(role: str) -> dict[str, Any]:
    return yaml.safe_load((REPO / "roles" / role / "vars" / "main.yml").read_text()) or {}


def entry_points(role: str) -> dict[str, Any]:
    specs = yaml.safe_load((REPO / "roles" / role / "meta" / "argument_specs.yml").read_text())
    return dict(specs["argument_specs"])


def test_host_library_knows_exactly_the_labels_the_components_set() -> None:
    emitted = component_labels()
    assert {"dockyard.managed", "dockyard.session", "dockyard.stack"} <= emitted
    assert emitted == host.LABELS, (
        f"only the components: {sorted(emitted - host.LABELS)}; "
        f"only dockyard.host.LABELS: {sorted(host.LABELS - emitted)}"
    )
    assert host.MANAGED_SELECTOR == host.LABEL_MANAGED + "=true"


def test_host_scripts_take_their_labels_from_the_library() -> None:
    copies = {
        filename: sorted(t for t in string_constants(REPO / "roles" / role / "files" / filename)
                         if LABELISH.fullmatch(t.split("=", 1)[0]))
        for role, filename in HOST_SCRIPTS.items()
    }  # fmt: skip
    assert copies == {filename: [] for filename in HOST_SCRIPTS.values()}
    assert health_script.DEFAULTS["label"] == host.MANAGED_SELECTOR
    assert idle_script.DEFAULTS["label"] == host.MANAGED_SELECTOR
    assert (egress_script.LABEL_MODE, egress_script.LABEL_ALLOW) == (
        host.LABEL_EGRESS,
        host.LABEL_EGRESS_ALLOW,
    )


def test_every_selector_in_roles_playbooks_and_inventory_names_a_dockyard_label() -> None:
    selector = re.compile(r"(?<![\w.])(dockyard\.[a-z0-9][a-z0-9._/-]*)=")
    found: dict[str, set[str]] = {}
    for top in ("roles", "playbooks", "plugins"):
        for path in (REPO / top).rglob("*"):
            if path.suffix in {".yml", ".yaml", ".j2", ".py"} and path.is_file():
                for key in selector.findall(path.read_text(encoding="utf-8")):
                    found.setdefault(key, set()).add(str(path.relative_to(REPO)))
    assert host.LABEL_MANAGED in found  # the defaults below are among them
    assert {key: files for key, files in found.items() if key not in host.LABELS} == {}
    label_defaults = {
        f"{role}:{name}": value
        for role in ROLES
        for name, value in role_defaults(role).items()
        if name.endswith("_label")
    }
    assert label_defaults
    assert set(label_defaults.values()) == {host.MANAGED_SELECTOR}, label_defaults


LABEL_KEY_CORPUS = [
    "a", "0", "a0", "a.b", "a/b", "a_b", "a-b", "a" * 128, "a" * 129, "a" + "." * 126 + "b",
    "", "A", "aB", ".a", "a.", "-a", "a-", "_a", "a b", "a\n", "a\t", "a:b", "a=b", "é",
    "a\u0661", "\u212a", "dockyard.managed\n", "dockyard..x", "dockyard.x/y",
]  # fmt: skip


def test_label_key_grammar_is_the_configurations() -> None:
    corpus = LABEL_KEY_CORPUS + sorted(host.LABELS)
    differ = {
        key: {"config": bool(config.LABEL_KEY.fullmatch(key)), "host": ok}
        for key in corpus
        if (ok := bool(host.LABEL_KEY.fullmatch(key))) != bool(config.LABEL_KEY.fullmatch(key))
    }
    assert differ == {}
    assert all(host.LABEL_KEY.fullmatch(key) for key in host.LABELS)
    assert {True, False} == {bool(host.LABEL_KEY.fullmatch(key)) for key in corpus}


def selector_accepted(text: str) -> bool:
    try:
        host.parse_selector(text)
    except host.ConfigError:
        return False
    return True


@pytest.mark.parametrize("role", ["env_health", "idle_monitor"])
def test_label_value_checks_are_the_host_librarys_selector_grammar(role: str) -> None:
    check = yaml.safe_load((REPO / "roles" / role / "meta" / "value_checks.yml").read_text())[
        f"{role}_label"
    ]
    assert check["allowed"] == host.SELECTOR_ALLOWED
    corpus = [f"{key}=v" for key in LABEL_KEY_CORPUS] + LABEL_KEY_CORPUS
    corpus += [f"{key}={value}" for key in sorted(host.LABELS)
               for value in ("true", "team.prod_2", "a:b/c-d", "", "v" * 255, "v" * 256,
                             "x y", "x;id", "b=c", "é", "t\n")]  # fmt: skip
    # playbooks/tasks/validate-roles.yml: `value is regex(pattern)`, which is re.search.
    differ = {
        text: {"value check": ok, "dockyard.host": selector_accepted(text)}
        for text in corpus
        if (ok := bool(re.search(check["pattern"], text))) != selector_accepted(text)
    }
    assert differ == {}
    assert selector_accepted(host.MANAGED_SELECTOR)
    assert not selector_accepted(host.MANAGED_SELECTOR + "\n")


def test_inventory_plugin_reads_back_the_stack_of_every_environment_id() -> None:
    # The plugin imports its collection's module_utils: Ansible's collection loader, over
    # the checkout as dockyard.agents (as ansible-inventory in the checkout has it).
    init_plugin_loader([str(REPO / "playbooks" / "collections")])
    spec = importlib.util.spec_from_file_location(
        "dockyard_manifests_plugin", REPO / "plugins" / "inventory" / "dockyard_manifests.py"
    )
    assert spec is not None
    assert spec.loader is not None
    plugin = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plugin)
    stacks = ["dev", "a", "team.prod_2-eu", "x" * 100, "-", "dockyard", "a-b-c"]
    sessions = ["s", "a-b", "dev", "x" * 63, "0.9_z"]
    wrong = {
        (stack, session): found
        for stack in stacks
        for session in sessions
        if (found := plugin.stack_of(resource_prefix(stack, session), session)) != stack
    }
    assert wrong == {}
    # A tenant's session (naming v2): its group is the tenant.
    assert f"dockyard-{facts.TENANT_NAMES}" == plugin.TENANT_ID_PREFIX
    tenants = ["acme", "acme-x", "a1"]
    wrong = {
        (tenant, session): found
        for tenant in tenants
        for session in sessions
        if (
            found := plugin.stack_of(
                facts.session_environment_id(tenant, session, facts.NAMING_CURRENT), session
            )
        )
        != tenant
    }
    assert wrong == {}
    example = reference_example()
    assert plugin.stack_of(example["environmentId"], example["sessionId"]) is None


def spec_accepts(option: dict[str, Any], value: Any) -> bool:
    kind = option.get("type", "str")
    if kind in ("str", "path"):
        return isinstance(value, str)
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "float":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "dict":
        return isinstance(value, dict)
    if kind == "list":
        element = {"type": option.get("elements", "raw")}
        return isinstance(value, list) and all(spec_accepts(element, item) for item in value)
    return kind == "raw"


@pytest.mark.parametrize("role", ROLES)
def test_role_defaults_are_what_the_argument_specs_say(role: str) -> None:
    defaults = role_defaults(role)
    points = entry_points(role)
    assert set(points["main"]["options"]) == set(defaults), "main: not the defaults' names"
    problems = []
    for point, spec in points.items():
        for name, option in spec["options"].items():
            where = f"{role} {point} {name}"
            if not name.startswith(f"{role}_"):
                problems.append(f"{where}: not prefixed with {role}_")
            if name not in defaults:
                problems.append(f"{where}: not in defaults/main.yml")
                continue
            if not option.get("description"):
                problems.append(f"{where}: no description")
            value = defaults[name]
            if isinstance(value, str) and "{{" in value:
                # Templated: a default in the spec could only be a copy that drifts.
                if "default" in option:
                    problems.append(f"{where}: copies a templated default")
                if option.get("type", "str") not in ("str", "path"):
                    problems.append(f"{where}: a template is a str, not {option['type']}")
                continue
            if option.get("default", value) != value or "default" not in option:
                problems.append(f"{where}: spec default {option.get('default')!r} != {value!r}")
            if not spec_accepts(option, value):
                problems.append(f"{where}: {value!r} is not of type {option.get('type', 'str')}")
            if "choices" in option and value not in option["choices"]:
                problems.append(f"{where}: {value!r} not in {option['choices']}")
    assert problems == []


# Script configuration keys no role variable stands for (the script's own fixed values).
SCRIPT_ONLY = {"env_health": {"workspace"}, "idle_monitor": {"docker"}}


@pytest.mark.parametrize(
    ("role", "script"), [("env_health", health_script), ("idle_monitor", idle_script)]
)
def test_host_script_defaults_are_the_role_defaults(role: str, script: Any) -> None:
    defaults = role_defaults(role)
    # What the script falls back to when its CLI and config say nothing.
    if role == "env_health":
        args = script.build_parser().parse_args([])
        effective = script.load_config(None, {k: getattr(args, k) for k in script.OVERRIDABLE})
    else:
        effective = script.load_config(None)
    assert effective == script.DEFAULTS
    keys = set(script.DEFAULTS) - SCRIPT_ONLY[role]
    assert {f"{role}_{key}" for key in keys} <= set(defaults)
    differ: dict[str, Any] = {}
    for key in sorted(keys):
        value = defaults[f"{role}_{key}"]
        try:  # the role's default, given to the script, is the script's own default
            taken = host.load_config(None, script.DEFAULTS, {key: value})[key]
        except host.ConfigError as exc:
            differ[key] = str(exc)
            continue
        if taken != effective[key]:
            differ[key] = {"script": effective[key], "role": value}
    assert differ == {}
    # The configuration the role writes: exactly the keys the script reads.
    assert set(role_vars(role)[f"{role}_config"]) == keys


def test_egress_guard_cli_defaults_are_the_role_defaults() -> None:
    defaults, variables = role_defaults("egress_guard"), role_vars("egress_guard")
    parser = egress_script.build_parser()
    cli = {action.dest: action.default for action in parser._actions}
    assert {
        "upstream": cli["upstream"],
        "address_ttl": cli["address_ttl"],
        "log_queries": cli["log_queries"],
        "state_dir": cli["state_dir"],
    } == {
        "upstream": defaults["egress_guard_upstream_dns"],
        "address_ttl": defaults["egress_guard_address_ttl_seconds"],
        "log_queries": defaults["egress_guard_log_queries"],
        "state_dir": variables["egress_guard_state_dir"],
    }


def test_health_report_fields_read_by_the_playbook_and_table_exist() -> None:
    fields = {f.name for f in dataclasses.fields(health_script.Status)}
    template = (REPO / "playbooks" / "templates" / "health-table.j2").read_text()
    used = set(re.findall(r"\benv\.([a-z_]+)", template))
    report_tasks = (REPO / "roles" / "env_health" / "tasks" / "report.yml").read_text()
    used |= set(re.findall(r"(?:select|reject)attr\('([a-z_]+)'", report_tasks))
    assert {"name", "action", "manifest", "refresh_reasons"} <= used
    assert used - fields == set()


def manifest_corpus() -> list[Any]:
    """The reference example, and one mutation of it per field and way to be wrong: a
    wrong type, a value the field's pattern or range refuses, a required key gone, an
    extra key at every level, repeated list items."""
    base = reference_example()
    corpus: list[Any] = [base, [], "manifest", None]

    def paths(node: Any, at: tuple[Any, ...] = ()) -> Iterable[tuple[Any, ...]]:
        yield at
        children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []  # fmt: skip
        for key, child in children:
            yield from paths(child, (*at, key))

    def replaced(at: tuple[Any, ...], value: Any) -> Any:
        copy = json.loads(json.dumps(base))
        node = copy
        for key in at[:-1]:
            node = node[key]
        node[at[-1]] = value
        return copy

    wrong = [None, True, 1, 1.5, -1, 0, 70000, "", "x\n", "abc123", "ABC", "../x", [], {}, [1, 1]]
    for at in paths(base):
        if not at:
            continue
        corpus += [replaced(at, value) for value in wrong]
        if isinstance(at[-1], str):
            without = json.loads(json.dumps(base))
            node = without
            for key in at[:-1]:
                node = node[key]
            del node[at[-1]]
            corpus.append(without)
        current = base
        for key in at:
            current = current[key]
        if isinstance(current, dict):
            corpus.append(replaced(at, {**current, "extra": 1}))
    corpus.append({**base, "extra": 1})
    corpus.append(replaced(("requested", "ports"), [3000, 3000.0]))
    corpus.append(replaced(("version",), 1.0))
    return corpus


def problem_places(problems: list[str]) -> set[str]:
    return {line.split(": ", 1)[0] for line in problems}


def test_host_stdlib_validator_gives_jsonschemas_verdict_on_the_shipped_schema() -> None:
    corpus = manifest_corpus()
    assert len(corpus) > 200
    differ = []
    for manifest in corpus:
        stdlib = host.manifest_problems(manifest, validator="stdlib")
        reference = host.manifest_problems(manifest, validator="jsonschema")
        if problem_places(stdlib) != problem_places(reference):
            differ.append((manifest, stdlib, reference))
    assert differ == [], differ[:3]
    verdicts = {bool(host.manifest_problems(m, validator="stdlib")) for m in corpus}
    assert verdicts == {True, False}
    # A keyword it cannot check is an error, never a rule silently skipped.
    with pytest.raises(host.SchemaError, match=r"keywords \['format'\] are not allowed"):
        host.manifest_problems("x", {"type": "string", "format": "date"}, validator="stdlib")


# --- Packaging ------------------------------------------------------------------------------
# - every Python package under components/ is shipped in the wheel as dockyard.<name>;
# - the one version (components/VERSION) is the distribution's.


def test_every_package_under_components_is_in_the_wheel() -> None:
    import tomllib

    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = {
        "dockyard"
        + "".join(f".{part}" for part in init.parent.relative_to(REPO / "components").parts)
        for init in (REPO / "components").rglob("__init__.py")
    }
    assert found - set(setuptools["packages"]) == set()
    assert setuptools["package-dir"]["dockyard"] == "components"


def test_the_version_has_one_home() -> None:
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "version" not in project["project"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"file": "components/VERSION"}
    assert re.fullmatch(r"\d+\.\d+\.\d+", (REPO / "components" / "VERSION").read_text().strip())


def test_every_package_file_is_a_host_module_or_left_out_of_the_collection() -> None:
    """The Ansible collection carries exactly host_common's host modules of the package
    (tests/roles/test_collection.py checks the built tarball, on the engine suite's time);
    this is the quick form: a new module in components/ must be listed in galaxy.yml's
    build_ignore or in host_common_package_files, or the collection ships it."""
    import fnmatch

    import yaml

    repo = Path(__file__).resolve().parents[2]
    galaxy = yaml.safe_load((repo / "galaxy.yml").read_text())
    ignored = [p for p in galaxy["build_ignore"] if p.startswith("components/")]
    variables = yaml.safe_load((repo / "roles/host_common/vars/main.yml").read_text())
    host = {f"components/{p}" for p in variables["host_common_package_files"]}
    stray = []
    for path in sorted((repo / "components").rglob("*")):
        if not path.is_file() or "__pycache__" in path.parts:
            continue
        name = path.relative_to(repo).as_posix()
        inside = any(
            fnmatch.fnmatch(name, p) or name.startswith(p.rstrip("/") + "/") for p in ignored
        )
        if name in host:
            assert not inside, f"{name} is a host module but galaxy.yml's build_ignore drops it"
        elif not inside:
            stray.append(name)
    assert stray == [], (
        "package files the collection would carry though no host script needs them: add "
        "each to galaxy.yml's build_ignore (or, for a host module, host_common_package_files)"
    )
