"""Tests of the operations commands: provision, publish and record.

The commands run through `engine.cli.main` against the Pub/Sub emulator;
a recorded stream is compared event by event with the one published.
"""

from __future__ import annotations

import gzip
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from engine.cli import main
from engine.errors import ConfigurationError
from engine.events import parse_event_line
from infra.pubsub import provision
from infra.stream_publisher import MAX_MESSAGE_BYTES, TokenBucket

VARIED = Path(__file__).parents[1] / "fixtures" / "streams" / "varied.jsonl"


def contribution_lines(count: int) -> list[str]:
    """Return `count` valid contribution events, one second apart."""
    return [
        orjson.dumps(
            {
                "specversion": "1.0",
                "id": f"ctb-{n:05d}",
                "source": "/payments",
                "type": "contribution.created",
                "time": f"2024-06-01T12:{n // 60 % 60:02d}:{n % 60:02d}.000Z",
                "data": {
                    "contributionId": f"c-{n}",
                    "projectId": f"prj-{n % 7}",
                    "contributorUid": f"usr-{n % 13}",
                    "amount": 1 + n % 50,
                    "currency": "EUR",
                },
            }
        ).decode()
        for n in range(count)
    ]


def write_stream(path: Path, lines: list[str]) -> Path:
    """Write lines as a stream file and return its path."""
    path.write_text("".join(f"{line}\n" for line in lines))
    return path


def events_by_id(path: Path) -> dict[str, dict[str, Any]]:
    """Return the events of a stream file as CloudEvent mappings by id."""
    events = [parse_event_line(line) for line in path.read_bytes().splitlines()]
    mappings = {event.id: event.to_mapping() for event in events}
    assert len(mappings) == len(events), "the stream repeats an event id"
    return mappings


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """Run one command, check that it succeeded, and return its output."""
    status = main(["--log-level", "warning", *argv])
    output = capsys.readouterr().out
    assert status == 0, output
    return output


@pytest.fixture
def events_project(pubsub_emulator_host: str, project_id: str) -> str:
    """Provision topic `events` and subscription `engine`; return the project."""
    provision(project_id, "events", "engine", "events-dl", "events-dl-kept")
    return project_id


def record(
    capsys: pytest.CaptureFixture[str], project: str, out: Path, *extra: str
) -> str:
    """Record subscription `engine` until it is idle for a second."""
    return run(
        capsys,
        "record",
        "--project",
        project,
        "--subscription",
        "engine",
        "--out",
        str(out),
        "--exit-when-idle",
        "1",
        *extra,
    )


# provision


