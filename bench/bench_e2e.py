"""Measure the streaming worker end to end on the emulators.

Three measurements, in one run, reported rather than asserted:

(a) raw: M messages published to a topic with four subscriptions; one
    is drained with batched pull + acknowledge and nothing else, untimed,
    to warm the emulator up (its first drain is much slower), then the
    second the same way, timed. This is the ceiling the client and the
    emulator allow.
(a') raw, acknowledged one pull behind: the third subscription drained
    the same way, except that each pull's messages are acknowledged only
    after the next pull has answered. No more work than (a), yet the
    emulator serves every pull several times slower while any message of
    a large backlog is pulled and unacknowledged, and a consumer that
    acknowledges only after its work is durable always has some. This is
    the ceiling for such a consumer, the worker included.
(b) worker: the other subscription, holding the same M messages, is
    drained by the real streaming worker (`engine.worker.Worker`) with the
    shipped rules, the embedded handlers, its state in the Firestore
    emulator and the defaults of `rules-engine run`: pull, decode, reorder,
    process, commit the checkpoint and the actions, then acknowledge. It
    is timed from its first pull to its last acknowledgement, which comes
    after the commit of the last batch; the idle wait before it exits is
    not counted.
(c) latency: a separate process publishes at a steady rate with the
    publish time in a message attribute, and a fresh worker consumes the
    stream. An action's latency runs from its event's publish to the
    return of the Firestore commit that holds it, the moment it is durable
    (the actions-out line and the acknowledgement follow). Every message
    also gets its publish-to-acknowledge latency.

The worker runs in this process so that thin subclasses of its source and
store can note the times: they add a clock read per call and, in (c) only,
a dictionary entry per message. Rule files are not watched, as with
`rules-engine run --no-watch-rules`.

The last line is `ratio_vs_raw_pull=<worker msgs/s / raw msgs/s>`, after
`ratio_vs_held_pull`, the worker against (a').
Runs only against emulators on the loopback interface.
"""

from __future__ import annotations

import argparse
import itertools
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from google.cloud import pubsub_v1

from engine.config import build_registry, load_config
from engine.events import Event
from engine.loader import load_rules
from engine.logging import configure_logging
from engine.worker import Worker, WorkerOptions
from infra.firestore_state import (
    CommitReport,
    FirestoreStateStore,
    Lease,
    StateCommit,
)
from infra.pubsub import (
    STRUCTURED_CONTENT_TYPE,
    PubSubPublisher,
    PubSubSource,
    ReceivedMessage,
)
from infra.stream_publisher import TokenBucket

ROOT = Path(__file__).resolve().parent.parent

AMZN = ROOT / "data/nab/data/realTweets/Twitter_volume_AMZN.csv"
STREAM = ROOT / "out/bench-amzn.jsonl"
PUBLISHED_AT = "published_at"
# Long enough for the paced publisher's process to start and send.
LATENCY_IDLE_SECONDS = 10.0
THROUGHPUT_IDLE_SECONDS = 2.0


def build_stream() -> None:
    """Turn the AMZN counts into contribution.created events, once."""
    if STREAM.exists():
        return
    STREAM.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "engine", "import-csv", str(AMZN)]
    command += ["--out", str(STREAM), "--type", "contribution.created"]
    command += ["--counts", "--id-prefix", "amzn"]
    subprocess.run(command, check=True, cwd=ROOT)


def read_lines(count: int) -> list[bytes]:
    """Return the first `count` lines of the AMZN stream."""
    with STREAM.open("rb") as stream:
        return [line.rstrip(b"\n") for line in itertools.islice(stream, count)]


def require_emulators() -> None:
    """Refuse to run unless Pub/Sub and Firestore are local emulators."""
    for variable in ("PUBSUB_EMULATOR_HOST", "FIRESTORE_EMULATOR_HOST"):
        host = os.environ.get(variable, "")
        if not host.startswith(("127.0.0.1:", "localhost:")):
            sys.exit(
                f"{variable} must point at a local emulator (127.0.0.1:PORT); "
                "run `make bench-e2e`, which starts them."
            )


def create_topic(project: str, topic: str, subscriptions: list[str]) -> None:
    """Create a topic and plain (unordered) subscriptions to it."""
    publisher = pubsub_v1.PublisherClient()
    subscriber = pubsub_v1.SubscriberClient()
    topic_path = publisher.topic_path(project, topic)
    publisher.create_topic(name=topic_path)
    for name in subscriptions:
        subscriber.create_subscription(
            request={
                "name": subscriber.subscription_path(project, name),
                "topic": topic_path,
                "ack_deadline_seconds": 600,
            }
        )
    subscriber.close()
    publisher.stop()


# (a) the raw ceiling


