"""`rules-engine run`: the streaming worker on a Pub/Sub subscription."""

from __future__ import annotations

import argparse
import signal
from contextlib import ExitStack
from dataclasses import replace
from functools import partial
from types import FrameType

import structlog

from engine.commands.arguments import positive_number, whole_number
from engine.commands.outputs import prepare_output
from engine.config import (
    EngineConfig,
    add_config_argument,
    build_registry,
    load_config,
)
from engine.durations import DurationError, parse_duration
from engine.errors import ConfigurationError
from engine.loader import load_rules
from engine.worker import (
    PUBSUB,
    Worker,
    WorkerOptions,
    apply_options,
    default_worker_id,
)

__all__ = ["register"]

log = structlog.get_logger(__name__)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Declare the `run` command."""
    parser = subparsers.add_parser(
        "run",
        help="run the rules on a Pub/Sub subscription, state in Firestore",
        description=(
            "Pull events, evaluate the rules on event time, commit the "
            "checkpoint and the actions to Firestore, then acknowledge. Any "
            "number of workers may share a subscription: the holder of the "
            "namespace's lease evaluates, the others stand by. SIGTERM or "
            "SIGINT finishes the current batch, commits it and exits 0."
        ),
    )
    parser.add_argument("--project", required=True, help="Google Cloud project id")
    parser.add_argument(
        "--subscription", required=True, help="subscription id or full path"
    )
    parser.add_argument("--rules", required=True, help="directory of rule files")
    parser.add_argument(
        "--dead-letter-topic",
        help="topic for rejected messages and actions out of attempts "
        "(default: the one of the subscription's dead-letter policy, as "
        "provision sets it; without a policy, log them)",
    )
    parser.add_argument(
        "--actions-out",
        help="file to append each committed action to, one JSON line each",
    )
    parser.add_argument(
        "--exit-when-idle",
        type=positive_number,
        metavar="SECONDS",
        help="exit after leading this many seconds without a message",
    )
    parser.add_argument(
        "--batch-size",
        type=whole_number(1),
        default=2000,
        metavar="N",
        help="messages per commit at most (default 2000; an ordered "
        "subscription commits after every pull)",
    )
    parser.add_argument(
        "--commit-interval",
        type=positive_number,
        default=1.0,
        metavar="SECONDS",
        help="pull for at most this long before committing (default 1)",
    )
    parser.add_argument(
        "--namespace", default="default", help="engine namespace in Firestore"
    )
    parser.add_argument(
        "--max-attempts",
        type=whole_number(1),
        default=5,
        metavar="N",
        help="attempts of a failed action before it is dead-lettered (default 5); "
        "a failure no retry can fix (invalid parameters, HandlerError) gets one",
    )
    parser.add_argument(
        "--dedup-retention",
        default="1h",
        metavar="DURATION",
        help="how long, in event time, event ids are remembered to drop "
        "redeliveries; they are part of every checkpoint, so the rules' "
        "default of days would make each commit megabytes, while a "
        "redelivery comes within minutes (default 1h; 'rules' keeps the "
        "rules' setting)",
    )
    parser.add_argument(
        "--allowed-lateness",
        default="0s",
        metavar="DURATION",
        help="event time an event may arrive after a later one and still be "
        "processed in order; it delays every event by as much (default 0s, "
        "right for an ordered subscription)",
    )
    parser.add_argument(
        "--lease-seconds",
        type=positive_number,
        default=30.0,
        metavar="SECONDS",
        help="lease length; a standby takes over this long after the leader "
        "dies (default 30)",
    )
    parser.add_argument(
        "--worker-id", help="name in the lease (default: host-pid, unique)"
    )
    parser.add_argument(
        "--metrics-port",
        type=whole_number(0, 65535),
        default=0,
        metavar="PORT",
        help="serve /metrics, /healthz, /readyz and the status page on PORT "
        "(default 0: off)",
    )
    parser.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        metavar="ADDRESS",
        help="address the metrics port binds (default 127.0.0.1; 0.0.0.0 "
        "lets Prometheus and probes in)",
    )
    parser.add_argument(
        "--watch-rules",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="reload the rules between batches when their files change; rules "
        "that fail to load leave the running ones in place (default: on)",
    )
    add_config_argument(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Run the worker until it is stopped or idle."""
    options = _options(args)
    ruleset = load_rules(args.rules)
    config = load_config(args.config)
    log.info("rules loaded", rules=len(ruleset.rules), version=ruleset.version)

    # Imported here: the Google client libraries take a while to import,
    # and other commands do not need them.
    from engine.health_probe import BackendProbe, handler_checks, pubsub_check
    from engine.observability import Observability
    from engine.rule_watcher import RuleWatcher
    from engine.status_server import StatusServer
    from infra.firestore_state import FirestoreStateStore
    from infra.pubsub import (
        PubSubPublisher,
        PubSubSource,
        describe_subscription,
        require_topic,
    )

    with ExitStack() as stack:
        registry = build_registry(config)
        stack.callback(registry.close)
        source = stack.enter_context(PubSubSource(args.project, args.subscription))
        store = FirestoreStateStore(args.project, options.namespace)
        stack.callback(store.close)
        settings = describe_subscription(args.project, args.subscription)
        if options.dead_letter_topic is None and settings.dead_letter_topic:
            # Rejected messages go where Pub/Sub itself would forward them.
            options = replace(options, dead_letter_topic=settings.dead_letter_topic)
        _require_handler_topics(config)
        publisher = None
        if options.dead_letter_topic is not None:
            require_topic(args.project, options.dead_letter_topic, "dead-letter topic")
            publisher = stack.enter_context(PubSubPublisher(args.project))
        observability = None
        if args.metrics_port:
            observability = Observability()
            server = StatusServer(observability, args.metrics_host, args.metrics_port)
            server.start()
            stack.callback(server.close)
        describe, close_describe = pubsub_check(source.subscription_path)
        stack.callback(close_describe)
        checks = {PUBSUB: describe, **handler_checks(registry, ruleset)}
        probe = BackendProbe(checks, observability)
        probe.start()
        stack.callback(probe.close)
        watcher = None
        if args.watch_rules:
            watcher = RuleWatcher(
                args.rules, registry, prepare=partial(apply_options, options=options)
            )
            watcher.start()
            stack.callback(watcher.close)
        worker = Worker(
            options,
            ruleset,
            store=store,
            source=source,
            publisher=publisher,
            registry=registry,
            observability=observability,
            ordered=settings.ordered,
            watcher=watcher,
            probe=probe,
        )
        _stop_on_signals(worker, stack)
        return worker.run()


