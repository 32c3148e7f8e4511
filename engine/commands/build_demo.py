"""`rules-engine build-demo`: build the demo stream from the NAB series."""

from __future__ import annotations

import argparse

from engine.commands.arguments import file_name
from engine.commands.outputs import prepare_output
from engine.demo_stream import build_demo_stream

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Declare the `build-demo` command."""
    parser = subparsers.add_parser(
        "build-demo",
        help="build the demo event stream from the NAB time series",
        description=(
            "Build one recorded stream (contributions, metrics, project and KYC "
            "events) on the time line of the Twitter AMZN series."
        ),
    )
    parser.add_argument(
        "--out", required=True, type=file_name, help="output .jsonl or .jsonl.gz"
    )
    parser.add_argument(
        "--data-dir",
        default="data/nab",
        help="directory holding the NAB data/ tree (default: data/nab)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Build the stream and print the number of events of each type."""
    prepare_output(args.out)
    counts = build_demo_stream(args.out, args.data_dir)
    width = max(len(event_type) for event_type in counts)
    for event_type, count in counts.items():
        print(f"{event_type:<{width}}  {count:>9,}")
    print(f"{'total':<{width}}  {sum(counts.values()):>9,}")
    return 0