def drain(project: str, subscription: str, count: int, held: bool = False) -> float:
    """Pull and acknowledge `count` messages; return the seconds it took.

    With `held`, each pull's messages are acknowledged only after the next
    pull has answered, so that some are always held while pulling.
    """
    received = 0
    waiting: list[str] = []
    with PubSubSource(project, subscription) as source:
        started = time.perf_counter()
        while received < count:
            batch = source.pull(max_messages=1000, timeout=10)
            if not batch:
                sys.exit(f"{subscription}: only {received} of {count} arrived")
            if waiting:
                source.ack(waiting)
            waiting = [message.ack_id for message in batch]
            if not held:
                source.ack(waiting)
                waiting = []
            received += len(batch)
        if waiting:
            source.ack(waiting)
        return time.perf_counter() - started


# (b) and (c) the worker, with its times noted


class TimedSource(PubSubSource):
    """The worker's subscription, noting the first pull and every ack.

    With `stamped`, it also keeps each message's publish stamp by ack id
    and by event id, for the latency of acknowledgements and actions.
    """

    def __init__(self, project: str, subscription: str, stamped: bool) -> None:
        super().__init__(project, subscription)
        self.stamped = stamped
        self.first_pull: float | None = None
        self.last_ack = 0.0
        self.acked = 0
        self.sent_by_ack_id: dict[str, float] = {}
        self.sent_by_event_id: dict[str, float] = {}
        self.ack_latency: list[float] = []

    def pull(
        self, max_messages: int = 1000, timeout: float = 10.0
    ) -> list[ReceivedMessage]:
        if self.first_pull is None:
            self.first_pull = time.perf_counter()
        messages = super().pull(max_messages, timeout)
        if self.stamped:
            for message in messages:
                sent = float(message.attributes[PUBLISHED_AT])
                self.sent_by_ack_id[message.ack_id] = sent
        return messages

    def decode(self, message: ReceivedMessage) -> Event:
        event = super().decode(message)
        if self.stamped:
            self.sent_by_event_id[event.id] = self.sent_by_ack_id[message.ack_id]
        return event

    def ack(self, ack_ids: Sequence[str]) -> None:
        super().ack(ack_ids)
        self.last_ack = time.perf_counter()
        self.acked += len(ack_ids)
        if self.stamped:
            now = time.time()
            self.ack_latency += [now - self.sent_by_ack_id[i] for i in ack_ids]


class TimedStore(FirestoreStateStore):
    """The worker's Firestore state, noting each commit and its actions."""

    def __init__(self, project: str, namespace: str, source: TimedSource) -> None:
        super().__init__(project, namespace)
        self.source = source
        self.reports: list[CommitReport] = []
        self.actions = 0
        self.action_latency: list[float] = []

    def commit(self, lease: Lease, commit: StateCommit) -> tuple[Lease, CommitReport]:
        lease, report = super().commit(lease, commit)
        self.reports.append(report)
        self.actions += len(commit.actions)
        if self.source.stamped:
            now = time.time()
            sent = self.source.sent_by_event_id
            self.action_latency += [now - sent[r.trigger_id] for r in commit.actions]
        return lease, report


@dataclass
class WorkerRun:
    """What one worker run did, as its source and store noted it."""

    source: TimedSource
    store: TimedStore

    @property
    def seconds(self) -> float:
        """Return the time from the first pull to the last acknowledgement."""
        assert self.source.first_pull is not None
        return self.source.last_ack - self.source.first_pull

    def describe(self) -> str:
        """Return the commits, their sizes and the actions, on one line."""
        reports = self.store.reports
        commits = len(reports) or 1
        mean_ms = sum(r.seconds for r in reports) / commits * 1000
        largest = max((r.compressed_bytes for r in reports), default=0)
        return (
            f"{self.source.acked} acked, {self.store.actions} actions, "
            f"{len(reports)} commits of {self.source.acked / commits:.0f} msgs, "
            f"{mean_ms:.1f} ms mean, checkpoint <= {largest} bytes"
        )


def run_worker(
    project: str,
    subscription: str,
    count: int,
    idle: float,
    stamped: bool = False,
    publisher: subprocess.Popen[bytes] | None = None,
) -> WorkerRun:
    """Run a fresh worker on `subscription` until it is idle; note its times."""
    source = TimedSource(project, subscription, stamped)
    store = TimedStore(project, f"bench-{subscription}", source)
    registry = build_registry(load_config(environ={}))
    with tempfile.TemporaryDirectory() as folder:
        options = WorkerOptions(
            project=project,
            subscription=subscription,
            namespace=store.namespace,
            actions_out=Path(folder) / "actions.jsonl",
            exit_when_idle=idle,
            worker_id="bench",
        )
        worker = Worker(
            options,
            load_rules(ROOT / "rules"),
            store=store,
            source=source,
            registry=registry,
        )
        try:
            worker.run()
        finally:
            registry.close()
            store.close()
            source.close()
    if source.acked < count:
        sys.exit(f"{subscription}: the worker acknowledged {source.acked} of {count}")
    return WorkerRun(source, store)


