import subprocess
import sys

import pytest

from peakwise.cli import build_parser


def _subcommands() -> list[str]:
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return sorted(action.choices)  # type: ignore[arg-type]


@pytest.mark.parametrize("command", _subcommands())
def test_every_subcommand_has_help(command: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "peakwise", command, "--help"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert f"usage: peakwise {command}" in result.stdout


def test_console_script_is_installed() -> None:
    result = subprocess.run(["peakwise", "--help"], capture_output=True, text=True, check=False)
    assert result.returncode == 0
    assert "COMMAND" in result.stdout


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--default-budget-hourly", "5"], "only with --unbudgeted DefaultBudget"),
        (["--unbudgeted", "DefaultBudget", "--default-budget-hourly", "0"], "must be above 0"),
        (["--unbudgeted", "DefaultBudget"], "--default-budget-hourly"),
    ],
)
def test_the_operator_refuses_tenancy_flags_that_do_not_fit_together(
    flags: list[str], message: str
) -> None:
    # The same rules and words as `peakwise backtest` (tests/backtest/test_fleet_tenancy_flags.py).
    proc = subprocess.run(
        [sys.executable, "-m", "peakwise", "operator", "run", *flags],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode != 0
    assert "peakwise operator run:" in proc.stderr and message in proc.stderr, proc.stderr