@pytest.mark.emulator
def test_provision_twice_creates_then_finds(
    pubsub_emulator_host: str, project_id: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The first run creates four resources; the second finds the same four."""
    argv = ["provision", "--project", project_id, "--topic", "orders"]
    argv += ["--subscription", "orders-engine"]
    paths = [
        f"projects/{project_id}/topics/orders",
        f"projects/{project_id}/subscriptions/orders-engine",
        f"projects/{project_id}/topics/orders-dead-letter",
        f"projects/{project_id}/subscriptions/orders-dead-letter-kept",
    ]

    first = run(capsys, *argv)
    second = run(capsys, *argv)

    assert first.splitlines() == [f"created {path}" for path in paths]
    assert second.splitlines() == [f"found   {path}" for path in paths]


@pytest.mark.emulator
def test_provision_takes_dead_letter_names(
    pubsub_emulator_host: str, project_id: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Named dead-letter resources are used instead of the derived names."""
    output = run(
        capsys,
        "provision",
        "--project",
        project_id,
        "--topic",
        "orders",
        "--subscription",
        "orders-engine",
        "--dead-letter-topic",
        "rejected",
        "--dead-letter-subscription",
        "rejected-audit",
    )

    assert output.splitlines()[2:] == [
        f"created projects/{project_id}/topics/rejected",
        f"created projects/{project_id}/subscriptions/rejected-audit",
    ]


# publish and record

_MODES = [
    pytest.param((), id="structured mode"),
    pytest.param(("--binary",), id="binary mode"),
]


@pytest.mark.emulator
@pytest.mark.parametrize("mode", _MODES)
def test_publish_then_record_gives_the_same_events(
    mode: tuple[str, ...],
    events_project: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Every published event comes back from the recorder unchanged."""
    lines = VARIED.read_text().splitlines() + contribution_lines(250)
    stream = write_stream(tmp_path / "in.jsonl", lines)
    out = tmp_path / "recorded.jsonl"

    published = run(
        capsys,
        "publish",
        str(stream),
        "--project",
        events_project,
        "--topic",
        "events",
        *mode,
    )
    recorded = record(capsys, events_project, out)

    assert published.startswith("published 256 messages to events in ")
    assert recorded.startswith(
        f"recorded 256 events from projects/{events_project}/subscriptions/engine, "
        "rejected 0, in "
    )
    assert events_by_id(out) == events_by_id(stream)


@pytest.mark.emulator
def test_malformed_lines_are_published_as_they_are_and_rejected(
    events_project: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Bad lines are counted by publish and land in the recorder's rejects."""
    good = contribution_lines(2)
    bad = ['{"specversion":"1.0","id":"no-source"}', "not json at all"]
    stream = write_stream(tmp_path / "in.jsonl", [good[0], *bad, good[1]])
    out, rejects = tmp_path / "recorded.jsonl", tmp_path / "rejects.jsonl"

    published = run(
        capsys,
        "publish",
        str(stream),
        "--project",
        events_project,
        "--topic",
        "events",
        "--binary",
    )
    recorded = record(capsys, events_project, out, "--rejects-out", str(rejects))
    rejected = sorted(
        (entry["raw"], entry["reason"])
        for entry in map(orjson.loads, rejects.read_bytes().splitlines())
    )

    assert published.endswith("; 2 malformed lines were published as they are\n")
    assert recorded.splitlines()[1:] == [
        "  rejected invalid_json: 1",
        "  rejected missing_attribute: 1",
    ]
    assert sorted(events_by_id(out)) == ["ctb-00000", "ctb-00001"]
    assert rejected == [
        ("not json at all", "invalid_json"),
        ('{"specversion":"1.0","id":"no-source"}', "missing_attribute"),
    ]


@pytest.mark.emulator
def test_publishing_a_truncated_gzip_sends_the_lines_read_and_says_so(
    events_project: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Whole lines before the cut are published; the error names the line."""
    lines = contribution_lines(3000)
    whole = gzip.compress(("\n".join(lines) + "\n").encode())
    stream = tmp_path / "cut.jsonl.gz"
    stream.write_bytes(whole[: len(whole) // 2])
    out = tmp_path / "recorded.jsonl"

    status = main(
        [
            "--log-level",
            "warning",
            "publish",
            str(stream),
            "--project",
            events_project,
            "--topic",
            "events",
        ]
    )
    error = capsys.readouterr().err.strip().splitlines()[-1]
    recorded = record(capsys, events_project, out)
    published = int(recorded.split()[1])

    assert status == 2
    assert 0 < published < 3000
    assert error == (
        f"error: The event file {str(stream)!r} could not be read after line "
        f"{published}: Compressed file ended before the end-of-stream marker was "
        f"reached; the {published} messages before it were published."
    )
    assert list(events_by_id(out)) == [
        parse_event_line(line).id for line in lines[:published]
    ]


@pytest.mark.emulator
def test_a_line_too_large_for_pubsub_stops_publish_and_is_named(
    events_project: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A line over 10 MB ends the run at once, naming the line and its size."""
    lines = contribution_lines(3)
    huge = "x" * (MAX_MESSAGE_BYTES + 1)
    stream = write_stream(tmp_path / "in.jsonl", [lines[0], huge, lines[1]])
    out = tmp_path / "recorded.jsonl"
    argv = ["--log-level", "warning", "publish", str(stream)]
    argv += ["--project", events_project, "--topic", "events"]

    status = main(argv)
    error = capsys.readouterr().err.strip().splitlines()[-1]
    record(capsys, events_project, out)

    assert status == 2
    assert error == (
        f"error: The event file {str(stream)!r} could not be read after line 1: "
        f"line 2 is {MAX_MESSAGE_BYTES + 1} bytes, more than the "
        f"{MAX_MESSAGE_BYTES} bytes Pub/Sub takes in one message; the 1 "
        "messages before it were published."
    )
    assert list(events_by_id(out)) == [parse_event_line(lines[0]).id]


@pytest.mark.emulator
def test_record_stops_at_max_and_leaves_the_rest(
    events_project: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--max acknowledges only what it wrote; a second run gets the rest."""
    stream = write_stream(tmp_path / "in.jsonl", contribution_lines(30))
    first, second = tmp_path / "first.jsonl.gz", tmp_path / "second.jsonl"
    run(
        capsys, "publish", str(stream), "--project", events_project, "--topic", "events"
    )

    record(capsys, events_project, first, "--max", "10")
    record(capsys, events_project, second)
    first_lines = gzip.decompress(first.read_bytes()).splitlines()
    second_ids = set(events_by_id(second))

    assert len(first_lines) == 10
    first_ids = {parse_event_line(line).id for line in first_lines}
    assert first_ids | second_ids == set(events_by_id(stream))
    assert first_ids & second_ids == set()


@pytest.mark.emulator
def test_record_stopped_by_sigterm_leaves_a_whole_gzip_file(
    events_project: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """SIGTERM closes the .gz output, so that every recorded line reads back."""
    stream = write_stream(tmp_path / "in.jsonl", contribution_lines(30))
    out = tmp_path / "recorded.jsonl.gz"
    run(
        capsys, "publish", str(stream), "--project", events_project, "--topic", "events"
    )
    argv = [sys.executable, "-m", "engine", "--log-level", "info", "record"]
    argv += ["--project", events_project, "--subscription", "engine"]
    argv += ["--out", str(out)]

    recorder = subprocess.Popen(
        argv, env=os.environ.copy(), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 30
    # Gzip writes a header at once; the lines follow the first flush.
    while time.monotonic() < deadline and (
        not out.exists() or out.stat().st_size < 100
    ):
        time.sleep(0.1)
    recorder.send_signal(signal.SIGTERM)
    status = recorder.wait(timeout=30)

    assert status == 0
    # Whatever was recorded before the signal reads back, end marker included.
    lines = gzip.decompress(out.read_bytes()).splitlines()
    recorded = {parse_event_line(line).id for line in lines}
    assert recorded
    assert recorded <= set(events_by_id(stream))


@pytest.mark.emulator
def test_rate_limited_publish_sends_every_line(
    events_project: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--rate paces the stream without dropping or repeating a line."""
    stream = write_stream(tmp_path / "in.jsonl", contribution_lines(40))
    out = tmp_path / "recorded.jsonl"

    published = run(
        capsys,
        "publish",
        str(stream),
        "--project",
        events_project,
        "--topic",
        "events",
        "--rate",
        "400",
    )
    record(capsys, events_project, out)

    assert published.startswith("published 40 messages to events in ")
    assert events_by_id(out) == events_by_id(stream)


# pacing

_BUCKET_CASES = [
    pytest.param(10.0, None, 0.0, 5, [0.1] * 4, id="back to back at the rate"),
    pytest.param(10.0, 3.0, 1.0, 5, [0.1] * 2, id="a pause allows one burst"),
    pytest.param(10.0, 3.0, 0.15, 4, [0.05, 0.1], id="a short pause earns part"),
    pytest.param(1000.0, None, 0.0, 100, [0.001] * 99, id="a high rate is paced"),
]


@pytest.mark.parametrize(("rate", "burst", "pause", "takes", "sleeps"), _BUCKET_CASES)
def test_token_bucket_sleeps_just_enough(
    rate: float, burst: float | None, pause: float, takes: int, sleeps: list[float]
) -> None:
    """Takes wait exactly as long as the rate and the bucket's tokens demand."""
    now = [100.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    bucket = TokenBucket(rate, burst, clock=lambda: now[0], sleep=sleep)
    now[0] += pause
    for _ in range(takes):
        bucket.take()

    assert slept == pytest.approx(sleeps)


def test_rate_of_zero_is_refused() -> None:
    """The bucket refuses a rate that is not positive from any caller.

    The command line refuses it before it builds a bucket; its cases are
    in test_command_arguments.py.
    """
    with pytest.raises(ConfigurationError) as refused:
        TokenBucket(0)

    assert str(refused.value) == "A rate must be above 0, not 0."


@pytest.mark.emulator
def test_an_ordered_subscription_delivers_a_keyed_stream_in_order(
    pubsub_emulator_host: str,
    project_id: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`provision --ordered` and `publish --ordering-key` keep the stream's order."""
    from google.cloud import pubsub_v1

    from infra.pubsub import PubSubSource

    run(
        capsys,
        "provision",
        "--project",
        project_id,
        "--topic",
        "orders",
        "--subscription",
        "orders-engine",
        "--ordered",
    )
    lines = contribution_lines(300)
    stream = write_stream(tmp_path / "ordered.jsonl", lines)
    run(
        capsys,
        "publish",
        str(stream),
        "--project",
        project_id,
        "--topic",
        "orders",
        "--ordering-key",
        "all",
    )

    subscriber = pubsub_v1.SubscriberClient()
    path = subscriber.subscription_path(project_id, "orders-engine")
    assert subscriber.get_subscription(subscription=path).enable_message_ordering
    received: list[str] = []
    with PubSubSource(project_id, "orders-engine") as source:
        for _ in range(50):
            if len(received) == len(lines):
                break
            messages = source.pull(max_messages=100, timeout=2.0)
            received += [source.decode(message).id for message in messages]
            source.ack([message.ack_id for message in messages])
    expected = [orjson.loads(line)["id"] for line in lines]
    assert received == expected
