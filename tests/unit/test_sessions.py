"""Sessions without an engine: request shape and messages, secrets lookup, what the
Automation API layer is given, quotas, the audit trail, and what a failed create
leaves behind (a fake driver stands in for Pulumi)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pulumi
import pytest
from pulumi.runtime import config as runtime_config
from pulumi.runtime.mocks import MockMonitor
from pulumi.runtime.settings import SETTINGS
from pulumi.runtime.stack import run_pulumi_func
from pulumi.runtime.sync_await import _sync_await

from dockyard import program as stack_program
from dockyard.config import ConfigError, Quotas
from dockyard.host import audit_trail
from dockyard.sessions import QuotaError, Sessions, audit, quotas
from dockyard.sessions.driver import PROJECT, DriverError, PulumiDriver, container_urn
from dockyard.sessions.request import plan
from dockyard.sessions.settings import paths
from tests.support.program import ProgramRun, RecordingMocks

CWD = "/srv/app"
REFERENCE = {
    "sessionId": "s1",
    "cwd": CWD,
    "backend": "claude",
    "container": {
        "image": "ghcr.io/acme/dockyard-core:1.2",
        "ports": [3000],
        "volumes": [],
        "env": {"A": "1"},
    },
}


# --- request --------------------------------------------------------------------------------


def test_the_reference_apps_request_is_accepted_as_is() -> None:
    result = plan(REFERENCE, {})
    env = result.environment
    assert (env.session_id, env.backend, env.ports, env.env, env.image) == (
        "s1",
        "claude",
        [3000],
        {"A": "1"},
        "ghcr.io/acme/dockyard-core:1.2",
    )
    assert result.config.cwd == CWD
    assert result.stack_name == "sessions.s1"
    assert result.manifest_path == f"{CWD}/.companion/cloud/environments/s1.json"


def test_dockyard_keys_and_tenant_shape_the_stack() -> None:
    request = {**REFERENCE, "tenant": "acme", "limits": {"cpus": 1}, "labels": {"team": "x"}}
    result = plan(request, {"profile": "large"})
    assert result.stack_name == "acme.s1"
    assert result.config.stack == "acme"
    assert result.manifest_path == f"{CWD}/.companion/cloud/environments/acme/s1.json"
    assert result.config.limits_of(result.environment).memory == 16384


def test_request_problems_come_with_the_stack_rules_and_request_paths() -> None:
    request = {
        "sessionId": "s 1",
        "backend": "gemini",
        "container": {"ports": [70000], "env": {"OPENAI_API_KEY": "sk-leak"}, "imgae": "x"},
        "secrets": ["GITHUB_TOKEN"],
        "limit": {},
    }
    with pytest.raises(ConfigError) as info:
        plan(request, {})
    problems = info.value.problems
    assert "request.cwd: missing (allowed: the absolute project directory)" in problems
    assert any(
        p.startswith("request.container.imgae: unknown key") and "did you mean image?" in p
        for p in problems
    )
    assert any(
        p.startswith("request.limit: unknown key") and "did you mean limits?" in p for p in problems
    )
    assert (
        "request.container.ports[0]: 70000 is not allowed (allowed: an integer container port 1-65535)"
        in problems
    )
    assert any(p.startswith("request.sessionId: 's 1' is not allowed") for p in problems)
    assert any(p.startswith("request.backend: 'gemini' is not allowed") for p in problems)
    assert any(
        p.startswith("request.container.env.OPENAI_API_KEY: this key is not allowed")
        for p in problems
    )
    assert any(p.startswith("request.secrets[0]: 'GITHUB_TOKEN' is not set") for p in problems)
    assert "sk-leak" not in str(info.value)


def test_host_settings_problems_are_named_as_settings() -> None:
    with pytest.raises(ConfigError) as info:
        plan(REFERENCE, {"quotas": {"cpus": 0}, "environments": []})
    assert any(
        p.startswith("quotas.cpus in host settings: 0 is not allowed") for p in info.value.problems
    )
    assert any("environments in host settings: not allowed" in p for p in info.value.problems)


# --- secrets --------------------------------------------------------------------------------


class FakeDriver:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.calls: list[tuple[str, str]] = []
        self.secrets: dict[str, str] = {}

    def up(self, plan: Any, secrets: Mapping[str, str], progress: Any) -> dict[str, Any]:
        self.calls.append(("up", plan.stack_name))
        self.secrets = dict(secrets)
        if self.fail:
            raise RuntimeError("engine said no")
        return _manifest(plan.session_id, plan.config.cwd)

    def recreate(self, plan: Any, secrets: Mapping[str, str], progress: Any) -> dict[str, Any]:
        self.calls.append(("recreate", plan.stack_name))
        return _manifest(plan.session_id, plan.config.cwd)

    def destroy(self, plan: Any, progress: Any) -> None:
        self.calls.append(("destroy", plan.stack_name))

    def build_image(self, config: Any, progress: Any) -> str:
        self.calls.append(("build_image", config.stack))
        return "dockyard-core:host-0123456789abcdef"


def _manifest(session: str, cwd: str) -> dict[str, Any]:
    return {
        "version": 1,
        "environmentId": f"dockyard-sessions-{session}",
        "sessionId": session,
        "backend": "claude",
        "createdAt": "2026-11-23T10:00:00.000Z",
        "cwd": cwd,
        "image": "dockyard-core:host",
        "container": {
            "id": "a" * 64,
            "name": f"dockyard-sessions-{session}",
            "cwd": "/workspace",
            "portMappings": [{"containerPort": 3000, "hostPort": 32768}],
        },
        "requested": {"ports": [3000], "volumes": [], "env": []},
    }


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HOME", str(tmp_path))
    for name in ("DOCKYARD_STATE_DIR", "DOCKYARD_CONFIG", "DOCKYARD_AUDIT_LOG", "DOCKYARD_DRIVER"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GITHUB_ACTOR", "ci-bot")
    return tmp_path


def _sessions(home: Path, driver: Any, settings: dict[str, Any] | None = None) -> Sessions:
    if settings is not None:
        config = home / ".config" / "dockyard" / "settings.yaml"
        config.parent.mkdir(parents=True, exist_ok=True)
        config.write_text(json.dumps(settings))
    return Sessions(paths(), driver)


def test_secrets_come_from_the_caller_or_its_environment(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    driver = FakeDriver()
    monkeypatch.setenv("GITHUB_TOKEN", "ghp_from_env")
    request = {**REFERENCE, "secrets": ["ANTHROPIC_API_KEY", "GITHUB_TOKEN"]}
    _sessions(home, driver).create(request, secrets={"ANTHROPIC_API_KEY": "sk-given"})
    assert driver.secrets == {"ANTHROPIC_API_KEY": "sk-given", "GITHUB_TOKEN": "ghp_from_env"}


def test_a_tenants_secrets_are_scoped(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GITHUB_TOKEN", "ghp_shared")
    request = {**REFERENCE, "tenant": "acme-co", "secrets": ["GITHUB_TOKEN"]}
    with pytest.raises(ConfigError) as info:
        _sessions(home, FakeDriver()).create(request)
    assert "DOCKYARD_TENANT_ACME_CO__GITHUB_TOKEN" in info.value.problems[0]
    monkeypatch.setenv("DOCKYARD_TENANT_ACME_CO__GITHUB_TOKEN", "ghp_acme")
    driver = FakeDriver()
    _sessions(home, driver).create(request)
    assert driver.secrets == {"GITHUB_TOKEN": "ghp_acme"}


def test_tenant_secret_variables_are_one_to_one_and_stay_in_their_namespace() -> None:
    """Issue 25.10's class for secrets: no (tenant, name) reads another tenant's variable or
    one of the server's own (tenant ``aws`` asking for ``SECRET_ACCESS_KEY``)."""
    from dockyard.sessions import secret_variable

    tenants = ["acme", "acme-x", "x", "aws", "a-b", "a1", "ab"]
    names = ["TOKEN", "X_TOKEN", "SECRET_ACCESS_KEY", "B_TOKEN", "_X", "GITHUB_TOKEN"]
    seen: dict[str, tuple[str | None, str]] = {}
    for tenant in [None, *tenants]:
        for name in names:
            variable = secret_variable(name, tenant)
            assert seen.setdefault(variable, (tenant, name)) == (tenant, name), variable
            if tenant:
                assert variable.startswith("DOCKYARD_TENANT_")
    assert secret_variable("SECRET_ACCESS_KEY", "aws") != "AWS_SECRET_ACCESS_KEY"
    assert secret_variable("X_TOKEN", "acme") != secret_variable("TOKEN", "acme-x")


