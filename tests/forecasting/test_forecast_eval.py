"""`peakwise forecast-eval`: the rolling-origin evaluation and its command line."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
from forecast_data import daily_demand

from peakwise.backtest.forecast_scores import default_models, evaluate
from peakwise.cli.forecast_eval import MODEL_NAMES, add_forecast_eval_parser
from peakwise.trace import TraceTable, write_trace_csv


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="peakwise")
    add_forecast_eval_parser(parser.add_subparsers(dest="command", required=True))
    return parser


def test_evaluate_scores_each_model_without_lookahead() -> None:
    series = daily_demand(3, seed=11)
    models = {k: v for k, v in default_models().items() if k in ("recent-peak", "exp-smoothing")}
    scores = evaluate(
        series, models, lead=10, width=30, quantile=0.9, first_origin=2 * 1440, refit_every=720
    )
    assert [s.name for s in scores] == ["recent-peak", "exp-smoothing"]
    for s in scores:
        assert s.pinball_loss > 0 and 0.75 <= s.coverage <= 1.0
        assert np.isnan(s.forecast[: 2 * 1440]).all()
        assert np.isfinite(s.forecast[2 * 1440 : len(series) - 40]).all()
        assert len(s.models_chosen) == 2  # refitted every half day
        assert s.fit_seconds >= 0 and s.predict_seconds > 0
        assert s.steps is None  # no horizon asked for


def test_evaluate_scores_per_step_forecasts() -> None:
    series = daily_demand(3, seed=13)
    models = {k: v for k, v in default_models().items() if k in ("recent-peak", "auto (selected)")}
    scores = evaluate(
        series,
        models,
        lead=10,
        width=30,
        quantile=0.9,
        first_origin=2 * 1440,
        refit_every=720,
        horizon=20,
    )
    for s in scores:
        steps = s.steps
        assert steps is not None and steps.horizon == 20
        assert steps.pinball_loss.shape == steps.coverage.shape == (20,)
        assert (steps.pinball_loss > 0).all()
        # Ten-minute noise blocks over one held-out day: coverage near 0.9 at every step.
        assert 0.8 <= steps.mean_coverage <= 0.97
        assert ((steps.coverage >= 0.7) & (steps.coverage <= 1.0)).all()
        # Further ahead is harder: the last step's loss is above the first's.
        assert steps.pinball_loss[-1] > steps.pinball_loss[0]
        assert steps.fit_seconds >= 0 and steps.predict_seconds > 0


def test_command_prints_a_table_and_plots(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    series = daily_demand(3, seed=12)
    requests = series.values * 60
    table = TraceTable(
        start=series.start,
        requests=requests,
        input_tokens=np.full(len(series), np.nan),
        output_tokens=np.full(len(series), np.nan),
        has_row=np.ones(len(series), dtype=np.bool_),
    )
    trace = write_trace_csv(tmp_path / "trace.csv", table)
    args = _parser().parse_args(
        [
            "forecast-eval",
            "--trace",
            str(trace),
            "--start-day",
            "2",
            "--models",
            "seasonal-naive-day,recent-peak",
            "--plot",
            str(tmp_path / "day.png"),
        ]
    )
    assert args.run(args) == 0
    out = capsys.readouterr().out
    assert "seasonal-naive-day" in out and "recent-peak" in out and "pinball" in out
    assert (tmp_path / "day.png").stat().st_size > 10_000
    # Per-step forecasts over the default 60-minute horizon, one row per model.
    steps = out[out.index("Per-step forecasts over a 60-step horizon") :]
    assert "@60" in steps and "c@60" in steps
    rows = [line.split() for line in steps.splitlines() if line.startswith(("seasonal", "recent"))]
    assert [row[0] for row in rows] == ["seasonal-naive-day", "recent-peak"]
    assert all(len(row) == 13 and row[6].endswith("%") for row in rows)


def test_command_can_skip_per_step_forecasts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    series = daily_demand(3, seed=14)
    table = TraceTable(
        start=series.start,
        requests=series.values * 60,
        input_tokens=np.full(len(series), np.nan),
        output_tokens=np.full(len(series), np.nan),
        has_row=np.ones(len(series), dtype=np.bool_),
    )
    trace = write_trace_csv(tmp_path / "trace.csv", table)
    argv = ["forecast-eval", "--trace", str(trace), "--start-day", "2", "--models", "recent-peak"]
    args = _parser().parse_args([*argv, "--step-horizon", "0m"])
    assert args.run(args) == 0
    assert "Per-step" not in capsys.readouterr().out
    args = _parser().parse_args([*argv, "--step-horizon", "15m"])
    assert args.run(args) == 0
    out = capsys.readouterr().out
    assert "15-step horizon" in out and "@10" in out and "@30" not in out


def test_command_reports_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = _parser().parse_args(["forecast-eval", "--trace", str(tmp_path / "missing.csv")])
    assert args.run(args) == 2
    assert "cannot read" in capsys.readouterr().err


def test_model_names_match_and_registration_is_light() -> None:
    assert tuple(default_models()) == MODEL_NAMES
    import subprocess
    import sys

    code = (
        "import sys, argparse; from peakwise.cli.forecast_eval import add_forecast_eval_parser;"
        "add_forecast_eval_parser(argparse.ArgumentParser().add_subparsers());"
        "print('sklearn' in sys.modules, 'numpy' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
