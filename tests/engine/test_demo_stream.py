"""Tests of the demo stream built from the NAB series.

The stream is built once per module (about ten seconds) and read once into
a summary that the tests check.
"""

from __future__ import annotations

import argparse
import gzip
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from engine.commands import build_demo as build_demo_command
from engine.csv_import import read_series
from engine.demo_stream import DEMO_EVENT_TYPES, build_demo_stream
from engine.events import parse_event_line

DATA_DIR = Path(__file__).parents[2] / "data" / "nab"
AMZN_CSV = DATA_DIR / "data" / "realTweets" / "Twitter_volume_AMZN.csv"
START = "2015-02-26T21:42:53.000Z"
END = "2015-04-22T20:57:53.000Z"
DAY = 86_400.0


@dataclass
class StreamSummary:
    """What one pass over the built stream found."""

    lines: int = 0
    counts: Counter[str] = field(default_factory=Counter)
    out_of_order: int = 0
    ids: set[str] = field(default_factory=set)
    first_time: dict[str, str] = field(default_factory=dict)
    last_time: str = ""
    created: dict[str, float] = field(default_factory=dict)
    contributed_before_created: set[str] = field(default_factory=set)
    first_contribution: dict[str, float] = field(default_factory=dict)
    funded_after_days: list[float] = field(default_factory=list)
    created_per_minute: Counter[int] = field(default_factory=Counter)
    kyc_waiting: dict[str, float] = field(default_factory=dict)
    kyc_peak: int = 0
    kyc_approved_unseen: int = 0
    metrics: dict[str, list[float]] = field(default_factory=dict)


@dataclass
class DemoBuild:
    path: Path
    counts: dict[str, int]
    summary: StreamSummary


def summarise(path: Path) -> StreamSummary:
    """Parse every line as the engine would and collect what the tests check."""
    summary = StreamSummary()
    with gzip.open(path) as lines:
        for line in lines:
            event = parse_event_line(line)
            summary.lines += 1
            summary.counts[event.type] += 1
            summary.out_of_order += event.time < summary.last_time
            summary.last_time = event.time
            summary.ids.add(event.id)
            summary.first_time.setdefault(event.source, event.time)
            _follow(summary, event.type, event.ts, event.data)
    return summary


