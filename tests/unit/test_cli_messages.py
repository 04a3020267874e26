"""What a newcomer reads (issue 26, items 3, 4, 6 and 7): every problem at once,
wrong-shaped input refused, messages that name the fix, and the CLI's polish."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from dockyard import cli, modal_plan
from dockyard.errors import NotFound

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str | None]:
    (tmp_path / "home").mkdir()
    return {
        "HOME": str(tmp_path / "home"),
        "DOCKYARD_STATE_DIR": str(tmp_path / "state"),
        "DOCKYARD_CONFIG": None,
        "DOCKYARD_AUDIT_LOG": None,
        "DOCKYARD_DEBUG": None,
    }


def invoke(env: dict[str, str | None], *args: str, stdin: str | None = None) -> Any:
    return CliRunner().invoke(cli.app, list(args), env=env, input=stdin)


def problems_of(result: Any) -> list[str]:
    return list(json.loads(result.stdout)["error"]["problems"])


# --- item 3: every problem at once ------------------------------------------------------


def test_a_request_without_an_image_lists_its_other_problems(env: dict[str, str | None]) -> None:
    request = {"sessionId": "a", "cwd": "/srv", "backend": "nope", "container": {"ports": [70000]}}
    result = invoke(env, "validate", "--request", "-", "--json", stdin=json.dumps(request))
    assert result.exit_code == 2
    keys = [p.split(": ", 1)[0] for p in problems_of(result)]
    assert keys == ["request.container.image", "request.backend", "request.container.ports[0]"]


def test_a_bad_port_does_not_hide_a_repeated_one(env: dict[str, str | None]) -> None:
    request = {
        "sessionId": "a",
        "cwd": "/srv",
        "container": {"image": "ubuntu:24.04", "ports": [70000, 3000, 3000]},
        "limits": {"nofileSoft": 5000, "nofileHard": 100},
    }
    result = invoke(env, "validate", "--request", "-", "--json", stdin=json.dumps(request))
    assert result.exit_code == 2
    assert problems_of(result) == [
        "request.limits.nofileHard: 100 is not allowed (allowed: at least nofileSoft (5000): "
        "the engine refuses soft > hard)",
        "request.container.ports[0]: 70000 is not allowed (allowed: an integer container "
        "port 1-65535)",
        "request.container.ports[2]: 3000 is not allowed (allowed: each container port once; "
        "ports[1] has it already)",
    ]


# --- item 4: wrong-shaped input is refused -------------------------------------------------

SHAPES = {
    "no-config-wrapper": ("dockyard:image:\n  ref: ubuntu:24.04\n", "outside `config:`"),
    "empty": ("", "empty"),
    "a-json-request": (
        json.dumps({"sessionId": "a", "cwd": "/srv", "container": {"image": "u:1"}}),
        "no `config:` mapping",
    ),
    "a-list": ("- config: {}\n", "<a list of 1 item>"),
    "config-not-a-mapping": ("config: [1, 2]\n", "config is <a list of 2 items>"),
}


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_a_stack_file_of_the_wrong_shape_is_invalid(
    shape: str, env: dict[str, str | None], tmp_path: Path
) -> None:
    text, expected = SHAPES[shape]
    path = tmp_path / "Pulumi.x.yaml"
    path.write_text(text)
    result = invoke(env, "validate", "--stack", str(path), "--json")
    assert result.exit_code == 2, result.output
    found = problems_of(result)
    assert all(p.startswith(f"--stack {path}: ") for p in found), found
    assert any(expected in p for p in found), found


def test_an_unset_secret_is_a_warning_of_validate(
    env: dict[str, str | None], tmp_path: Path
) -> None:
    """docs/stacks.md: an unset secret stops the run; validate says so and still exits 0
    (the file is valid: the secret is set with `pulumi config set --secret` before a run)."""
    path = tmp_path / "Pulumi.x.yaml"
    path.write_text(
        "config:\n  dockyard:environments:\n    - sessionId: a\n      secrets: [GITHUB_TOKEN]\n"
    )
    result = invoke(env, "validate", "--stack", str(path), "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    warning = (
        "dockyard:environments[0].secrets[0]: 'GITHUB_TOKEN' is not set (allowed: a secret in "
        "this stack's config; run `pulumi config set --secret GITHUB_TOKEN <value>`)"
    )
    assert data["warnings"] == [warning]
    assert f"WARNING: {warning}" in result.stderr
    docs = (REPO / "docs" / "stacks.md").read_text()
    assert "`dockyard validate` lists it as a warning" in docs


# --- item 7: CLI polish -----------------------------------------------------------------


def test_version(env: dict[str, str | None]) -> None:
    result = invoke(env, "--version")
    assert result.exit_code == 0
    assert re.fullmatch(r"dockyard \S+\n", result.stdout)


def _help(env: dict[str, str | None], *words: str) -> str:
    result = CliRunner().invoke(cli.app, [*words, "--help"], env={**env, "COLUMNS": "200"})
    assert result.exit_code == 0
    return result.stdout


def test_help_shows_flags_without_a_metavar_and_no_requirement_ids(
    env: dict[str, str | None],
) -> None:
    for words in (["ls"], ["up"], ["validate"], ["down"]):
        text = _help(env, *words)
        assert re.search(r"--json\s+Print the result as JSON", text), words
    logs = _help(env, "logs")
    assert re.search(r"--follow\s+-f\s+Keep printing new lines", logs)
    modal = _help(env, "plan", "modal")
    for option in ("--cpus", "--memory", "--gpu"):
        line = next(line for line in modal.splitlines() if option in line)
        assert re.search(r"[A-Z][a-z]", line.split(option, 1)[1]), line
    for words in ([], ["plan"], ["plan", "modal"], ["up"], ["ssh"]):
        assert not re.search(r"R-[A-Z]+-\d", _help(env, *words)), words


def _manifest(tmp_path: Path) -> Path:
    doc = (REPO / "docs" / "manifest.md").read_text()
    example = json.loads(doc.split("```json", 2)[2].split("```", 1)[0])
    path = tmp_path / "m.json"
    path.write_text(json.dumps(example))
    return path


@pytest.mark.parametrize(
    ("gpu", "expected"),
    [
        ("A100", "gpu='A100',"),
        ("h100:2", "gpu='H100:2',"),
        ("all", "gpu='any',"),
        ("0,1", "gpu='any:2',"),
    ],
)
def test_plan_modal_gpu_maps_what_it_knows(
    gpu: str, expected: str, env: dict[str, str | None], tmp_path: Path
) -> None:
    result = invoke(env, "plan", "modal", str(_manifest(tmp_path)), "--gpu", gpu)
    assert result.exit_code == 0, result.output
    assert expected in result.stdout


@pytest.mark.parametrize("gpu", ["A1000", "any", "0,0", "tpu-v5"])
def test_plan_modal_refuses_an_unknown_gpu(
    gpu: str, env: dict[str, str | None], tmp_path: Path
) -> None:
    result = invoke(env, "plan", "modal", str(_manifest(tmp_path)), "--gpu", gpu)
    assert result.exit_code == 2
    assert f"--gpu: '{gpu}' is not allowed (allowed: all, comma-separated device ids" in (
        result.stderr
    )
    assert "A100" in result.stderr


def test_plan_modal_a_missing_manifest_is_not_found(
    env: dict[str, str | None], tmp_path: Path
) -> None:
    result = invoke(env, "plan", "modal", str(tmp_path / "gone.json"))
    assert result.exit_code == 4, result.output
    assert result.stderr == f"ERROR: {tmp_path / 'gone.json'}: no such manifest file\n"
    assert result.stdout == ""
    with pytest.raises(NotFound):  # the library raises the kind, never exits itself
        modal_plan.preview(str(tmp_path / "gone.json"))


def test_plan_modal_a_stack_without_the_session_is_not_found(
    env: dict[str, str | None], tmp_path: Path
) -> None:
    stack = REPO / "stacks" / "Pulumi.team.yaml"  # alice-api, bob-web, ...: not 'dev'
    result = invoke(env, "plan", "modal", str(_manifest(tmp_path)), "--stack", str(stack))
    assert result.exit_code == 4, result.output
    assert result.stderr == (
        f"ERROR: --stack {stack}: no environment with sessionId 'dev' (allowed: a stack file "
        "that declares the manifest's session)\n"
    )


def test_plan_modal_an_unreadable_manifest_is_invalid_input(
    env: dict[str, str | None], tmp_path: Path
) -> None:
    result = invoke(env, "plan", "modal", str(tmp_path))  # a directory
    assert result.exit_code == 2, result.output
    assert result.stderr == f"ERROR: {tmp_path}: cannot be read (Is a directory)\n"


@pytest.mark.parametrize("name", ["a[bold]b.json", "a[/]b.json", "a[red]b[/red].json"])
def test_problem_lines_are_printed_as_text_not_markup(
    name: str, env: dict[str, str | None], tmp_path: Path
) -> None:
    path = tmp_path / name
    result = invoke(env, "validate", "--request", str(path))
    assert result.exit_code == 2, result.output
    assert result.stderr == (
        f"ERROR: --request {path}: cannot be read (No such file or directory)\n"
    )


def test_validate_success_has_the_same_keys_for_a_stack_and_a_request(
    env: dict[str, str | None],
) -> None:
    stack = invoke(env, "validate", "--stack", str(REPO / "stacks" / "Pulumi.team.yaml"), "--json")
    request = {"sessionId": "s1", "cwd": "/srv", "container": {"image": "ubuntu:24.04"}}
    from_request = invoke(env, "validate", "--request", "-", "--json", stdin=json.dumps(request))
    assert (stack.exit_code, from_request.exit_code) == (0, 0)
    assert set(json.loads(stack.stdout)) == set(json.loads(from_request.stdout))


# --- item 6: messages that name the fix -----------------------------------------------------


def test_a_session_request_gets_the_session_fix_for_a_secret(env: dict[str, str | None]) -> None:
    request = {
        "sessionId": "a",
        "cwd": "/srv",
        "container": {"image": "ubuntu:24.04", "env": {"API_TOKEN": "x"}},
        "secrets": ["GH_TOKEN"],
    }
    env = {**env, "GH_TOKEN": None}
    result = invoke(env, "validate", "--request", "-", "--json", stdin=json.dumps(request))
    assert result.exit_code == 2
    found = problems_of(result)
    assert len(found) == 2
    assert all("pulumi config" not in p for p in found), found
    assert found[0].startswith("request.container.env.API_TOKEN: this key is not allowed")
    assert (
        "`dockyard up --secret API_TOKEN` with the value in the environment variable" in (found[0])
    )
    assert found[1] == (
        "request.secrets[0]: 'GH_TOKEN' is not set (allowed: a secret the caller supplies: "
        "`dockyard up --secret GH_TOKEN` with the value in the environment variable GH_TOKEN, "
        "or create(request, secrets={...}))"
    )


def test_up_without_a_session_names_the_flag(env: dict[str, str | None]) -> None:
    result = invoke(env, "up", "--image", "ubuntu:24.04", "--cwd", "/srv", "--json")
    assert result.exit_code == 2
    assert problems_of(result) == [
        "--session (-s): missing (allowed: a session id, e.g. -s my-session, or sessionId in "
        "the --request file)"
    ]


def test_host_settings_problems_name_the_file_and_its_keys(
    env: dict[str, str | None], tmp_path: Path
) -> None:
    settings = tmp_path / "settings.yaml"
    settings.write_text("quotas:\n  environmnets: 3\nbogus: 1\nlimits:\n  cpus: -1\n")
    request = {"sessionId": "a", "cwd": "/srv", "container": {"image": "ubuntu:24.04"}}
    result = invoke(
        {**env, "DOCKYARD_CONFIG": str(settings)},
        "validate",
        "--request",
        "-",
        "--json",
        stdin=json.dumps(request),
    )
    assert result.exit_code == 2
    found = problems_of(result)
    assert [p.split(": ", 1)[0] for p in found] == [
        f"bogus in host settings {settings}",
        f"limits.cpus in host settings {settings}",
        f"quotas.environmnets in host settings {settings}",
    ]
    assert all("dockyard:" not in p for p in found), found


def test_a_harmless_bad_key_is_shown_a_pasted_one_is_not(env: dict[str, str | None]) -> None:
    request = {
        "sessionId": "a",
        "cwd": "/srv",
        "container": {"image": "ubuntu:24.04", "env": {"my-var": "1", "sk-ant-c4n4ry": "2"}},
    }
    result = invoke(env, "validate", "--request", "-", "--json", stdin=json.dumps(request))
    assert result.exit_code == 2
    keys = [p.split(": ", 1)[0] for p in problems_of(result)]
    assert sorted(keys) == ["request.container.env.<key 2>", "request.container.env.my-var"]
    assert "c4n4ry" not in result.stdout
