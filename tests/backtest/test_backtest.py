import csv
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest

from peakwise.backtest.config import (
    BacktestConfig,
    ConfigError,
    load_config,
    parse_config,
    with_replicas_at_peak,
)
from peakwise.backtest.policies import PlannedTargets, plan_targets
from peakwise.backtest.run import (
    BacktestOptions,
    BacktestResult,
    perfect_foresight,
    run_backtest,
    simulated_pools,
)
from peakwise.forecasting.select import AutoForecaster
from peakwise.forecasting.series import Series
from peakwise.forecasting.shortfall import HoldRule, held_capacity
from peakwise.forecasting.target import ShortfallForecaster, hold_rule
from peakwise.planner import PoolState
from peakwise.planner.capacity import lead_time
from peakwise.reports.backtest import CSV_COLUMNS, table, write_csvs
from peakwise.trace import demand_from_table, synthesize_trace, write_trace_csv

REPO = Path(__file__).resolve().parents[2]
TIERED = REPO / "examples" / "backtest" / "tiered.yaml"
ON_DEMAND = REPO / "examples" / "backtest" / "on-demand.yaml"
OPTIONS = BacktestOptions(warmup=timedelta(hours=6), spot_interruptions_per_node_hour=0.05)


def _series(days: int, seed: int = 3) -> Series:
    # Peak about 40 req/s: with 10 req/s per replica the example configs need ~5 replicas.
    return demand_from_table(synthesize_trace(days, seed, peak_requests_per_minute=2400)).series


@pytest.fixture(scope="module")
def tiered_result() -> BacktestResult:
    return run_backtest(_series(3), load_config(TIERED), OPTIONS)


def test_the_oracle_at_full_utilization_is_never_short_and_costs_less() -> None:
    # The least a policy that is never short can cost (benchmarks/all_traces.py's bound for
    # the tiered target): the oracle planning replicas at 100% utilisation, not at 0.8.
    series = _series(1)
    config = with_replicas_at_peak(load_config(TIERED), series, 40)  # past the reserved node
    spec = config.deployment.spec
    full = spec.model_copy(
        update={"demand": spec.demand.model_copy(update={"target_utilization": 1.0})}
    )
    pools = list(config.pools)
    sim = simulated_pools(spec, pools, 0.0)
    at_target = perfect_foresight("chat", spec, pools, sim, series.values, series.start)
    at_full = perfect_foresight("chat", full, pools, sim, series.values, series.start)
    known = ~np.isnan(series.values)
    assert (at_full.capacity[known] >= series.values[known] - 1e-9).all()
    assert (at_full.capacity <= at_target.capacity + 1e-9).all()
    assert at_full.cost.sum() < at_target.cost.sum()


def test_every_policy_is_measured_against_the_oracle(tiered_result: BacktestResult) -> None:
    summaries = {s.name: s for s in tiered_result.summaries}
    assert set(summaries) == {
        "static-peak",
        "reactive",
        "reactive-tuned",
        "hpa-70%",
        "reactive-tiered-tuned",
        "peakwise",
        "oracle",
    }
    assert summaries["oracle"].cost_vs_oracle == pytest.approx(1.0)
    assert summaries["oracle"].under_provisioned == 0.0
    assert summaries["static-peak"].under_provisioned == 0.0
    # The tuned reactive policy is tuned to be under-provisioned no more often than Peakwise.
    assert summaries["reactive-tuned"].under_provisioned <= summaries["peakwise"].under_provisioned
    assert summaries["peakwise"].cost < summaries["static-peak"].cost


def test_peakwise_uses_the_tiers(tiered_result: BacktestResult) -> None:
    run = next(r for r in tiered_result.runs if r.name == "peakwise")
    assert run.replicas["reserved"].max() > 0
    assert run.replicas["spot"].max() > 0
    total = run.replicas["reserved"] + run.replicas["spot"] + run.replicas["onDemand"]
    # Spot stays within the deployment's maxFraction of 0.6 (interruptions only lower it).
    busy = total > 0
    assert np.all(run.replicas["spot"][busy] <= 0.6 * total[busy] + 1)


