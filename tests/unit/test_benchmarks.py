"""The benchmarks' pure logic: settings, ratios, verdicts, the entrypoint's timing line and
the engine's memory figures. The measurements themselves need the engine (`make bench`)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from benchmarks import common, density, env_ready, scale


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, ("runc", "runsc")),
        ("", ("runc", "runsc")),
        ("  ", ("runc", "runsc")),
        ("runsc", ("runsc",)),
        ("runsc, runc", ("runsc", "runc")),
        ("runc,runc,runsc", ("runc", "runsc")),
    ],
)
def test_runtimes_setting(value: str | None, expected: tuple[str, ...]) -> None:
    assert common.parse_runtimes(value, ("runc", "runsc")) == expected


@pytest.mark.parametrize("value", ["kata", "runc,", "runc;runsc", "RUNSC"])
def test_runtimes_setting_refuses_unknown_names(value: str) -> None:
    with pytest.raises(ValueError, match="is not allowed") as error:
        common.parse_runtimes(value, ("runc",))
    message = str(error.value)
    assert "DOCKYARD_BENCH_RUNTIMES" in message
    assert repr(value) in message
    assert "runc, runsc" in message


def test_runtime_missing_from_the_engine_is_skipped_when_only_defaulted() -> None:
    chosen, notes = common.usable_runtimes(("runc", "runsc"), ["runc"], explicit=False)
    assert chosen == ("runc",)
    assert len(notes) == 1
    assert "runsc" in notes[0]
    assert "DOCKYARD_BENCH_RUNTIMES" in notes[0]


def test_runtime_missing_from_the_engine_is_an_error_when_asked_for() -> None:
    with pytest.raises(ValueError, match=r"names runsc, which the engine has not registered"):
        common.usable_runtimes(("runc", "runsc"), ["io.containerd.runc.v2", "runc"], True)


def test_registered_runtimes_are_all_kept_in_order() -> None:
    assert common.usable_runtimes(("runsc", "runc"), ["runc", "runsc"], True) == (
        ("runsc", "runc"),
        [],
    )


def test_runtime_reaches_every_environment_through_the_stack_profile() -> None:
    values = {"limits": {"cpus": 1}, "environments": [{"sessionId": "a"}, {"sessionId": "b"}]}
    on = common.on_runtime(values, "runsc")
    assert on["profile"] == "bench"
    assert on["profiles"] == {"bench": {"runtime": "runsc"}}
    assert on["environments"] == values["environments"]
    assert "profile" not in values  # the caller's values are left alone


def test_runtime_profile_is_a_valid_stack() -> None:
    from dockyard.config import parse

    values = common.on_runtime({"environments": [{"sessionId": "a", "backend": "codex"}]}, "runsc")
    config = parse({f"dockyard:{k}": v for k, v in values.items()}, stack="dev", cwd="/tmp")
    (env,) = config.environments
    assert config.runtime_of(env) == "runsc"


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, (20, 50, 100)), ("", (20, 50, 100)), ("20", (20,)), ("5,10", (5, 10))],
)
def test_sizes_setting(value: str | None, expected: tuple[int, ...]) -> None:
    assert common.parse_sizes("DOCKYARD_BENCH_SIZES", value, (20, 50, 100)) == expected


@pytest.mark.parametrize("value", ["0", "20,", "ten", "-5", "20;50"])
def test_sizes_setting_refuses_what_is_not_a_count(value: str) -> None:
    with pytest.raises(ValueError, match="is not allowed") as error:
        common.parse_sizes("DOCKYARD_BENCH_RUNSC_SIZES", value, (20,))
    assert f"DOCKYARD_BENCH_RUNSC_SIZES={value!r} is not allowed" in str(error.value)
    assert "whole numbers >= 1" in str(error.value)


def test_scale_measures_runsc_at_its_own_sizes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DOCKYARD_BENCH_SIZES", raising=False)
    monkeypatch.delenv("DOCKYARD_BENCH_RUNSC_SIZES", raising=False)
    assert scale.sizes_of("runc") == (20, 50, 100)
    assert scale.sizes_of("runsc") == (20,)
    monkeypatch.setenv("DOCKYARD_BENCH_SIZES", "30")
    monkeypatch.setenv("DOCKYARD_BENCH_RUNSC_SIZES", "10,20")
    assert scale.sizes_of("runc") == (30,)
    assert scale.sizes_of("runsc") == (10, 20)


def test_ratio_and_verdict() -> None:
    assert common.ratio(1.15, 1.0) == pytest.approx(1.15)
    assert common.verdict(common.ratio(0.46, 0.4), 1.15) == "meets"  # 1.15 exactly
    assert common.verdict(common.ratio(0.461, 0.4), 1.15) == "MISSES"
    with pytest.raises(ValueError, match="baseline 0"):
        common.ratio(1.0, 0)


def test_stat_row_gives_the_ratio_of_medians() -> None:
    label, median, low, high, times = common.stat_row("x", [0.5, 0.4, 0.9], baseline=0.4)
    assert (label, median, low, high, times) == ("x", 0.5, 0.4, 0.9, "1.25")
    assert common.stat_row("y", [1.0])[-1] == ""


def test_percentiles_are_samples_by_nearest_rank() -> None:
    samples = [float(n) for n in range(20, 0, -1)]  # 20 samples, unordered
    assert common.percentiles(samples) == {"p50": 10.5, "p95": 19.0, "max": 20.0, "runs": 20}
    assert common.p95([0.3]) == 0.3
    assert common.p95([0.1, 0.9]) == 0.9


def test_bench_env_puts_an_outer_pythonpath_first(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PYTHONPATH", "/other/revision")
    env = common.bench_env(tmp_path / "s", tmp_path / "p", tmp_path / "c.yaml", EXTRA="1")
    assert env["PYTHONPATH"] == f"/other/revision{os.pathsep}{common.REPO}"
    assert (env["DOCKYARD_STATE_DIR"], env["DOCKYARD_CONFIG"]) == (
        str(tmp_path / "s"),
        str(tmp_path / "c.yaml"),
    )
    assert env["DOCKYARD_DRIVER"] == "tests.harness.sessions:HarnessDriver"
    assert env["EXTRA"] == "1"


def test_engine_time_keeps_microseconds() -> None:
    from datetime import UTC, datetime

    epoch = datetime(2026, 11, 23, 21, 0, 0, tzinfo=UTC).timestamp()
    assert common.parse_engine_time("2026-11-23T21:00:00.123456789Z") == pytest.approx(
        epoch + 0.123456, abs=1e-6
    )
    assert common.parse_engine_time("2026-11-23T21:00:00Z") == epoch


LOG = """dockyard: backend claude 2.0.0 (Claude Code); 0 secret(s) exported
dockyard: ready: tmux session 'main' in /workspace
dockyard: timing start=1795381200.500000 config=0.8 secrets=1.0 cli-started=1.6 workspace=2.0 tmux=25.0 cli=39.0 ready=40.2 (ms since start)
"""


def test_timing_line_and_phases() -> None:
    entry, steps = env_ready.timing(LOG)
    assert entry == 1795381200.5
    assert list(steps) == list(env_ready.STEPS)
    phases = env_ready.phases(1795381200.0, 1795381200.45, entry, steps)
    assert list(phases) == list(env_ready.PHASES)
    assert phases["engine: create -> started"] == pytest.approx(0.45)
    assert phases["engine: started -> entrypoint"] == pytest.approx(0.05)
    assert phases["config"] == pytest.approx(0.0008)
    assert phases["tmux"] == pytest.approx(0.023)
    assert phases["cli"] == pytest.approx(0.014)
    # The steps add up to the entrypoint's last figure: nothing is counted twice.
    assert sum(phases[s] for s in env_ready.STEPS) == pytest.approx(0.0402)


def test_timing_line_missing_a_step_is_an_error() -> None:
    with pytest.raises(KeyError, match="ready"):
        env_ready.timing(
            "dockyard: timing start=1.0 config=1 secrets=1 cli-started=1 workspace=1 tmux=1 cli=1"
        )


def test_idle_memory_without_inactive_page_cache() -> None:
    mb = 1024 * 1024
    v1 = {"usage": 10 * mb, "stats": {"total_inactive_file": 6 * mb, "cache": 8 * mb}}
    v2 = {"usage": 5 * mb, "stats": {"inactive_file": 1 * mb}}
    assert scale.idle_mb(v1) == 4.0
    assert scale.idle_mb(v2) == 4.0
    assert scale.idle_mb({"usage": 3 * mb}) == 3.0
    assert scale.idle_mb({}) is None


def test_density_reads_the_hosts_available_memory_and_a_processes_pss() -> None:
    meminfo = "MemTotal:       24000000 kB\nMemFree:  100 kB\nMemAvailable:   2048 kB\n"
    assert density.mem_available_mb(meminfo) == 2.0
    assert density.pss_mb("Rss:   9000 kB\nPss:    3072 kB\nPss_Anon:  1 kB\n") == 3.0
    with pytest.raises(ValueError, match="MemAvailable"):
        density.mem_available_mb("MemTotal: 1 kB\n")
    with pytest.raises(ValueError, match="Pss"):
        density.pss_mb("Rss: 1 kB\n")


def test_density_finds_each_containers_own_shim_only(tmp_path: Path) -> None:
    def process(pid: int, *argv: str) -> None:
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv))

    shim = "/usr/bin/containerd-shim-runc-v2"
    process(10, shim, "-namespace", "moby", "-id", "aaa", "-address", "/run/x.sock")
    process(11, shim, "-namespace", "moby", "-id", "bbb", "-address", "/run/x.sock")
    process(12, "/usr/bin/sleep", "-id", "ccc")  # not a shim, whatever its arguments
    process(13, shim, "-namespace", "moby", "-id")  # no id after the flag
    (tmp_path / "self").mkdir()
    (tmp_path / "14").mkdir()  # gone before its command line was read
    found = density.shims_by_container(tmp_path, ["aaa", "ccc", "ddd"])
    assert found == {"aaa": 10}


@pytest.mark.parametrize(("value", "expected"), [(None, 200), ("", 200), ("50", 50)])
def test_density_count(monkeypatch: pytest.MonkeyPatch, value: str | None, expected: int) -> None:
    if value is None:
        monkeypatch.delenv("DOCKYARD_BENCH_DENSITY", raising=False)
    else:
        monkeypatch.setenv("DOCKYARD_BENCH_DENSITY", value)
    assert density.count() == expected


@pytest.mark.parametrize("value", ["20,50", "many", "0"])
def test_density_count_refuses_what_is_not_one_count(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("DOCKYARD_BENCH_DENSITY", value)
    with pytest.raises(ValueError, match="DOCKYARD_BENCH_DENSITY"):
        density.count()
