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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="peakwise",
        description="Forecast-driven right-sizing of GPU inference services on Kubernetes.",
    )
    parser.add_argument("--version", action="version", version=f"peakwise {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_crds(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    run: Command = args.run
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