def test_csvs_follow_the_output_contract(tiered_result: BacktestResult, tmp_path: Path) -> None:
    paths = write_csvs(tiered_result, tmp_path)
    assert {p.stem for p in paths} == {r.name for r in tiered_result.runs}
    with (tmp_path / "peakwise.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert len(rows) == 3 * 1440
    run = next(r for r in tiered_result.runs if r.name == "peakwise")
    assert float(rows[-1]["capacity"]) == pytest.approx(run.capacity[-1], abs=1e-3)
    assert sum(float(r["cost_usd"]) for r in rows) == pytest.approx(run.cost.sum(), rel=1e-3)


def test_table_names_every_policy(tiered_result: BacktestResult) -> None:
    text = table(tiered_result, "requests/s")
    for name in ("static-peak", "reactive-tuned", "peakwise", "oracle"):
        assert name in text


def test_no_lookahead_appending_data_keeps_the_schedule() -> None:
    full = _series(3, seed=5)
    cut = int(2.4 * 1440)
    early = full.head(cut)
    config = load_config(ON_DEMAND)
    options = BacktestOptions(warmup=timedelta(hours=1))
    short_runs = {r.name: r for r in run_backtest(early, config, options).runs}
    long_runs = {r.name: r for r in run_backtest(full, config, options).runs}
    for name in ("peakwise", "reactive"):
        for tier in ("reserved", "spot", "onDemand"):
            np.testing.assert_array_equal(
                short_runs[name].replicas[tier], long_runs[name].replicas[tier][:cut]
            )
        np.testing.assert_array_equal(short_runs[name].cost, long_runs[name].cost[:cut])


def test_the_warm_started_forecaster_is_refitted_and_never_looks_ahead() -> None:
    # Four and a half days: the refits on days 3 and 4 carry the scores of the earlier ones.
    full = _series(5, seed=6).head(int(4.5 * 1440))
    cut = int(3.5 * 1440)
    rule = HoldRule(lead=10, hold=15, replica_throughput=8.0)

    def targets(series: Series) -> tuple[ShortfallForecaster, PlannedTargets]:
        model = ShortfallForecaster(rule)
        return model, plan_targets(model, series, refit_every=1440)

    model, short = targets(full.head(cut))
    inner = model.forecaster_
    assert isinstance(inner, AutoForecaster) and inner.warm_start  # one estimator, refitted
    # A new service is refitted as its history grows, every 5 minutes at first, then daily.
    starts = [start for start, _ in short.calibrations]
    assert starts[:3] == [0, 5, 10] and starts[-1] - starts[-2] == 1440
    assert inner.scores_until_ == full.time_at(starts[-1] + 1)
    _, long = targets(full)
    np.testing.assert_array_equal(short.targets, long.targets[:cut])
    assert short.labels == long.labels[:cut]


def test_config_errors_are_clear() -> None:
    with pytest.raises(ConfigError, match="no GPUNodePool"):
        parse_config("kind: Namespace\nmetadata: {name: x}\n")
    text = TIERED.read_text().replace("pricePerNodeHour: 19.2", "pricePerNodeHour: -1")
    with pytest.raises(ConfigError, match=r"h100-spot: spec\.pricePerNodeHour"):
        parse_config(text)
    with pytest.raises(ConfigError, match="no InferenceDeployment named 'nope'"):
        parse_config(TIERED.read_text(), deployment="nope")


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "peakwise", "backtest", *args],
        capture_output=True,
        text=True,
        check=False,
    )


