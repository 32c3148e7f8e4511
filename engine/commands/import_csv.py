"""`rules-engine import-csv`: turn a `timestamp,value` CSV into events."""

from __future__ import annotations

import argparse
import math

from engine.commands.arguments import file_name, positive_number, whole_number
from engine.commands.outputs import prepare_output
from engine.csv_import import (
    MAX_EVENTS,
    CountMode,
    ImportMode,
    ImportOptions,
    ValueMode,
    import_csv,
    parse_timestamp,
)
from engine.errors import ConfigurationError

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Declare the `import-csv` command."""
    parser = subparsers.add_parser(
        "import-csv",
        help="turn a timestamp,value CSV into a recorded event stream",
        description=(
            "Turn a timestamp,value CSV (UTC) into CloudEvents, either as many "
            "events per row as its value counts (--counts) or one event per row "
            "carrying the value (--field). Times take the form "
            "'2015-02-26 21:42:53'."
        ),
    )
    parser.add_argument("csv", help="input file with the header timestamp,value")
    parser.add_argument(
        "--out", required=True, type=file_name, help="output .jsonl or .jsonl.gz"
    )
    parser.add_argument(
        "--type", required=True, help="event type, e.g. metrics.sampled"
    )
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument(
        "--counts",
        action="store_true",
        help="each value is a number of events spread over its bucket",
    )
    mode.add_argument("--field", help="each row is one event with data {FIELD: value}")
    parser.add_argument(
        "--scale", type=float, help="multiply values by this (with --field; default 1)"
    )
    parser.add_argument(
        "--offset", type=float, help="add this after scaling (with --field; default 0)"
    )
    parser.add_argument("--shift-to", help="move the series so its first row is here")
    parser.add_argument("--start", help="drop rows before this time (after shifting)")
    parser.add_argument("--end", help="drop rows from this time on (after shifting)")
    parser.add_argument(
        "--bucket-seconds",
        type=positive_number,
        help="bucket width (default: the median gap between rows)",
    )
    parser.add_argument("--id-prefix", default="csv", help="event id prefix")
    parser.add_argument("--source", default="/csv-import", help="CloudEvents source")
    parser.add_argument("--seed", type=int, default=0, help="seed of synthesised data")
    parser.add_argument(
        "--max-events",
        type=whole_number(1),
        default=MAX_EVENTS,
        help=f"refuse to write more events than this (default {MAX_EVENTS:,})",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Import the file and print how many events were written."""
    mode: ImportMode
    if not args.type.strip():
        raise ConfigurationError("The --type value is empty; name an event type.")
    for name, value in (("--scale", args.scale), ("--offset", args.offset)):
        if value is not None and not math.isfinite(value):
            raise ConfigurationError(
                f"The {name} value {value} is not a finite number."
            )
    if args.counts:
        if args.scale is not None or args.offset is not None:
            raise ConfigurationError(
                "The options --scale and --offset apply to --field, not --counts."
            )
        mode = CountMode()
    else:
        scale = 1.0 if args.scale is None else args.scale
        offset = 0.0 if args.offset is None else args.offset
        mode = ValueMode(args.field, scale, offset)

    prepare_output(args.out)
    options = ImportOptions(
        event_type=args.type,
        source=args.source,
        id_prefix=args.id_prefix,
        seed=args.seed,
        shift_to_ms=_time_option("--shift-to", args.shift_to),
        start_ms=_time_option("--start", args.start),
        end_ms=_time_option("--end", args.end),
        max_events=args.max_events,
    )
    count = import_csv(args.csv, args.out, mode, options, args.bucket_seconds)
    print(f"{count} events written to {args.out}")
    return 0


def _time_option(name: str, text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return parse_timestamp(text)
    except (ValueError, OverflowError) as error:
        raise ConfigurationError(
            f"The {name} value {text!r} is not a date and time such as "
            "'2015-02-26 21:42:53'."
        ) from error
