"""`rules-engine record`: write a subscription's events to a stream file."""

from __future__ import annotations

import argparse
import signal
from contextlib import ExitStack
from types import FrameType

from engine.commands.arguments import file_name, positive_number, whole_number
from engine.commands.outputs import prepare_output
from infra.pubsub import PubSubSource
from infra.stream_recorder import open_output, record_subscription

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Declare the `record` command."""
    parser = subparsers.add_parser(
        "record",
        help="record a subscription into a stream file for replay",
        description=(
            "Pull messages, decode them into events and append each as one "
            "CloudEvent JSON line; a batch is acknowledged once its lines are "
            "flushed. Rejected messages are acknowledged as well. Runs until "
            "idle (--exit-when-idle), full (--max) or interrupted."
        ),
    )
    parser.add_argument("--project", required=True, help="Google Cloud project id")
    parser.add_argument(
        "--subscription", required=True, help="subscription id or full path"
    )
    parser.add_argument(
        "--out",
        required=True,
        type=file_name,
        help="stream file to append to (.jsonl or .jsonl.gz)",
    )
    parser.add_argument(
        "--rejects-out",
        type=file_name,
        help="file for rejected messages and their reasons (default: log them)",
    )
    parser.add_argument(
        "--exit-when-idle",
        type=positive_number,
        metavar="SECONDS",
        help="stop after this many seconds without a message",
    )
    parser.add_argument(
        "--max", type=whole_number(1), metavar="N", help="stop after N messages"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Record the subscription and print what was written and rejected."""
    for name in (args.out, args.rejects_out):
        if name:
            prepare_output(name)
    with ExitStack() as stack:
        _interrupt_on_sigterm(stack)
        source = stack.enter_context(PubSubSource(args.project, args.subscription))
        out = stack.enter_context(open_output(args.out))
        rejects = None
        if args.rejects_out:
            rejects = stack.enter_context(open_output(args.rejects_out))
        summary = record_subscription(
            source,
            out,
            rejects_out=rejects,
            idle_seconds=args.exit_when_idle,
            max_messages=args.max,
        )
    print(summary.render())
    return 0


def _interrupt_on_sigterm(stack: ExitStack) -> None:
    """Let SIGTERM end a recording as Ctrl-C does, closing the outputs.

    Ended by the default action instead, the process left a .gz output
    without its end marker: unreadable past the last flush, and past that
    point for good once a later recording appended to it.
    """

    def interrupt(number: int, _: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    stack.callback(signal.signal, signal.SIGTERM, previous)