def test_cli_reports_a_bad_trace_in_one_line(tmp_path: Path) -> None:
    trace = tmp_path / "bad.csv"
    trace.write_text(
        "timestamp,requests,input_tokens,output_tokens\n"
        "2024-01-01T00:01:00Z,5,,\n"
        "2024-01-01T00:00:00Z,5,,\n"
    )
    result = _cli("--trace", str(trace), "--config", str(TIERED))
    assert result.returncode == 2
    assert result.stderr.startswith("peakwise backtest: error:")
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_cli_runs_end_to_end(tmp_path: Path) -> None:
    trace = tmp_path / "trace.csv"
    subprocess.run(
        [sys.executable, "-m", "peakwise", "synth-trace", "--days", "2", "--out", str(trace)],
        check=True,
        capture_output=True,
    )
    plot = tmp_path / "plot.png"
    result = _cli(
        "--trace", str(trace), "--config", str(TIERED), "--replicas-at-peak", "30",
        "--out", str(tmp_path / "out"), "--plot", str(plot), "--warmup", "6h",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "peakwise" in result.stdout and "oracle" in result.stdout
    assert plot.stat().st_size > 20_000
    assert (tmp_path / "out" / "peakwise.csv").exists()


def test_the_calibration_replay_is_what_the_simulator_measures() -> None:
    # On-demand, one GPU a node: every replica waits the full lead time, as the replay assumes.
    series = _series(3, seed=7)
    config = with_replicas_at_peak(load_config(ON_DEMAND), series, 8)
    planned = plan_targets(ShortfallForecaster(_rule(config)), series, refit_every=1440)
    result = run_backtest(series, config, BacktestOptions(warmup=timedelta(hours=6)))
    simulated = next(r for r in result.runs if r.name == "peakwise")
    np.testing.assert_array_equal(held_capacity(planned.targets, _rule(config)), simulated.capacity)


def _rule(config: BacktestConfig) -> HoldRule:
    spec = config.deployment.spec
    lead = lead_time(spec, [PoolState(p.metadata.name, p.spec) for p in config.pools])
    return hold_rule(spec, lead, timedelta(minutes=1))


def test_the_baselines_a_team_would_pick(tiered_result: BacktestResult) -> None:
    runs = {r.name: r for r in tiered_result.runs}
    # HPA at a 70% target: ready capacity is at least the demand it saw over 0.7, once ready.
    hpa = runs["hpa-70%"]
    steady = slice(tiered_result.warmup_minutes, None)
    assert np.median(hpa.capacity[steady] / np.maximum(hpa.demand[steady], 1e-9)) > 1.3
    # The tiered reactive policy fills the same tiers: reserved first, spot within its share.
    tiered = runs["reactive-tiered-tuned"]
    assert tiered.replicas["reserved"][steady].max() == 8  # the one reserved node's slots
    total = tiered.replicas["reserved"] + tiered.replicas["spot"] + tiered.replicas["onDemand"]
    busy = total > 8
    assert tiered.replicas["spot"][busy].max() > 0
    assert np.all(tiered.replicas["spot"][busy] <= 0.6 * total[busy] + 1)
    summaries = {s.name: s for s in tiered_result.summaries}
    assert (
        summaries["reactive-tiered-tuned"].under_provisioned
        <= summaries["peakwise"].under_provisioned
    )
    assert summaries["reactive-tiered-tuned"].cost < summaries["reactive-tuned"].cost


def test_cli_warns_about_zero_runs_and_gaps_them_by_default(tmp_path: Path) -> None:
    table = synthesize_trace(2, 3, peak_requests_per_minute=2400)
    table.requests[1500:1520] = 0.0
    trace = write_trace_csv(tmp_path / "outage.csv", table)
    common = ("--trace", str(trace), "--config", str(ON_DEMAND), "--warmup", "6h")
    auto = _cli(*common)
    assert auto.returncode == 0, auto.stderr
    assert "1 run(s) of zero minutes (20 minutes)" in auto.stderr
    assert "treated them as missing data (gaps)" in auto.stderr
    kept = _cli(*common, "--zero-runs", "keep")
    assert kept.returncode == 0 and "replayed them as zero demand" in kept.stderr


def test_cli_says_when_a_trace_is_too_short_to_calibrate(tmp_path: Path) -> None:
    trace = tmp_path / "short.csv"
    rows = [f"2024-01-01T00:{m:02d}:00Z,{600 + 10 * m},," for m in range(12)]
    trace.write_text("timestamp,requests,input_tokens,output_tokens\n" + "\n".join(rows) + "\n")
    result = _cli("--trace", str(trace), "--config", str(ON_DEMAND), "--replicas-at-peak", "4")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "too little history to calibrate" in result.stdout
    assert "the default headroom, a 70% utilisation target" in result.stdout
