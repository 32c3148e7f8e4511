"""`rules-engine schema`: print the JSON Schema of a rule file."""

from __future__ import annotations

import argparse
import sys

from engine.commands.arguments import file_name
from engine.commands.outputs import prepare_output
from engine.rule_schema import render_schema

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Declare the `schema` command."""
    parser = subparsers.add_parser(
        "schema",
        help="print the JSON Schema of a rule file",
        description=(
            "Print the JSON Schema of a rule file, generated from the rule "
            "language's models, for editors and other tools."
        ),
    )
    parser.add_argument(
        "--out",
        action="append",
        type=file_name,
        default=[],
        help="write the schema to this file instead (may repeat)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Print or write the schema."""
    text = render_schema()
    if not args.out:
        sys.stdout.write(text)
    # Every name is checked before any file is written.
    paths = [prepare_output(name) for name in args.out]
    for path in paths:
        path.write_text(text, encoding="utf-8")
    return 0
