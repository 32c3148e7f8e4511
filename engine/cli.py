"""The `rules-engine` command line.

Each command lives in its own module, which exposes `register(subparsers)`
to declare its arguments and bind `args.run`, a function that returns the
process exit status.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from google.auth.exceptions import DefaultCredentialsError

from engine.errors import EngineError
from engine.logging import configure_logging

__all__ = ["build_parser", "main"]

_LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
# Modules that each register one or more sub-commands, in help order.
_COMMAND_MODULES = (
    "engine.commands.replay",
    "engine.commands.import_csv",
    "engine.commands.build_demo",
    "engine.commands.provision",
    "engine.commands.publish",
    "engine.commands.record",
    "engine.commands.validate",
    "engine.commands.schema",
    "engine.commands.test_rules",
    "engine.commands.diff",
    "engine.commands.explain",
    "engine.commands.run",
)


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser with every registered command."""
    parser = argparse.ArgumentParser(
        prog="rules-engine",
        description="Event-time rules engine for Pub/Sub business events.",
    )
    parser.add_argument(
        "--log-format",
        choices=("auto", "json", "console"),
        default="auto",
        help="log format; 'auto' uses console on a terminal, JSON otherwise",
    )
    parser.add_argument(
        "--log-level",
        default=None,
        # Upper case is accepted too, as the logging module names levels so.
        type=str.lower,
        choices=_LOG_LEVELS,
        help="minimum log level (default: info; warning for replay-like commands)",
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in _COMMAND_MODULES:
        module = importlib.import_module(name)
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line and return its exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    level = args.log_level or getattr(args, "default_log_level", "info")
    configure_logging(args.log_format, level)
    try:
        status: int = args.run(args)
    except EngineError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        # A file a command was told to read or write: name it, no traceback.
        where = f" {error.filename!r}" if error.filename else ""
        print(f"error: {error.strerror or error}{where}.", file=sys.stderr)
        return 2
    except DefaultCredentialsError as error:
        # Raised as a Google client is built, by any command that builds one;
        # the library's own message is a paragraph with a link.
        print(f"error: {_credentials_problem(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return status


def _credentials_problem(error: DefaultCredentialsError) -> str:
    """Say in one line why no Google credentials could be used."""
    key_file = os.environ.get("GOOGLE_APPLICATION_CREDENTIALS")
    if key_file:
        # The first argument is the sentence; a second may hold the cause.
        reason = error.args[0] if error.args else error
        return (
            f"The Google credentials in GOOGLE_APPLICATION_CREDENTIALS "
            f"({key_file!r}) could not be used: {reason}"
        )
    return (
        "No Google credentials were found; set GOOGLE_APPLICATION_CREDENTIALS "
        "to a service account key file, or PUBSUB_EMULATOR_HOST and "
        "FIRESTORE_EMULATOR_HOST to use the emulators."
    )


if __name__ == "__main__":
    sys.exit(main())
