"""`rules-engine publish`: send a recorded stream to a Pub/Sub topic."""

from __future__ import annotations

import argparse

from engine.commands.arguments import positive_number
from infra.pubsub import PubSubPublisher
from infra.stream_publisher import TokenBucket, publish_stream

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Declare the `publish` command."""
    parser = subparsers.add_parser(
        "publish",
        help="publish a recorded event stream to a topic",
        description=(
            "Publish each line of a recorded stream (.jsonl or .jsonl.gz) as "
            "one message: a structured-mode CloudEvent by default, binary mode "
            "with --binary. Lines that are not valid events are published as "
            "they are and counted, to exercise the dead-letter path."
        ),
    )
    parser.add_argument("events", help="recorded stream, one CloudEvent per line")
    parser.add_argument("--project", required=True, help="Google Cloud project id")
    parser.add_argument("--topic", required=True, help="topic id or full path")
    parser.add_argument(
        "--rate",
        type=positive_number,
        help="publish at most this many messages per second",
    )
    parser.add_argument(
        "--binary",
        action="store_true",
        help="send ce-* attributes and the data as the body (CloudEvents binary mode)",
    )
    parser.add_argument(
        "--ordering-key",
        default="",
        help="give every message this ordering key, so that an ordered "
        "subscription delivers them in the stream's order",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Publish the stream and print how many messages went out, how fast."""
    bucket = TokenBucket(args.rate) if args.rate is not None else None
    with PubSubPublisher(args.project, args.ordering_key) as publisher:
        summary = publish_stream(
            args.events, publisher, args.topic, binary=args.binary, bucket=bucket
        )
    print(summary.render())
    return 0
