"""`rules-engine replay`: run a recorded stream through the rules."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import structlog

from engine.commands.arguments import file_name
from engine.commands.outputs import prepare_output
from engine.errors import ConfigurationError
from engine.loader import load_rules
from engine.replay import ReplayIncomplete, open_stream, replay_stream

__all__ = ["register"]

log = structlog.get_logger(__name__)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Declare the `replay` command."""
    parser = subparsers.add_parser(
        "replay",
        help="replay a recorded event stream on event time",
        description="Replay a recorded stream (.jsonl or .jsonl.gz) through the rules.",
    )
    parser.add_argument("events", help="recorded stream, one CloudEvent per line")
    parser.add_argument("--rules", required=True, help="directory of rule files")
    parser.add_argument(
        "--actions-out",
        required=True,
        type=file_name,
        help="file for the actions, one JSON line each",
    )
    parser.add_argument(
        "--dead-letter-out",
        type=file_name,
        help="file for rejected lines and their reasons",
    )
    parser.add_argument(
        "--no-progress", action="store_true", help="hide the progress bar"
    )
    # Alerts raised during a replay are in the actions file; logging each
    # one as well would bury the summary.
    parser.set_defaults(run=run, default_log_level="warning")


def run(args: argparse.Namespace) -> int:
    """Replay the stream and print the summary."""
    ruleset = load_rules(args.rules)
    log.info("rules loaded", rules=len(ruleset.rules), version=ruleset.version)
    # Fail on a wrong path before the output files are truncated.
    open_stream(args.events).close()
    outputs = [name for name in (args.actions_out, args.dead_letter_out) if name]
    for name in outputs:
        prepare_output(name)
    # Opening an output truncates it: it must be neither the input nor the
    # other output.
    seen = [Path(args.events).resolve()]
    for name in outputs:
        if Path(name).resolve() in seen:
            raise ConfigurationError(
                f"The output {name!r} is also the event file or the other "
                "output; give each its own file."
            )
        seen.append(Path(name).resolve())
    dead_letter = None
    if args.dead_letter_out:
        dead_letter = open(args.dead_letter_out, "wb")  # noqa: SIM115 - closed below
    try:
        with open(args.actions_out, "wb") as actions:
            summary = replay_stream(
                args.events,
                ruleset,
                actions_out=actions,
                dead_letter_out=dead_letter,
                progress=sys.stderr.isatty() and not args.no_progress,
            )
    except ReplayIncomplete as incomplete:
        # What was read stands: its summary first, then the error.
        print(incomplete.summary.render())
        raise
    finally:
        if dead_letter is not None:
            dead_letter.close()
    print(summary.render())
    return 0