def _require_handler_topics(config: EngineConfig) -> None:
    """Check the topics that handlers announce on, in the configuration's project.

    The configuration's `project`, not --project, names the project of a
    topic given by id; a mismatch made every announcing action fail.
    """
    from infra.pubsub import require_topic

    for name in ("scale", "change_tier"):
        topic = getattr(config.handlers, name).publish_topic
        if topic is not None:
            role = f"{name} announcement topic of {config.source!r}"
            require_topic(config.project or "", topic, role)


def _options(args: argparse.Namespace) -> WorkerOptions:
    """Build the worker's settings; argparse has checked the numbers.

    Raises:
        ConfigurationError: a duration option is not a duration, or
            --actions-out names no file that can be created.
    """
    retention = None
    if args.dedup_retention != "rules":
        retention = _duration("--dedup-retention", args.dedup_retention)
    return WorkerOptions(
        project=args.project,
        subscription=args.subscription,
        namespace=args.namespace,
        dead_letter_topic=args.dead_letter_topic,
        actions_out=prepare_output(args.actions_out) if args.actions_out else None,
        exit_when_idle=args.exit_when_idle,
        batch_size=args.batch_size,
        commit_interval=args.commit_interval,
        max_attempts=args.max_attempts,
        dedup_retention=retention,
        allowed_lateness=_duration("--allowed-lateness", args.allowed_lateness),
        lease_seconds=args.lease_seconds,
        worker_id=args.worker_id or default_worker_id(),
    )


def _duration(name: str, text: str) -> float:
    try:
        return parse_duration(text)
    except DurationError as error:
        reason = str(error).rstrip(".")
        hint = f"; {error.hint}" if error.hint else ""
        raise ConfigurationError(
            f"{name} must be a duration such as 30s or 1h: {reason}{hint}."
        ) from error


def _stop_on_signals(worker: Worker, stack: ExitStack) -> None:
    """Let SIGTERM and SIGINT finish the current batch instead of killing it."""

    def stop(number: int, _: FrameType | None) -> None:
        log.info("stop requested", signal=signal.Signals(number).name)
        worker.stop()

    for number in (signal.SIGTERM, signal.SIGINT):
        previous = signal.signal(number, stop)
        stack.callback(signal.signal, number, previous)
