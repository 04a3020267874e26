"""No traceback reaches a user from any verb (issue 26, item 2).

Every verb of the Typer app (enumerated from the app, so a new verb is covered without a
change here) runs with broken inputs, a missing engine, an unreadable state directory and
a missing Pulumi CLI. Each answer is a documented exit code, a short message, and with
``--json`` the documented error object on stdout (docs/sessions.md) — and none of them
reaches the CLI's last-resort handler: every layer turns what it knows into a
DockyardError.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer.main
from typer.testing import CliRunner

from dockyard import cli
from dockyard.sessions import DriverError, Sessions
from dockyard.sessions import audit as audit_log

DOCUMENTED_CODES = {0, 1, 2, 3, 4}
LAST_RESORT = "this is a bug in dockyard"
MAX_LINES = 20


def verbs() -> Iterator[tuple[list[str], Any]]:
    """Every leaf command of the app: its words and its click command."""

    def walk(command: Any, words: list[str]) -> Iterator[tuple[list[str], Any]]:
        sub = getattr(command, "commands", None)
        if sub:
            for name, child in sub.items():
                yield from walk(child, [*words, name])
        else:
            yield words, command

    yield from walk(typer.main.get_command(cli.app), [])


VERBS = list(verbs())


def _options(command: Any) -> set[str]:
    return {opt for param in command.params for opt in getattr(param, "opts", [])}


@pytest.fixture
def world(tmp_path: Path) -> dict[str, Path]:
    (tmp_path / "typo.yaml").write_text("config:\n  dockyard:image: [a\n  b: c\n")
    (tmp_path / "typo.json").write_text('{"sessionId": "s1",')
    (tmp_path / "settings.yaml").write_text(
        "quotas:\n  environments: 3\nimage:\n  ref: dockyard-core:never-built\n"
    )
    (tmp_path / "no-quotas.yaml").write_text("image:\n  ref: dockyard-core:never-built\n")
    (tmp_path / "a-file").write_text("not a directory\n")
    (tmp_path / "home").mkdir()
    (tmp_path / "bin").mkdir()
    return {
        "tmp": tmp_path,
        "typo_yaml": tmp_path / "typo.yaml",
        "typo_json": tmp_path / "typo.json",
        "settings": tmp_path / "settings.yaml",
        "file": tmp_path / "a-file",
    }


def _args(words: list[str], command: Any, world: dict[str, Path], broken: bool) -> list[str]:
    args = list(words)
    options = _options(command)
    for param in command.params:
        if param.param_type_name == "argument" and param.required:
            if param.name == "manifest":
                args.append(str(world["typo_json"]))
            else:
                args.append("Bad Session!" if broken else "s1")
    if broken and "--request" in options:
        args += ["--request", str(world["typo_json"])]
    if broken and "--stack" in options:
        args += ["--stack", str(world["typo_yaml"])]
    if "--cwd" in options:
        args += ["--cwd", str(world["tmp"])]
    if words == ["up"]:
        args += ["-s", "s1"]
    if words == ["serve"]:
        # Refused before listening (non-loopback without TLS): the verb never blocks.
        args += ["--host", "203.0.113.7", "--port", "0"]
    return args


SCENARIOS = ("broken-input", "no-engine", "unreadable-state", "no-pulumi")


def _environment(scenario: str, world: dict[str, Path]) -> dict[str, str | None]:
    env: dict[str, str | None] = {
        "HOME": str(world["tmp"] / "home"),
        "DOCKYARD_STATE_DIR": str(world["tmp"] / "state"),
        "DOCKYARD_CONFIG": None,
        "DOCKYARD_AUDIT_LOG": None,
        "DOCKYARD_API_KEY_STORE": None,
        "DOCKYARD_DEBUG": None,
        "PULUMI_BACKEND_URL": f"file://{world['tmp'] / 'pulumi'}",
        "PULUMI_CONFIG_PASSPHRASE": "test-only",
    }
    if scenario == "no-engine":
        env["DOCKER_HOST"] = f"unix://{world['tmp'] / 'no-engine.sock'}"
        env["DOCKYARD_CONFIG"] = str(world["settings"])
    elif scenario == "unreadable-state":
        env["DOCKYARD_STATE_DIR"] = str(world["file"] / "state")
    elif scenario == "no-pulumi":
        # The tools a verb may need, without pulumi (the default driver's CLI).
        for tool in ("docker", "ssh", "ssh-keygen", "restic"):
            found = shutil.which(tool)
            if found:
                (world["tmp"] / "bin" / tool).symlink_to(found)
        env["PATH"] = str(world["tmp"] / "bin")
        env["DOCKYARD_CONFIG"] = str(world["tmp"] / "no-quotas.yaml")
    return env


def _check(words: list[str], args: list[str], result: Any, as_json: bool) -> None:
    where = f"dockyard {' '.join(args)}"
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"{where}: {type(result.exception).__name__} escaped")
    output = result.stdout + result.stderr
    assert "Traceback" not in output, where
    assert result.exit_code in DOCUMENTED_CODES, (where, result.exit_code, output)
    assert LAST_RESORT not in output, (where, output)
    if result.exit_code == 0:
        return
    message = result.stderr.strip() or result.stdout.strip()
    assert message, f"{where}: exit {result.exit_code} without a message"
    assert len(message.splitlines()) <= MAX_LINES, (where, message)
    if as_json:
        data = json.loads(result.stdout)
        assert set(data) == {"error"}, where
        assert data["error"]["code"] == result.exit_code, where
        # The same object on every face: the kind beside the code (DockyardError.as_dict).
        assert data["error"]["kind"] in {"failed", "invalid", "quota", "not-found", "conflict"}, (
            where
        )
        problems = data["error"]["problems"]
        assert problems, where
        assert all(isinstance(p, str) and p for p in problems), where


@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize(("words", "command"), VERBS, ids=[" ".join(words) for words, _ in VERBS])
def test_every_verb_answers_with_a_documented_code_and_message(
    words: list[str], command: Any, scenario: str, world: dict[str, Path]
) -> None:
    if scenario == "no-pulumi" and shutil.which("docker") is None:
        pytest.skip("needs the docker CLI to leave out only pulumi")
    runner = CliRunner()
    env = _environment(scenario, world)
    args = _args(words, command, world, broken=scenario == "broken-input")
    takes_json = "--json" in _options(command)
    for as_json in (False, True) if takes_json else (False,):
        full = [*args, "--json"] if as_json else args
        result = runner.invoke(cli.app, full, env=env)
        _check(words, full, result, as_json)


def test_the_verbs_are_enumerated_from_the_app() -> None:
    names = {" ".join(words) for words, _ in VERBS}
    assert {"up", "down", "validate", "plan modal", "image build", "audit"} <= names


def test_a_yaml_typo_in_a_stack_file_is_invalid_input(world: dict[str, Path]) -> None:
    result = CliRunner().invoke(cli.app, ["validate", "--stack", str(world["typo_yaml"]), "--json"])
    assert result.exit_code == 2, result.output
    (line,) = json.loads(result.stdout)["error"]["problems"]
    assert line.startswith(f"--stack {world['typo_yaml']}: not YAML at line 3, column 4")


def test_up_with_quotas_and_no_engine_says_so(world: dict[str, Path]) -> None:
    env = _environment("no-engine", world)
    result = CliRunner().invoke(
        cli.app, ["up", "-s", "s1", "--cwd", str(world["tmp"]), "--json"], env=env
    )
    assert result.exit_code == 1, result.output
    (line,) = json.loads(result.stdout)["error"]["problems"]
    assert "Docker engine" in line
    assert "cannot be reached" in line
    assert "DOCKER_HOST" in line


def test_the_last_resort_is_one_line_and_exit_1(
    world: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug (an exception no layer turned into a DockyardError) is one line, exit 1;
    the traceback only with DOCKYARD_DEBUG=1."""

    def broken(*_: Any, **__: Any) -> Any:
        raise KeyError("a bug")

    monkeypatch.setattr(audit_log, "read", broken)
    env = _environment("broken-input", world)
    runner = CliRunner()
    result = runner.invoke(cli.app, ["audit", "--json"], env=env)
    assert result.exit_code == 1
    assert not isinstance(result.exception, KeyError)
    assert json.loads(result.stdout)["error"]["problems"] == [
        "unexpected error (KeyError): this is a bug in dockyard; run again with "
        "DOCKYARD_DEBUG=1 for the traceback and report it"
    ]
    assert "Traceback" not in result.stderr
    debug = runner.invoke(cli.app, ["audit"], env={**env, "DOCKYARD_DEBUG": "1"})
    assert debug.exit_code == 1
    assert "Traceback" in debug.stderr
    assert "KeyError: 'a bug'" in debug.stderr


