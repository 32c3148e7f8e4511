"""`rules-engine diff`: compare the actions of two rule sets on one stream."""

from __future__ import annotations

import argparse

import orjson

from engine.commands.arguments import whole_number
from engine.loader import load_rules
from engine.rule_diff import diff_mapping, diff_rule_sets, render_diff

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Declare the `diff` command."""
    parser = subparsers.add_parser(
        "diff",
        help="replay a stream under two rule sets and compare their actions",
        description=(
            "Replay a recorded stream under the rules before and after a change, "
            "each on its own engine, and report per rule the actions added, "
            "removed and changed, with examples."
        ),
    )
    parser.add_argument("events", help="recorded stream, one CloudEvent per line")
    parser.add_argument("--before", required=True, help="rules directory before")
    parser.add_argument("--after", required=True, help="rules directory after")
    parser.add_argument(
        "--examples",
        type=whole_number(0),
        default=3,
        help="examples shown per rule and kind, 0 or more (default: 3)",
    )
    parser.add_argument(
        "--format",
        choices=("text", "json"),
        default="text",
        help="output format (default: text)",
    )
    parser.set_defaults(run=run, default_log_level="warning")


def run(args: argparse.Namespace) -> int:
    """Replay twice and print the differences; a difference is no failure."""
    before = load_rules(args.before)
    after = load_rules(args.after)
    diff = diff_rule_sets(args.events, before, after)
    if args.format == "json":
        report = diff_mapping(diff, args.examples)
        print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
    else:
        print(render_diff(diff, args.examples))
    return 0
