"""The `peakwise` command line: one subcommand per job, each with its own --help."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from peakwise import __version__

Command = Callable[[argparse.Namespace], int]


def _add_crds(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "crds",
        help="write the CustomResourceDefinitions generated from the API models",
        description="Generate the CRD YAML (OpenAPI schema, CEL rules, printer columns) "
        "from the pydantic models, the single source of truth.",
    )
    p.add_argument("--out", default="crds", help="directory to write the YAML files into")
    p.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 if the files in --out differ from what the models generate",
    )
    p.set_defaults(run=_run_crds)


def _run_crds(args: argparse.Namespace) -> int:
    from peakwise.api.crdgen import check_crds, write_crds

    if args.check:
        drift = check_crds(args.out)
        for line in drift:
            print(line, file=sys.stderr)
        return 1 if drift else 0
    for path in write_crds(args.out):
        print(path)
    return 0


def _add_synth_trace(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "synth-trace",
        help="write a synthetic per-minute demand trace (CSV) to try backtests on",
        description="Generate a realistic per-minute trace of a chat service (daily and weekly "
        "seasonality, morning ramp, evening peak, noise, bursts) in the format "
        "`peakwise backtest` reads: timestamp,requests,input_tokens,output_tokens.",
    )
    p.add_argument("--days", type=_positive_int, default=14, help="length in days (default 14)")
    p.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    p.add_argument(
        "--peak",
        type=float,
        default=3000.0,
        help="typical weekday peak in requests per minute (default 3000)",
    )
    p.add_argument("--out", required=True, help="CSV file to write")
    p.set_defaults(run=_run_synth_trace)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _run_synth_trace(args: argparse.Namespace) -> int:
    from peakwise.trace import synthesize_trace, write_trace_csv

    table = synthesize_trace(args.days, args.seed, peak_requests_per_minute=args.peak)
    path = write_trace_csv(args.out, table)
    print(f"{path}: {len(table)} minutes from {table.start:%Y-%m-%d %H:%M} UTC")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="peakwise",
        description="Forecast-driven right-sizing of GPU inference services on Kubernetes.",
    )
    parser.add_argument("--version", action="version", version=f"peakwise {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_crds(sub)
    _add_synth_trace(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    run: Command = args.run
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
