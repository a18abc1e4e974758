"""The fleet backtest's tenancy flags: namespaces without a CostBudget priced as the operator's
``--unbudgeted DefaultBudget --default-budget-hourly N`` would."""

from __future__ import annotations

import argparse
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from peakwise.backtest.config import ConfigError
from peakwise.backtest.fleet import Fleet, FleetOptions, run_fleet_backtest
from peakwise.cli import build_parser
from peakwise.cli.fleet import load_fleet_objects, tenancy_policy
from peakwise.forecasting.series import Series
from peakwise.trace import synthesize_family

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "fleet"
START = datetime(2024, 1, 1, tzinfo=UTC)


def _args(*flags: str, command: str = "backtest") -> argparse.Namespace:
    return build_parser().parse_args(
        [command, "--prometheus-url", "http://127.0.0.1:9", "--manifests", str(EXAMPLE), *flags]
    )


def _fleet(*flags: str) -> Fleet:
    args = _args(*flags)
    fleet, _ = load_fleet_objects(args, tenancy_policy(args))
    return fleet


def test_without_the_flags_a_namespace_without_a_budget_is_only_recommended_for() -> None:
    fleet = _fleet()
    assert fleet.unenforced() == ["support"]
    assert fleet.budget("support") is None


def test_a_default_budget_caps_the_namespaces_without_one() -> None:
    fleet = _fleet(
        "--unbudgeted",
        "DefaultBudget",
        "--default-budget-hourly",
        "7.5",
        "--default-namespace-priority",
        "-1",
    )
    assert fleet.unenforced() == []
    support = fleet.budget("support")
    assert support is not None and support.limits.hourly == 7.5
    assert fleet.policy.default_priority == -1
    # Namespaces with their own CostBudget keep it.
    chat = fleet.budget("chat")
    assert chat is not None and chat.limits.hourly != 7.5


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--unbudgeted", "DefaultBudget"), "DefaultBudget needs a default_budget"),
        (("--default-budget-hourly", "5"), "only with --unbudgeted DefaultBudget"),
        (("--unbudgeted", "DefaultBudget", "--default-budget-hourly", "0"), "above 0"),
    ],
)
def test_flags_that_do_not_fit_together_are_an_error(flags: tuple[str, ...], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _fleet(*flags)


def test_the_command_reports_the_error(capsys: pytest.CaptureFixture[str]) -> None:
    args = _args("--default-budget-hourly", "5", "--jobs", "1")
    code: int = args.run(args)
    assert code == 2
    assert "--default-budget-hourly caps namespaces only with" in capsys.readouterr().err


def test_the_replay_holds_an_unbudgeted_namespace_under_the_default_cap() -> None:
    fleet = _fleet("--namespace", "support")
    demand = {}
    for i, infd in enumerate(fleet.deployments):
        table = synthesize_family("weekly", 2, seed=i + 1, peak_requests_per_minute=6000)
        demand[("support", infd.metadata.name)] = Series(START, 60, table.requests[:900] / 60)
    options = FleetOptions(warmup=timedelta(hours=3))
    uncapped = run_fleet_backtest(fleet, demand, options)
    free = uncapped.summary("support", "peakwise")
    assert free.hourly_cap is None and free.peak_planned_hourly is not None
    cap = round(free.peak_planned_hourly / 2, 2)

    capped_fleet = _fleet(
        "--namespace",
        "support",
        "--unbudgeted",
        "DefaultBudget",
        "--default-budget-hourly",
        str(cap),
    )
    capped = run_fleet_backtest(capped_fleet, demand, options)
    held = capped.summary("support", "peakwise")
    assert held.hourly_cap == cap
    assert held.budget_limited_minutes > 0
    run = capped.run("peakwise")
    planned = np.sum([s.planned for s in run.services.values() if s.planned is not None], axis=0)
    assert planned.max() * 60 <= cap + 1e-6
    # The same fleet with its policy set directly replays the same.
    direct = run_fleet_backtest(replace(fleet, policy=capped_fleet.policy), demand, options)
    assert direct.summary("support", "peakwise") == held


def test_advise_reads_the_fleet_without_the_tenancy_flags() -> None:
    # `peakwise advise` shares the fleet's loading and has no tenancy flags: it is not capped.
    fleet, _ = load_fleet_objects(_args(command="advise"))
    assert len(fleet.deployments) == 6
    assert fleet.unenforced() == ["support"]