# (c) paced publishing, in its own process so that it does not share the GIL


def paced_messages(
    lines: list[bytes], rate: float
) -> Iterator[tuple[bytes, dict[str, str]]]:
    """Yield structured messages at `rate`, stamped as they leave."""
    bucket = TokenBucket(rate)
    for line in lines:
        bucket.take()
        attributes = {"content-type": STRUCTURED_CONTENT_TYPE}
        attributes[PUBLISHED_AT] = f"{time.time():.6f}"
        yield line, attributes


def run_paced_publisher(project: str, topic: str, rate: float, count: int) -> None:
    """Publish `count` stream lines at `rate` per second."""
    lines = read_lines(count)
    with PubSubPublisher(project) as publisher:
        publisher.publish(topic, paced_messages(lines, rate))


def percentile(values: list[float], share: float) -> float:
    """Return a percentile in milliseconds (nearest rank)."""
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(share * len(ordered)) - 1))
    return ordered[rank] * 1000


def latency_line(name: str, values: list[float], what: str) -> str:
    """Return one line of p50 and p99 for `values`."""
    if not values:
        return f"{name}: none measured"
    return (
        f"{name} p50 {percentile(values, 0.5):.1f} ms, "
        f"p99 {percentile(values, 0.99):.1f} ms over {len(values)} {what}"
    )


# Main


def main() -> int:
    """Run the measurements, or the paced publisher, and print the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--paced-publisher", nargs=2, metavar=("PROJECT", "TOPIC"))
    args = parser.parse_args()
    latency_count = int(args.rate * args.seconds)
    if args.paced_publisher:
        project, topic = args.paced_publisher
        run_paced_publisher(project, topic, args.rate, latency_count)
        return 0

    require_emulators()
    build_stream()
    # The notify handler logs every alert; the bench measures, not alerts.
    configure_logging("json", "error")
    project = f"bench-{uuid.uuid4().hex[:8]}"

    # (a) and (b): one publish, two subscriptions
    lines = read_lines(args.messages)
    count = len(lines)
    create_topic(project, "bench-events", ["warm-up", "raw", "held", "worker"])
    attributes = {"content-type": STRUCTURED_CONTENT_TYPE}
    started = time.perf_counter()
    with PubSubPublisher(project) as publisher:
        publisher.publish("bench-events", ((line, attributes) for line in lines))
    publish_seconds = time.perf_counter() - started

    # A freshly started emulator is slow for its first drain; the worker
    # would be compared with a cold ceiling. One untimed drain warms it.
    warm_seconds = drain(project, "warm-up", count)
    raw_seconds = drain(project, "raw", count)
    held_seconds = drain(project, "held", count, held=True)
    throughput = run_worker(project, "worker", count, THROUGHPUT_IDLE_SECONDS)

    # (c): steady rate from another process
    create_topic(project, "bench-latency", ["latency"])
    command = [sys.executable, __file__, "--paced-publisher", project, "bench-latency"]
    command += ["--rate", str(args.rate), "--seconds", str(args.seconds)]
    publisher_process = subprocess.Popen(command, cwd=ROOT)
    latency = run_worker(
        project, "latency", latency_count, LATENCY_IDLE_SECONDS, stamped=True
    )
    publisher_process.wait(timeout=60)

    # Report
    raw_rate = count / raw_seconds
    worker_rate = count / throughput.seconds
    rows = [
        ("publish (client, structured)", count, publish_seconds),
        ("(a) raw pull + ack, warm-up (not used)", count, warm_seconds),
        ("(a) raw pull + ack", count, raw_seconds),
        ("(a') raw, ack one pull behind", count, held_seconds),
        ("(b) worker, first pull to last ack", count, throughput.seconds),
        (f"(c) worker at {args.rate:g}/s", latency_count, latency.seconds),
    ]
    print(f"{'step':<38}{'messages':>10}{'seconds':>10}{'msgs/s':>10}")
    for name, messages, seconds in rows:
        print(f"{name:<38}{messages:>10}{seconds:>10.2f}{messages / seconds:>10.0f}")
    print(f"(b) {throughput.describe()}")
    print(f"(c) {latency.describe()}")
    print(latency_line("(c) publish->ack", latency.source.ack_latency, "messages"))
    print(
        latency_line(
            "(c) publish->action committed", latency.store.action_latency, "actions"
        )
    )
    held_rate = count / held_seconds
    print(f"(a') / (a) = {held_rate / raw_rate:.2f}, the cost of held messages")
    print(f"ratio_vs_held_pull={worker_rate / held_rate:.2f}")
    print(f"ratio_vs_raw_pull={worker_rate / raw_rate:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
