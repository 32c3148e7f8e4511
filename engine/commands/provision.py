"""`rules-engine provision`: create the engine's topics and subscriptions."""

from __future__ import annotations

import argparse

from engine.commands.arguments import whole_number
from infra.pubsub import provision

__all__ = ["register"]

# The order in which `provision` reports its resources.
_RESOURCES = ("topic", "subscription", "dead_letter_topic", "dead_letter_subscription")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Declare the `provision` command."""
    parser = subparsers.add_parser(
        "provision",
        help="create the Pub/Sub topics and subscriptions, if missing",
        description=(
            "Create the event topic, the engine's subscription with a "
            "dead-letter policy, and the dead-letter topic with a subscription "
            "that keeps its messages. Existing resources are left as they are; "
            "running the command again changes nothing."
        ),
    )
    parser.add_argument("--project", required=True, help="Google Cloud project id")
    parser.add_argument("--topic", required=True, help="topic that carries events")
    parser.add_argument(
        "--subscription", required=True, help="the engine's subscription to --topic"
    )
    parser.add_argument(
        "--dead-letter-topic",
        help="topic for events that cannot be processed (default: TOPIC-dead-letter)",
    )
    parser.add_argument(
        "--dead-letter-subscription",
        help=("subscription that keeps dead letters (default: DEAD_LETTER_TOPIC-kept)"),
    )
    # Pub/Sub's own bounds: an ack deadline of 10 to 600 seconds and 5 to
    # 100 delivery attempts. Checked here, so that a wrong value stops the
    # command before it creates the first of its resources.
    parser.add_argument(
        "--ack-deadline",
        type=whole_number(10, 600),
        default=60,
        help="seconds, 10 to 600 (default: 60)",
    )
    parser.add_argument(
        "--max-delivery-attempts",
        type=whole_number(5, 100),
        default=5,
        help="deliveries before a message is dead-lettered, 5 to 100 (default: 5)",
    )
    parser.add_argument(
        "--ordered",
        action="store_true",
        help="deliver messages with one ordering key in publish order; the "
        "worker then equals replay even after a crash (an existing subscription "
        "must have the same ordering)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Provision the resources and print which were created and which found."""
    dead_letter_topic = args.dead_letter_topic or f"{args.topic}-dead-letter"
    dead_letter_subscription = (
        args.dead_letter_subscription or f"{dead_letter_topic}-kept"
    )
    result = provision(
        args.project,
        args.topic,
        args.subscription,
        dead_letter_topic,
        dead_letter_subscription,
        ack_deadline=args.ack_deadline,
        max_delivery_attempts=args.max_delivery_attempts,
        ordered=args.ordered,
    )
    created = set(result["created"])
    for key in _RESOURCES:
        path = result[key]
        print(f"{'created' if path in created else 'found':<8}{path}")
    return 0
