"""The platform's tenancy flags, one definition for `peakwise operator run` and for
`peakwise backtest` (which replays a fleet as an operator run with the same flags would)."""

from __future__ import annotations

import argparse

from pydantic import ValidationError

from peakwise.api.costbudget import BudgetLimits, CostBudgetSpec
from peakwise.planner import TenancyPolicy


def add_tenancy_arguments(parser: argparse.ArgumentParser, title: str) -> None:
    """The flags for namespaces without a CostBudget (docs/tenancy.md)."""
    group = parser.add_argument_group("tenancy", title)
    group.add_argument(
        "--unbudgeted",
        choices=("RecommendOnly", "DefaultBudget"),
        default="RecommendOnly",
        help="what a namespace without a valid CostBudget gets: RecommendOnly (planned, "
        "nothing scaled: fail closed; the default; a backtest replays it uncapped and says "
        "so) or DefaultBudget (--default-budget-hourly caps it)",
    )
    group.add_argument(
        "--default-budget-hourly",
        type=float,
        help="the hourly cap of a namespace without a CostBudget, with --unbudgeted DefaultBudget",
    )
    group.add_argument(
        "--default-namespace-priority",
        type=int,
        default=0,
        help="cross-namespace priority of a namespace without a CostBudget (0)",
    )
    group.add_argument(
        "--default-reserved-weight",
        type=float,
        default=0.0,
        help="reserved-capacity weight of a namespace without a CostBudget (0: only what "
        "budgeted namespaces leave unused)",
    )


def tenancy_policy(args: argparse.Namespace) -> TenancyPolicy:
    """The platform's rules from the flags; ValueError, naming the flag, when they do not fit
    together (a default budget without DefaultBudget would cap nothing)."""
    default = None
    if args.default_budget_hourly is not None:
        if args.unbudgeted != "DefaultBudget":
            raise ValueError(
                "--default-budget-hourly caps namespaces only with --unbudgeted DefaultBudget"
            )
        try:
            default = CostBudgetSpec(limits=BudgetLimits(hourly=args.default_budget_hourly))
        except ValidationError:
            raise ValueError(
                f"--default-budget-hourly must be above 0 (got {args.default_budget_hourly:g})"
            ) from None
    try:
        return TenancyPolicy(
            unbudgeted=args.unbudgeted,
            default_budget=default,
            default_priority=args.default_namespace_priority,
            default_reserved_weight=args.default_reserved_weight,
        )
    except ValueError as error:
        raise ValueError(f"{error} (--default-budget-hourly)") from None
