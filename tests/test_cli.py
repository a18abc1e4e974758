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
