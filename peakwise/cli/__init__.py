"""The `peakwise` command line: one subcommand per job, each with its own --help."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from peakwise import __version__

if TYPE_CHECKING:
    from peakwise.trace import Trace

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
    p.add_argument(
        "--family",
        default="weekly",
        choices=["weekly", "growth", "level-shift", "spikes", "launch", "sparse"],
        help="shape of demand (default weekly: the chat service above); growth doubles over "
        "two weeks, level-shift steps up 1.8x, spikes adds sudden spikes several times a day, "
        "launch is a new service's first day, sparse has a few requests a minute at the peak",
    )
    p.add_argument("--days", type=_positive_int, help="length in days (default: 14, launch 1)")
    p.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    p.add_argument(
        "--peak",
        type=float,
        help="peak in requests per minute (default 3000; sparse 6)",
    )
    p.add_argument("--out", required=True, help="CSV file to write")
    p.set_defaults(run=_run_synth_trace)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _run_synth_trace(args: argparse.Namespace) -> int:
    from peakwise.trace import synthesize_family, write_trace_csv

    table = synthesize_family(args.family, args.days, args.seed, peak_requests_per_minute=args.peak)
    path = write_trace_csv(args.out, table)
    print(f"{path}: {len(table)} minutes from {table.start:%Y-%m-%d %H:%M} UTC")
    return 0


def _add_backtest(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "backtest",
        help="replay a demand trace through Peakwise and the usual alternatives",
        description="Replay a per-minute demand trace, minute by minute, through Peakwise "
        "(forecasts calibrated to the deployment's slo.shortfallMinutes, then the planner) and "
        "the alternatives a team would pick: static capacity for the peak, reactive HPA-like "
        "scaling with no headroom, tuned in hindsight to Peakwise's shortfall, and at a 70% "
        "utilisation target; with several capacity tiers also reactive scaling that fills the "
        "same tiers (HPA plus a Karpenter-like provisioner), tuned the same way; and a "
        "perfect-foresight oracle. Provisioning delay, tier prices and spot interruptions are "
        "simulated. Prints a table; writes per-minute CSVs and a plot. With --prometheus-url "
        "and --manifests DIR or --from-cluster, the whole fleet instead: every service's "
        "history from Prometheus, replayed jointly on the shared pools under the budgets, "
        "tables per namespace and for the fleet, commitment advice and an HTML report.",
    )
    p.add_argument("--trace", help="CSV: timestamp,requests,input_tokens,... (one service)")
    p.add_argument(
        "--config",
        help="YAML with the GPUNodePools, the InferenceDeployment and optionally its CostBudget",
    )
    p.add_argument("--out", help="directory for the per-minute CSVs")
    p.add_argument("--plot", help="PNG file for the plot")
    p.add_argument(
        "--column",
        default="requests",
        choices=["requests", "input_tokens", "output_tokens", "tokens"],
        help="which trace column is the demand (default requests; read as a rate per second)",
    )
    p.add_argument("--deployment", help="which InferenceDeployment of the config to replay")
    p.add_argument(
        "--replicas-at-peak",
        type=_positive_int,
        help="rescale throughputPerReplica so the trace's peak needs this many replicas",
    )
    p.add_argument(
        "--spot-interruptions",
        type=float,
        default=0.0,
        help="spot interruptions per node-hour to simulate (default 0)",
    )
    p.add_argument(
        "--zero-gap-minutes",
        type=_positive_int,
        help="treat every run of at least this many zero minutes as missing data, not idle time",
    )
    p.add_argument(
        "--zero-runs",
        choices=["auto", "keep"],
        default="auto",
        help="auto (default): runs of 10 or more zero minutes that the demand around them makes "
        "implausible as idle time (20 requests or more expected over the run) are missing data "
        "and replayed as gaps, with a warning; keep: replay every zero as zero demand (still "
        "warned about)",
    )
    p.add_argument(
        "--window",
        default="1m",
        help="forecast window each decision covers, one lead time ahead (default 1m: one "
        "decision interval, so each minute is covered by the freshest forecast made for it)",
    )
    p.add_argument("--warmup", default="1d", help="replayed but not measured (default 1d)")
    p.add_argument("--seed", type=int, default=1, help="seed for spot interruptions")
    from peakwise.cli.fleet import add_fleet_backtest_arguments

    add_fleet_backtest_arguments(p)
    p.set_defaults(run=_run_backtest)


def _run_backtest(args: argparse.Namespace) -> int:
    from peakwise.api.common import parse_duration
    from peakwise.backtest.config import ConfigError, load_config, with_replicas_at_peak
    from peakwise.backtest.progress import ProgressBar
    from peakwise.backtest.run import BacktestOptions, run_backtest
    from peakwise.reports.backtest import calibration_summary, plot, table, write_csvs
    from peakwise.trace import TraceError, read_trace

    if args.prometheus_url:
        if args.trace or args.config:
            print(
                "peakwise backtest: error: --prometheus-url replays the fleet; --trace and "
                "--config replay one service: give one or the other",
                file=sys.stderr,
            )
            return 2
        from peakwise.cli.fleet import run_fleet_backtest_command

        return run_fleet_backtest_command(args)
    if not (args.trace and args.config):
        print(
            "peakwise backtest: error: give --trace and --config (one service), or "
            "--prometheus-url with --manifests DIR or --from-cluster (the fleet)",
            file=sys.stderr,
        )
        return 2
    try:
        trace = read_trace(
            args.trace,
            args.column,
            zero_is_gap_min_run=args.zero_gap_minutes,
            implausible_zeros_as_gaps=args.zero_runs == "auto" and not args.zero_gap_minutes,
        )
        _warn_about_zero_runs(trace, args)
        config = load_config(args.config, args.deployment)
        if args.replicas_at_peak:
            config = with_replicas_at_peak(config, trace.series, args.replicas_at_peak)
        options = BacktestOptions(
            warmup=parse_duration(args.warmup),
            window=parse_duration(args.window),
            spot_interruptions_per_node_hour=args.spot_interruptions,
            seed=args.seed,
        )
        with ProgressBar() as bar:
            result = run_backtest(trace.series, config, options, progress=bar.update)
    except (TraceError, ConfigError, ValueError) as e:
        print(f"peakwise backtest: error: {e}", file=sys.stderr)
        return 2
    print(table(result, trace.unit))
    print(calibration_summary(result))
    if args.out:
        paths = write_csvs(result, args.out)
        print(f"wrote {len(paths)} CSVs to {args.out}")
    if args.plot:
        print(f"wrote {plot(result, args.plot, trace.unit)}")
    return 0


def _warn_about_zero_runs(trace: Trace, args: argparse.Namespace) -> None:
    """Say what happened to zero runs that look like missing data, once, on stderr."""
    runs = trace.zero_runs
    if not runs:
        return
    minutes = sum(r.minutes for r in runs)
    what = f"{len(runs)} run(s) of zero minutes ({minutes:,} minutes)"
    why = "where the demand around them makes idle time implausible"
    if args.zero_gap_minutes:
        done = f"--zero-gap-minutes {args.zero_gap_minutes} treated runs as gaps"
    elif args.zero_runs == "auto":
        done = (
            "treated them as missing data (gaps); --zero-runs keep replays them as zero "
            "demand, --zero-gap-minutes N gaps every run of N zero minutes"
        )
    else:
        done = "replayed them as zero demand (--zero-runs keep); --zero-runs auto gaps them"
    print(f"peakwise backtest: warning: {what} {why}: {done}", file=sys.stderr)


def _add_operator(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from peakwise.operator.main import add_parser

    add_parser(sub)


def _add_demo_view(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from peakwise.demo import add_parser

    add_parser(sub)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="peakwise",
        description="Forecast-driven right-sizing of GPU inference services on Kubernetes.",
    )
    parser.add_argument("--version", action="version", version=f"peakwise {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_crds(sub)
    _add_synth_trace(sub)
    _add_backtest(sub)
    _add_operator(sub)
    _add_demo_view(sub)
    from peakwise.cli.fleet import add_advise_parser

    add_advise_parser(sub)
    from peakwise.cli.forecast_eval import add_forecast_eval_parser

    add_forecast_eval_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    run: Command = args.run
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