def test_up_without_the_pulumi_cli_says_so(world: dict[str, Path]) -> None:
    if shutil.which("docker") is None:
        pytest.skip("needs the docker CLI to leave out only pulumi")
    env = _environment("no-pulumi", world)
    result = CliRunner().invoke(
        cli.app, ["up", "-s", "s1", "--cwd", str(world["tmp"]), "--json"], env=env
    )
    assert result.exit_code == 1, result.output
    (line,) = json.loads(result.stdout)["error"]["problems"]
    assert line.startswith("the Pulumi CLI is not installed (https://www.pulumi.com/"), line


def _groups_and_verbs() -> list[list[str]]:
    words = {tuple(w[:i]) for w, _ in VERBS for i in range(len(w) + 1)}
    return [list(w) for w in sorted(words)]


@pytest.mark.parametrize("words", _groups_and_verbs(), ids=lambda w: " ".join(w) or "dockyard")
def test_every_help_is_for_users(words: list[str]) -> None:
    """Flags read as flags (no ``<bool>``), and no requirement ids (R-MAN-3) in user help."""
    result = CliRunner().invoke(cli.app, [*words, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "<bool>" not in result.stdout
    assert not re.search(r"\bR-[A-Z]+-\d+", result.stdout), result.stdout


def test_a_driver_that_cannot_load_answers_as_asked(
    world: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_driver() -> Any:
        raise DriverError("the driver 'x' cannot be loaded (allowed: pulumi, harness)")

    monkeypatch.setattr(Sessions, "default", no_driver)
    env = _environment("broken-input", world)
    for words in (["ls"], ["show", "s1"], ["audit"], ["image", "build"]):
        result = CliRunner().invoke(cli.app, [*words, "--json"], env=env)
        assert result.exit_code == 1, words
        assert json.loads(result.stdout) == {
            "error": {
                "code": 1,
                "kind": "failed",
                "problems": ["the driver 'x' cannot be loaded (allowed: pulumi, harness)"],
            }
        }, words