def _follow(summary: StreamSummary, kind: str, ts: float, data: dict[str, Any]) -> None:
    if kind == "contribution.created":
        project = str(data["projectId"])
        summary.first_contribution.setdefault(project, ts)
    elif kind == "project.created":
        project = str(data["projectId"])
        summary.created[project] = ts
        summary.created_per_minute[int(ts // 60)] += 1
        if project in summary.first_contribution:
            summary.contributed_before_created.add(project)
    elif kind == "project.funded":
        project = str(data["projectId"])
        summary.funded_after_days.append((ts - summary.created[project]) / DAY)
    elif kind == "user.kyc_submitted":
        summary.kyc_waiting[str(data["uid"])] = ts
        summary.kyc_peak = max(summary.kyc_peak, len(summary.kyc_waiting))
    elif kind == "user.kyc_approved":
        submitted = summary.kyc_waiting.pop(str(data["uid"]), None)
        summary.kyc_approved_unseen += submitted is None or submitted > ts
    elif kind == "metrics.sampled":
        for name, value in data.items():
            summary.metrics.setdefault(name, []).append(float(value))


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> DemoBuild:
    path = tmp_path_factory.mktemp("demo") / "demo.jsonl.gz"
    counts = build_demo_stream(path, DATA_DIR)
    return DemoBuild(path, counts, summarise(path))


def test_counts_per_type_are_those_of_the_stream(demo: DemoBuild) -> None:
    """The returned counts describe exactly what was written."""
    assert demo.counts == {
        "contribution.created": 843_768,
        "metrics.sampled": 26_534,
        "project.created": 150,
        "project.updated": 1_181,
        "project.funded": 91,
        "user.kyc_submitted": 12_466,
        "user.kyc_approved": 12_466,
    }
    assert list(demo.counts) == list(DEMO_EVENT_TYPES)
    assert dict(demo.summary.counts) == demo.counts
    assert demo.summary.lines == sum(demo.counts.values())


def test_contributions_follow_the_amzn_series(demo: DemoBuild) -> None:
    """One contribution per counted mention, over the whole AMZN span."""
    mentions = sum(row.value for row in read_series(AMZN_CSV).rows)

    assert mentions == 843_768
    assert demo.counts["contribution.created"] == mentions
    # The stream is dominated by contributions.
    assert demo.counts["contribution.created"] / demo.summary.lines > 0.9


def test_stream_is_in_time_order_with_unique_ids(demo: DemoBuild) -> None:
    """Every line parsed (in `summarise`), times never go back, ids never repeat."""
    assert demo.summary.out_of_order == 0
    assert len(demo.summary.ids) == demo.summary.lines


def test_series_start_together_and_end_with_the_amzn_span(demo: DemoBuild) -> None:
    """All metric series are moved to the first AMZN timestamp and clipped."""
    first = demo.summary.first_time

    assert first["/monitoring/web-analytics"] == START
    assert first["/monitoring/api"] == START
    assert first["/monitoring/load-balancer"] == START
    assert first["/monitoring/compute"] == START
    # 57 mentions in the first 5 minutes: the first lands at 300 / 57 / 2 s.
    assert first["/platform/contributions"] == "2015-02-26T21:42:55.631Z"
    assert START < demo.summary.last_time < END


@pytest.mark.parametrize(
    ("metric", "samples", "low", "high"),
    [
        ("activeUsers", 2_639, 1_769, 29_985),
        ("avgResponseTimeMs", 4_032, 11.888, 5_129.616),
        ("requestsPerSecond", 4_032, 0.333, 218.667),
        ("cpuUsage", 15_831, 28.001, 100.0),
    ],
)
def test_metric_samples_keep_their_documented_range(
    demo: DemoBuild, metric: str, samples: int, low: float, high: float
) -> None:
    """Each series is scaled as the demo module documents."""
    values = demo.summary.metrics[metric]

    assert len(values) == samples
    assert (min(values), max(values)) == (low, high)


def test_response_time_is_normal_below_2_s_and_the_outage_above_5_s(
    demo: DemoBuild,
) -> None:
    """Only the labelled failure windows of the EC2 trace pass 2,000 ms."""
    values = demo.summary.metrics["avgResponseTimeMs"]

    # 18 March 22:21-22:46 and the final failure from 20 March 23:26 on.
    assert sorted(v for v in values if v >= 2_000) == [
        2_069.056,
        2_080.044,
        2_132.036,
        2_270.324,
        2_363.186,
        2_880.56,
        2_919.42,
        5_129.616,
    ]


def test_projects_are_created_before_their_first_contribution(
    demo: DemoBuild,
) -> None:
    """A project launched during the recording is announced before any money."""
    summary = demo.summary

    assert summary.contributed_before_created == set()
    assert all(
        summary.first_contribution[project] > created
        for project, created in summary.created.items()
    )


def test_funding_comes_days_after_creation_some_after_a_week(
    demo: DemoBuild,
) -> None:
    """The week-long correlation rule sees matches and misses."""
    days = demo.summary.funded_after_days

    within_a_week = [d for d in days if d <= 7]
    assert len(within_a_week) == 57
    assert len(days) - len(within_a_week) == 34
    assert min(days) >= 1.5
    assert max(days) <= 14


def test_a_launch_day_creates_fifteen_projects_in_one_minute(
    demo: DemoBuild,
) -> None:
    """Burst rules on project creation have one case to find."""
    (minute, count), *_ = demo.summary.created_per_minute.most_common()

    assert count == 15
    assert demo.summary.created_per_minute[minute + 1] == 0


def test_kyc_backlog_builds_at_peaks_and_drains(demo: DemoBuild) -> None:
    """Approvals follow their submissions, fall behind at peaks, catch up."""
    summary = demo.summary

    assert summary.kyc_approved_unseen == 0
    assert summary.kyc_peak == 151
    assert summary.kyc_waiting == {}


def test_two_builds_are_byte_identical(demo: DemoBuild, tmp_path: Path) -> None:
    """Everything derives from the files and a fixed seed."""
    again = tmp_path / "again.jsonl.gz"

    build_demo_stream(again, DATA_DIR)

    assert again.read_bytes() == demo.path.read_bytes()


def test_build_demo_command_prints_counts_per_type(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The command passes its options on and prints one line per type."""
    calls: list[tuple[str, str]] = []

    def fake_build(out_path: str, data_dir: str) -> dict[str, int]:
        calls.append((out_path, data_dir))
        return {"contribution.created": 1_200, "metrics.sampled": 34}

    monkeypatch.setattr(build_demo_command, "build_demo_stream", fake_build)
    parser = argparse.ArgumentParser()
    build_demo_command.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["build-demo", "--out", "demo.jsonl.gz"])

    assert args.run(args) == 0

    assert calls == [("demo.jsonl.gz", "data/nab")]
    assert capsys.readouterr().out.splitlines() == [
        "contribution.created      1,200",
        "metrics.sampled              34",
        "total                     1,234",
    ]