def test_a_tenant_may_not_have_two_hyphens_in_a_row() -> None:
    with pytest.raises(ConfigError) as info:
        plan({**REFERENCE, "tenant": "acme--co"}, {})
    assert "never two in a row" in info.value.problems[0]


# --- lifecycle with a fake driver ----------------------------------------------------------------


def test_a_missing_secret_says_how_a_sessions_caller_supplies_it(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GITHUB_TOKEN", raising=False)
    monkeypatch.delenv("DOCKYARD_TENANT_ACME_CO__GITHUB_TOKEN", raising=False)
    request = {**REFERENCE, "tenant": "acme-co", "secrets": ["GITHUB_TOKEN", "lower_name"]}
    with pytest.raises(ConfigError) as info:
        _sessions(home, FakeDriver()).plan(request)
    supply = "a secret the caller supplies: `dockyard up --secret"
    also = "or create(request, secrets={...})"
    assert info.value.problems == [
        f"request.secrets[0]: 'GITHUB_TOKEN' is not set (allowed: {supply} GITHUB_TOKEN` "
        f"with the value in the environment variable DOCKYARD_TENANT_ACME_CO__GITHUB_TOKEN, {also})",
        # A name not written the conventional way may be a pasted value: never echoed.
        f"request.secrets[1]: <a string of 10 characters> is not set (allowed: {supply} "
        f"<NAME>` with the value in the environment variable DOCKYARD_TENANT_ACME_CO__<NAME>, {also})",
    ]


def test_create_records_get_list_refresh_destroy(home: Path) -> None:
    driver = FakeDriver()
    sessions = _sessions(home, driver)
    manifest = sessions.create(REFERENCE)
    assert manifest["sessionId"] == "s1"
    rows = sessions.list()
    assert [r["sessionId"] for r in rows] == ["s1"]
    sessions.refresh("s1")
    sessions.destroy("s1")
    assert driver.calls == [
        ("up", "sessions.s1"),
        ("recreate", "sessions.s1"),
        ("destroy", "sessions.s1"),
    ]
    assert sessions.list() == []
    actions = [(e["action"], e["result"], e["actor"]) for e in audit.read(sessions.where.audit_log)]
    assert actions == [
        ("create", "ok", "ci:ci-bot"),
        ("refresh", "ok", "ci:ci-bot"),
        ("destroy", "ok", "ci:ci-bot"),
    ]


def test_a_failed_first_create_is_undone_and_audited(home: Path) -> None:
    driver = FakeDriver(fail=True)
    sessions = _sessions(home, driver)
    with pytest.raises(DriverError, match=r"create of stack .* failed: engine said no"):
        sessions.create(REFERENCE)
    assert driver.calls == [("up", "sessions.s1"), ("destroy", "sessions.s1")]
    assert sessions.list() == []
    (entry,) = audit.read(sessions.where.audit_log)
    assert (entry["action"], entry["result"], entry["detail"]) == (
        "create",
        "error",
        "DriverError",  # the driver's own error, reported through the error root
    )


def test_a_failed_converge_keeps_the_session(home: Path) -> None:
    driver = FakeDriver()
    sessions = _sessions(home, driver)
    sessions.create(REFERENCE)
    driver.fail = True
    with pytest.raises(DriverError, match="engine said no"):
        sessions.create(REFERENCE)
    assert ("destroy", "sessions.s1") not in driver.calls
    assert [r["sessionId"] for r in sessions.list()] == ["s1"]


def test_no_image_anywhere_is_a_clear_error(home: Path) -> None:
    request = {**REFERENCE, "container": {"ports": [3000]}}
    with pytest.raises(ConfigError) as info:
        _sessions(home, FakeDriver()).create(request)
    assert "dockyard image build" in info.value.problems[0]


def test_the_built_image_is_reused(home: Path) -> None:
    driver = FakeDriver()
    sessions = _sessions(home, driver)
    assert sessions.build_image() == "dockyard-core:host-0123456789abcdef"
    result, _ = sessions.plan({**REFERENCE, "container": {"ports": [3000]}})
    assert result.config.image.ref == "dockyard-core:host-0123456789abcdef"
    assert [c[0] for c in driver.calls] == ["build_image"]


def test_unknown_session_is_not_found(home: Path) -> None:
    with pytest.raises(LookupError, match="no session 'nope'"):
        _sessions(home, FakeDriver()).destroy("nope")


# --- quotas ---------------------------------------------------------------------------------------


class FakeEngine:
    """The two engine calls quotas make, over a fixed set of containers."""

    def __init__(self, containers: list[dict[str, Any]]) -> None:
        self.api = self
        self._containers = containers

    def containers(self, all: bool, filters: dict[str, str]) -> list[dict[str, Any]]:
        return [{"Id": str(i), "Labels": c["labels"]} for i, c in enumerate(self._containers)]

    def inspect_container(self, ident: str) -> dict[str, Any]:
        c = self._containers[int(ident)]
        return {
            "HostConfig": {
                "CpuPeriod": 100_000,
                "CpuQuota": int(c["cpus"] * 100_000),
                "Memory": c["memory"] * 2**20,
            }
        }


def _engine(n: int, tenant: str | None = None) -> FakeEngine:
    labels = {"dockyard.managed": "true", "dockyard.stack": "other", "dockyard.session": "x"}
    if tenant:
        labels["dockyard.tenant"] = tenant
    return FakeEngine(
        [
            {"labels": {**labels, "dockyard.session": f"x{i}"}, "cpus": 2, "memory": 1024}
            for i in range(n)
        ]
    )


def _request(**overrides: Any) -> quotas.Request:
    return quotas.Request(
        **{
            "host": "local",
            "stack": "sessions",
            "session": "s1",
            "tenant": None,
            "cpus": 2.0,
            "memory": 1024,
            **overrides,
        }
    )


def test_quota_message_names_host_cap_use_and_request() -> None:
    caps = Quotas.model_validate({"environments": 3, "cpus": 100, "memory": "100g"})
    use = quotas.engine_use(_engine(3))
    with pytest.raises(QuotaError) as info:
        quotas.check(caps, use, _request())
    assert (
        str(info.value)
        == "quota: host local allows environments 3; 3 in use, session s1 asks 1 more"
    )
    caps = Quotas.model_validate({"cpus": 7})
    with pytest.raises(
        QuotaError, match=r"allows cpus 7 CPUs; 6 CPUs in use, session s1 asks 2 CPUs more"
    ):
        quotas.check(caps, use, _request())
    quotas.check(Quotas.model_validate({"cpus": 8}), use, _request())


def test_tenant_caps_count_only_the_tenant() -> None:
    caps = Quotas.model_validate({"tenants": {"acme": {"environments": 2}}})
    quotas.check(caps, quotas.engine_use(_engine(5)), _request(tenant="acme"))
    with pytest.raises(
        QuotaError, match="tenant acme on host local allows environments 2; 2 in use"
    ):
        quotas.check(caps, quotas.engine_use(_engine(2, tenant="acme")), _request(tenant="acme"))


def test_the_session_being_converged_does_not_count_twice() -> None:
    engine = _engine(1)
    assert quotas.engine_use(engine, exclude=("other", "x0")) == {}


def test_reservations_count_creates_in_flight(tmp_path: Path) -> None:
    caps = Quotas.model_validate({"environments": 1})
    reservations = quotas.Reservations(tmp_path)
    with reservations.reserve(caps, _engine(0), _request(session="a"), "sessions.a"):
        assert len(list(tmp_path.glob("*.json"))) == 1
        with (
            pytest.raises(QuotaError),
            reservations.reserve(caps, _engine(0), _request(session="b"), "sessions.b"),
        ):
            pass
    assert list(tmp_path.glob("*.json")) == []
    stale = tmp_path / "sessions.z.json"
    stale.write_text(
        json.dumps(
            {
                "stack_name": "sessions.z",
                "host": "local",
                "tenant": None,
                "cpus": 1,
                "memory": 1,
                "pid": 999_999_999,
                "at": 0,
            }
        )
    )
    with reservations.reserve(caps, _engine(0), _request(session="c"), "sessions.c"):
        assert not stale.exists()


def test_quota_refusal_creates_nothing(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import docker

    engine = _engine(2)
    engine.close = lambda: None  # type: ignore[attr-defined]
    monkeypatch.setattr(docker, "from_env", lambda: engine)
    driver = FakeDriver()
    sessions = _sessions(home, driver, {"quotas": {"environments": 2}})
    with pytest.raises(QuotaError):
        sessions.create(REFERENCE)
    assert driver.calls == []
    (entry,) = audit.read(sessions.where.audit_log)
    assert entry["result"] == "error"
    assert entry["detail"].startswith("quota: host local allows environments 2")


# --- audit -----------------------------------------------------------------------------------------


def test_audit_lines_rotate_and_filter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(audit_trail, "MAX_BYTES", 300)  # the one writer's (dockyard.host)
    log = tmp_path / "audit.jsonl"
    for i in range(20):
        audit.append(
            log,
            {
                "time": audit.now(),
                "action": "create",
                "session": f"s{i % 2}",
                "tenant": "t" if i % 2 else None,
                "result": "ok",
            },
        )
    assert log.with_name("audit.jsonl.1").exists()
    assert not log.with_name(f"audit.jsonl.{audit.KEEP + 1}").exists()
    assert {e["session"] for e in audit.read(log, session="s1")} == {"s1"}
    assert {e["tenant"] for e in audit.read(log, tenant="t")} == {"t"}
    assert oct(os.stat(log).st_mode & 0o777) == "0o600"


# --- the Automation API layer -----------------------------------------------------------------------


class FakeAutomation:
    """Records what the driver asks of pulumi.automation."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        outer = self

        class Stack:
            workspace = SimpleNamespace(
                remove_stack=lambda name: outer.calls.append(("remove_stack", name))
            )

            def set_config(self, key: str, value: Any) -> None:
                outer.calls.append(("set_config", (key, value.value, value.secret)))

            def up(self, on_output: Any = None, replace: Any = None) -> Any:
                outer.calls.append(("up", replace))
                manifest = _manifest("s1", CWD)
                return SimpleNamespace(
                    outputs={"environments": SimpleNamespace(value={"s1": manifest})}
                )

            def destroy(self, on_output: Any = None) -> None:
                outer.calls.append(("destroy", None))

        self.Stack = Stack

    def LocalWorkspaceOptions(self, **kwargs: Any) -> Any:
        return SimpleNamespace(**kwargs)

    def ProjectSettings(self, **kwargs: Any) -> Any:
        return SimpleNamespace(**kwargs)

    def ProjectBackend(self, **kwargs: Any) -> Any:
        return SimpleNamespace(**kwargs)

    def ConfigValue(self, **kwargs: Any) -> Any:
        return SimpleNamespace(**kwargs)

    def create_or_select_stack(self, **kwargs: Any) -> Any:
        self.calls.append(("create_or_select_stack", kwargs))
        return self.Stack()


def test_the_pulumi_driver_uses_one_stack_per_session_with_make_ups_defaults(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PULUMI_CONFIG_PASSPHRASE", raising=False)
    monkeypatch.delenv("PULUMI_BACKEND_URL", raising=False)
    where = paths()
    where.passphrase_file.parent.mkdir(parents=True)
    where.passphrase_file.write_text("pass")
    auto = FakeAutomation()
    driver = PulumiDriver(where, automation=auto)
    session_plan = plan(
        {**REFERENCE, "secrets": ["ANTHROPIC_API_KEY"]}, {}, secret_names={"ANTHROPIC_API_KEY"}
    )
    manifest = driver.up(session_plan, {"ANTHROPIC_API_KEY": "sk-x"}, print)
    assert manifest["sessionId"] == "s1"
    name, kwargs = auto.calls[0]
    assert name == "create_or_select_stack"
    assert (kwargs["stack_name"], kwargs["project_name"]) == ("sessions.s1", "dockyard-sessions")
    options = kwargs["opts"]
    assert options.secrets_provider == "passphrase"
    assert options.project_settings.backend.url == "file://~/.pulumi-dockyard"
    assert options.env_vars == {"PULUMI_CONFIG_PASSPHRASE_FILE": str(where.passphrase_file)}
    assert ("set_config", ("dockyard:ANTHROPIC_API_KEY", "sk-x", True)) in auto.calls
    assert auto.calls[-1] == ("up", None)
    driver.recreate(session_plan, {}, print)
    assert auto.calls[-1] == ("up", [container_urn(session_plan)])
    driver.destroy(session_plan, print)
    assert auto.calls[-2:] == [("destroy", None), ("remove_stack", "sessions.s1")]


def test_the_pulumi_driver_says_when_there_is_no_passphrase(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PULUMI_CONFIG_PASSPHRASE", raising=False)
    driver = PulumiDriver(paths(), automation=FakeAutomation())
    with pytest.raises(DriverError, match="no Pulumi passphrase"):
        driver.up(plan(REFERENCE, {}), {}, print)


@pytest.mark.parametrize(
    ("request_", "secrets"),
    [
        (REFERENCE, {}),
        # A brokered session has a second container (its broker): the URN must not be it.
        ({**REFERENCE, "credentials": "brokered", "secrets": ["ANTHROPIC_API_KEY"]},
         {"ANTHROPIC_API_KEY": "sk-x"}),
    ],
)  # fmt: skip
def test_the_replace_target_is_the_sessions_own_container_as_the_program_registers_it(
    request_: dict[str, Any], secrets: dict[str, str]
) -> None:
    """``pulumi up --replace`` takes the URN the driver computes: it must be a URN the
    program registers for the session's stack, and that resource the environment's
    container (not a broker's, not a command's)."""
    session_plan = plan(request_, {}, secret_names=set(secrets))
    run = ProgramRun()
    mocks = RecordingMocks(run)
    monitor = MockMonitor(mocks)
    pulumi.runtime.set_mocks(
        mocks, project=PROJECT, stack=session_plan.stack_name, preview=False, monitor=monitor
    )
    runtime_config.set_all_config(
        {f"dockyard:{k}": v for k, v in secrets.items()}, [f"dockyard:{k}" for k in secrets]
    )
    SETTINGS.rpc_manager.clear()
    SETTINGS.outputs.clear()
    _sync_await(run_pulumi_func(lambda: stack_program.run(session_plan.config)))
    urn = container_urn(session_plan)
    assert urn in monitor.resources, sorted(monitor.resources)
    (target,) = [r for r in run.resources if r.id == monitor.resources[urn].id]
    labels = {item["label"]: item["value"] for item in target.inputs["labels"]}
    assert target.type == "docker:index/container:Container"
    assert (labels.get("dockyard.managed"), labels.get("dockyard.session")) == ("true", "s1")
