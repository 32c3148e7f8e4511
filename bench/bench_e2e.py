"""Measure the engine end to end on the Pub/Sub emulator.

Three measurements, in one run, reported as ratios rather than asserted:

(a) raw: M messages published to a topic with two subscriptions; one
    subscription is drained with batched pull + acknowledge and nothing
    else. This is the ceiling the client and the emulator allow.
(b) engine: the other subscription is drained through pull, decode,
    `Engine.process` with the shipped rules, and acknowledge, timed from
    the first pull to the last acknowledgement.
(c) latency: a separate process publishes at a steady rate with the
    publish time in a message attribute; this process consumes as in (b)
    and measures publish-to-action latency for the events that caused
    actions, and publish-to-processed latency for all.

The last line is `ratio_vs_raw_pull=<engine msgs/s / raw msgs/s>`.
Runs only against an emulator on the loopback interface.
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from google.cloud import pubsub_v1

from engine.config import build_registry, load_config
from engine.engine import Engine
from engine.errors import EventRejected
from engine.loader import load_rules
from engine.logging import configure_logging
from infra.pubsub import (
    STRUCTURED_CONTENT_TYPE,
    PubSubPublisher,
    PubSubSource,
    ReceivedMessage,
    decode_message,
)
from infra.stream_publisher import TokenBucket

ROOT = Path(__file__).resolve().parent.parent

AMZN = ROOT / "data/nab/data/realTweets/Twitter_volume_AMZN.csv"
STREAM = ROOT / "out/bench-amzn.jsonl"
PUBLISHED_AT = "published_at"


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


def require_emulator() -> str:
    """Return the emulator address, refusing anything but loopback."""
    host = os.environ.get("PUBSUB_EMULATOR_HOST", "")
    if not host.startswith(("127.0.0.1:", "localhost:")):
        sys.exit(
            "PUBSUB_EMULATOR_HOST must point at a local emulator (127.0.0.1:PORT); "
            "run `make bench-e2e`, which starts one."
        )
    return host


def create_topic(project: str, topic: str, subscriptions: list[str]) -> None:
    """Create a topic and plain subscriptions to it."""
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


def new_engine() -> Engine:
    """Return an engine with the shipped rules and the embedded handlers."""
    ruleset = load_rules(ROOT / "rules")
    return Engine(ruleset, build_registry(load_config(environ={})))


# Draining


def drain(
    project: str,
    subscription: str,
    count: int,
    handle: Callable[[list[ReceivedMessage]], None] | None = None,
) -> float:
    """Pull and acknowledge `count` messages; return the seconds it took."""
    received = 0
    with PubSubSource(project, subscription) as source:
        started = time.perf_counter()
        while received < count:
            batch = source.pull(max_messages=1000, timeout=10)
            if not batch:
                sys.exit(f"{subscription}: only {received} of {count} arrived")
            if handle is not None:
                handle(batch)
            source.ack([message.ack_id for message in batch])
            received += len(batch)
        return time.perf_counter() - started


class EngineLoop:
    """Decode and process pulled batches; note latency when asked."""

    def __init__(self, subscription_path: str, clock_attribute: bool) -> None:
        self._path = subscription_path
        self._clock_attribute = clock_attribute
        self.engine = new_engine()
        self.rejected = 0
        self.actions = 0
        self.delivered_latency: list[float] = []
        self.processed_latency: list[float] = []
        self.action_latency: list[float] = []

    def __call__(self, batch: list[ReceivedMessage]) -> None:
        engine = self.engine
        arrived = time.time()
        for message in batch:
            try:
                event = decode_message(
                    message.data,
                    message.attributes,
                    message.message_id,
                    message.publish_time,
                    self._path,
                )
            except EventRejected:
                self.rejected += 1
                continue
            actions = engine.process(event)
            self.actions += len(actions)
            if self._clock_attribute:
                sent = float(message.attributes[PUBLISHED_AT])
                latency = time.time() - sent
                self.delivered_latency.append(arrived - sent)
                self.processed_latency.append(latency)
                if actions:
                    self.action_latency.append(latency)
        engine.take_actions()


# Paced publishing, in its own process so that it does not share the GIL


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

    require_emulator()
    build_stream()
    # The notify handler logs every alert; the bench measures, not alerts.
    configure_logging("json", "error")
    project = f"bench-{uuid.uuid4().hex[:8]}"
    worker_present = importlib.util.find_spec("engine.worker") is not None
    loop_note = (
        "engine.worker exists but its loop is not wired here; the bench's own loop ran"
        if worker_present
        else "engine.worker does not exist yet; the bench's own loop ran"
    )

    # (a) and (b): one publish, two subscriptions
    lines = read_lines(args.messages)
    create_topic(project, "bench-events", ["raw", "engine"])
    attributes = {"content-type": STRUCTURED_CONTENT_TYPE}
    started = time.perf_counter()
    with PubSubPublisher(project) as publisher:
        publisher.publish("bench-events", ((line, attributes) for line in lines))
    publish_seconds = time.perf_counter() - started

    raw_seconds = drain(project, "raw", len(lines))
    loop = EngineLoop(f"projects/{project}/subscriptions/engine", False)
    engine_seconds = drain(project, "engine", len(lines), loop)

    # (c): steady rate from another process
    create_topic(project, "bench-latency", ["latency"])
    command = [sys.executable, __file__, "--paced-publisher", project, "bench-latency"]
    command += ["--rate", str(args.rate), "--seconds", str(args.seconds)]
    publisher_process = subprocess.Popen(command, cwd=ROOT)
    latency_loop = EngineLoop(f"projects/{project}/subscriptions/latency", True)
    latency_seconds = drain(project, "latency", latency_count, latency_loop)
    publisher_process.wait(timeout=60)

    # Report
    count = len(lines)
    raw_rate = count / raw_seconds
    engine_rate = count / engine_seconds
    rows = [
        ("publish (client, structured)", count, publish_seconds),
        ("(a) pull + ack, no engine", count, raw_seconds),
        ("(b) pull + decode + process + ack", count, engine_seconds),
        (f"(c) consume at {args.rate:g}/s", latency_count, latency_seconds),
    ]
    print(f"{'step':<36}{'messages':>10}{'seconds':>10}{'msgs/s':>10}")
    for name, messages, seconds in rows:
        print(f"{name:<36}{messages:>10}{seconds:>10.2f}{messages / seconds:>10.0f}")
    print(f"(b) actions {loop.actions}, rejected {loop.rejected}; {loop_note}")
    delivered = latency_loop.delivered_latency
    processed = latency_loop.processed_latency
    acted = latency_loop.action_latency
    # Delivery is the part the engine does not control: the client's
    # batching and how long the emulator holds a pull open.
    print(
        f"(c) publish->pulled p50 {percentile(delivered, 0.5):.1f} ms, "
        f"p99 {percentile(delivered, 0.99):.1f} ms"
    )
    print(
        f"(c) publish->processed p50 {percentile(processed, 0.5):.1f} ms, "
        f"p99 {percentile(processed, 0.99):.1f} ms over {len(processed)} events"
    )
    if acted:
        print(
            f"(c) publish->action p50 {percentile(acted, 0.5):.1f} ms, "
            f"p99 {percentile(acted, 0.99):.1f} ms over {len(acted)} events "
            f"that caused {latency_loop.actions} actions"
        )
    else:
        print("(c) no event caused an action; only publish->processed is reported")
    print(f"ratio_vs_raw_pull={engine_rate / raw_rate:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
