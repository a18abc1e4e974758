"""`peakwise forecast-eval`: the rolling-origin evaluation and its command line."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
from forecast_data import daily_demand

from peakwise.forecasting.evaluate import MODEL_NAMES, add_forecast_eval_parser
from peakwise.forecasting.scoring import default_models, evaluate
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


def test_command_reports_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = _parser().parse_args(["forecast-eval", "--trace", str(tmp_path / "missing.csv")])
    assert args.run(args) == 2
    assert "cannot read" in capsys.readouterr().err


def test_model_names_match_and_registration_is_light() -> None:
    assert tuple(default_models()) == MODEL_NAMES
    import subprocess
    import sys

    code = (
        "import sys, argparse; from peakwise.forecasting.evaluate import add_forecast_eval_parser;"
        "add_forecast_eval_parser(argparse.ArgumentParser().add_subparsers());"
        "print('sklearn' in sys.modules, 'numpy' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
