"""`rules-engine explain`: tell in words why one action happened."""

from __future__ import annotations

import argparse

from engine.actions import ActionRecord
from engine.errors import ConfigurationError
from engine.explain import explain_action, find_action, record_from_mapping
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
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--actions", help="action log, one JSON record per line")
    source.add_argument(
        "--project",
        help="read the worker's action log in Firestore (the emulator when "
        "FIRESTORE_EMULATOR_HOST is set); the id must then be whole",
    )
    parser.add_argument(
        "--rules",
        help="rules directory: show the rule's definition there, and warn when "
        "its version is not the one the action was decided under",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Find the action and print its explanation."""
    if args.project:
        record = _find_in_firestore(args.project, args.action_id)
    else:
        record = find_action(args.actions, args.action_id)
    rules = load_rules(args.rules) if args.rules else None
    print(explain_action(record, rules, args.rules or ""))
    return 0


def _find_in_firestore(project: str, action_id: str) -> ActionRecord:
    from infra.firestore_state import FirestoreStateStore

    store = FirestoreStateStore(project)
    try:
        document = store.read_action(action_id)
    finally:
        store.close()
    if document is None:
        raise ConfigurationError(
            f"No action {action_id!r} is in the action log of project {project!r}."
        )
    return record_from_mapping(document, f"Firestore project {project}")
