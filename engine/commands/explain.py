"""`rules-engine explain`: tell in words why one action happened."""

from __future__ import annotations

import argparse

from engine.explain import explain_action, find_action
from engine.loader import load_rules

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Declare the `explain` command."""
    parser = subparsers.add_parser(
        "explain",
        help="explain one recorded action: rule, time, condition, events",
        description=(
            "Explain one action from an action log (as replay --actions-out "
            "writes it): the rule, the time, the condition and the value it "
            "saw, the contributing events, the trigger, the rules version, the "
            "parameters and what became of it."
        ),
    )
    parser.add_argument("action_id", help="the action id, or a unique prefix of it")
    parser.add_argument(
        "--actions", required=True, help="action log, one JSON record per line"
    )
    parser.add_argument(
        "--rules",
        help="rules directory: show the rule's definition there, and warn when "
        "its version is not the one the action was decided under",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Find the action and print its explanation."""
    record = find_action(args.actions, args.action_id)
    rules = load_rules(args.rules) if args.rules else None
    print(explain_action(record, rules, args.rules or ""))
    return 0
