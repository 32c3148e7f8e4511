"""Tests of turning `timestamp,value` CSV files into recorded events."""

from __future__ import annotations

import argparse
import gzip
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from engine.commands import import_csv as import_csv_command
from engine.csv_import import (
    CountMode,
    ImportMode,
    ImportOptions,
    ValueMode,
    format_millis,
    generate_events,
    import_csv,
    merge_streams,
    parse_timestamp,
    read_series,
    spread_times,
    write_event_lines,
)
from engine.errors import ConfigurationError
from engine.events import parse_event_line

FIXTURES = Path(__file__).parents[1] / "fixtures" / "csv"
CONTRIBUTIONS = ImportOptions(event_type="contribution.created")
SAMPLES = ImportOptions(event_type="metrics.sampled", id_prefix="m")


def fixture(name: str) -> str:
    return str(FIXTURES / name)


def events_of(name: str, mode: ImportMode, options: ImportOptions) -> list[Any]:
    """Import a fixture in memory and parse every line as the engine would."""
    series = read_series(fixture(name))
    return [
        parse_event_line(line) for _, line in generate_events(series, mode, options)
    ]


# Time


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2015-02-26 21:42:53", "2015-02-26T21:42:53.000Z"),
        ("2015-02-26T21:42:53Z", "2015-02-26T21:42:53.000Z"),
        ("2015-02-26T22:42:53+01:00", "2015-02-26T21:42:53.000Z"),
        (" 2014-07-01 00:00:00 ", "2014-07-01T00:00:00.000Z"),
        ("2015-02-26 21:42:53.250", "2015-02-26T21:42:53.250Z"),
    ],
)
def test_timestamps_are_read_as_utc(text: str, expected: str) -> None:
    """Naive timestamps are UTC; zoned ones are converted to UTC."""
    assert format_millis(parse_timestamp(text)) == expected


@pytest.mark.parametrize(
    ("count", "offsets"),
    [
        (0, []),
        (1, [150_000]),
        (3, [50_000, 150_000, 250_000]),
        (7, [21_428, 64_285, 107_142, 150_000, 192_857, 235_714, 278_571]),
    ],
)
def test_spread_times_places_event_i_at_its_share_of_the_bucket(
    count: int, offsets: list[int]
) -> None:
    """Event i of n sits at (i + 0.5) / n of the bucket, floored to the ms."""
    assert spread_times(1_000_000, 300_000, count) == [1_000_000 + o for o in offsets]


# Reading


@pytest.mark.parametrize(
    ("name", "bucket_seconds", "rows", "bucket_ms"),
    [
        ("counts.csv", None, 4, 300_000),
        ("values.csv", None, 3, 1_800_000),
        ("repeated_timestamps.csv", None, 9, 300_000),
        ("single_row.csv", 60.0, 1, 60_000),
        ("counts.csv", 600.0, 4, 600_000),
    ],
)
def test_read_series_takes_the_median_gap_unless_told(
    name: str, bucket_seconds: float | None, rows: int, bucket_ms: int
) -> None:
    """A missing bucket or a repeated timestamp does not change the width."""
    series = read_series(fixture(name), bucket_seconds)

    assert len(series.rows) == rows
    assert series.bucket_ms == bucket_ms
    assert [row.line for row in series.rows] == list(range(2, rows + 2))


def _invalid_cases() -> list[Any]:
    cases = yaml.safe_load((FIXTURES / "invalid_cases.yaml").read_text())
    return [pytest.param(case, id=case["file"]) for case in cases]


@pytest.mark.parametrize("case", _invalid_cases())
def test_bad_csv_is_refused_naming_file_and_line(
    case: dict[str, Any], tmp_path: Path
) -> None:
    """Every refusal is a sentence that says which file and line to fix."""
    path = fixture(case["file"])
    out = tmp_path / "out.jsonl"
    mode: ImportMode = (
        CountMode() if case["mode"] == "counts" else ValueMode("cpuUsage")
    )
    options = CONTRIBUTIONS if case["mode"] == "counts" else SAMPLES

    with pytest.raises(ConfigurationError) as caught:
        import_csv(path, out, mode, options)

    message = str(caught.value)
    assert case["says"] in message
    assert path in message
    if case["line"] is not None:
        assert message.startswith(f"Line {case['line']} of {path} ")
    assert list(tmp_path.iterdir()) == []


# Counts mode


def test_counts_mode_spreads_each_count_over_its_bucket() -> None:
    """A row of n becomes n events, evenly spaced inside its 5-minute bucket."""
    events = events_of("counts.csv", CountMode(), CONTRIBUTIONS)

    assert [(event.id, event.time) for event in events] == [
        ("csv-000000-00000", "2015-02-26T21:40:50.000Z"),
        ("csv-000000-00001", "2015-02-26T21:42:30.000Z"),
        ("csv-000000-00002", "2015-02-26T21:44:10.000Z"),
        ("csv-000002-00000", "2015-02-26T21:50:21.428Z"),
        ("csv-000002-00001", "2015-02-26T21:51:04.285Z"),
        ("csv-000002-00002", "2015-02-26T21:51:47.142Z"),
        ("csv-000002-00003", "2015-02-26T21:52:30.000Z"),
        ("csv-000002-00004", "2015-02-26T21:53:12.857Z"),
        ("csv-000002-00005", "2015-02-26T21:53:55.714Z"),
        ("csv-000002-00006", "2015-02-26T21:54:38.571Z"),
        ("csv-000003-00000", "2015-02-26T21:57:30.000Z"),
    ]
    assert {event.source for event in events} == {"/csv-import"}


def test_counts_mode_makes_contributions_that_fit_the_model() -> None:
    """Contributions carry unique ids, pooled projects and people, real amounts."""
    data = [e.data for e in events_of("busy_counts.csv", CountMode(), CONTRIBUTIONS)]

    assert len(data) == 1_600
    assert len({item["contributionId"] for item in data}) == 1_600
    assert {item["currency"] for item in data} == {"EUR", "USD", "GBP"}
    assert all(5 <= item["amount"] <= 500 for item in data)
    assert all(round(item["amount"], 2) == item["amount"] for item in data)
    assert all(item["projectId"].startswith("prj-") for item in data)
    assert all(item["contributorUid"].startswith("usr-") for item in data)
    # A few popular projects draw a large share of all contributions.
    top = Counter(item["projectId"] for item in data).most_common(5)
    assert sum(count for _, count in top) > 1_600 * 0.15


@pytest.mark.parametrize(
    "event_type",
    [
        "project.created",
        "project.updated",
        "project.funded",
        "user.kyc_submitted",
        "user.active",
        "tier.changed",
        "custom.thing",
    ],
)
def test_counts_mode_data_passes_the_contract_for_every_type(event_type: str) -> None:
    """Each known type gets data its model accepts; other types get none."""
    options = ImportOptions(event_type=event_type)
    events = events_of("counts.csv", CountMode(), options)

    assert len(events) == 11
    assert {event.type for event in events} == {event_type}
    if event_type == "custom.thing":
        assert all(event.data == {} for event in events)


def test_counts_mode_refuses_metrics() -> None:
    """Samples carry measured values, so they cannot be counted into being."""
    series = read_series(fixture("counts.csv"))
    options = ImportOptions(event_type="metrics.sampled")

    with pytest.raises(ConfigurationError, match="import it with --field NAME"):
        generate_events(series, CountMode(), options)


def test_counts_mode_refuses_an_absurd_count_before_expanding_it(
    tmp_path: Path,
) -> None:
    """A count of 10**12 in one row is an error, not an exhausted memory."""
    source = tmp_path / "huge.csv"
    source.write_text(
        "timestamp,value\n2015-02-26 21:42:53,3\n2015-02-26 21:47:53,1e12\n"
    )
    series = read_series(str(source))

    with pytest.raises(ConfigurationError) as error:
        list(generate_events(series, CountMode(), CONTRIBUTIONS))

    assert str(error.value) == (
        f"Line 3 of {source} has the count 1e+12; a row may count at most "
        "1,000,000 events (rescale the series, or split its buckets)."
    )


# counts.csv holds 3, 0, 7 and 1 events on lines 2 to 5 (running totals 3,
# 3, 10, 11); values.csv holds one event on each of lines 2 to 4. Each case
# gives the limit, then the events made or the (line, total) refused.
EVENT_LIMIT_CASES = [
    ("counts at the limit", "counts.csv", CountMode(), 11, 11),
    ("counts one over", "counts.csv", CountMode(), 10, (5, 11)),
    ("counts over mid-series", "counts.csv", CountMode(), 9, (4, 10)),
    ("counts over at the first row", "counts.csv", CountMode(), 2, (2, 3)),
    ("values at the limit", "values.csv", ValueMode("activeUsers"), 3, 3),
    ("values one over", "values.csv", ValueMode("activeUsers"), 2, (4, 3)),
]


@pytest.mark.parametrize(
    ("name", "mode", "limit", "expected"),
    [case[1:] for case in EVENT_LIMIT_CASES],
    ids=[case[0] for case in EVENT_LIMIT_CASES],
)
def test_an_import_past_its_event_limit_is_refused_naming_row_and_total(
    name: str, mode: ImportMode, limit: int, expected: int | tuple[int, int]
) -> None:
    """The first row that takes the total past the limit fails the import."""
    series = read_series(fixture(name))
    base = SAMPLES if isinstance(mode, ValueMode) else CONTRIBUTIONS
    options = replace(base, max_events=limit)

    if isinstance(expected, int):
        assert len(list(generate_events(series, mode, options))) == expected
        return
    with pytest.raises(ConfigurationError) as error:
        generate_events(series, mode, options)

    line, total = expected
    assert str(error.value) == (
        f"Line {line} of {series.path} brings the import to {total} events, over "
        f"its limit of {limit}; nothing was written. Clip the series (--start, "
        "--end), rescale it, or raise the limit (--max-events)."
    )


def test_the_event_limit_is_fifty_million_unless_told() -> None:
    """Options and the command default to the same limit."""
    parser = argparse.ArgumentParser()
    import_csv_command.register(parser.add_subparsers(dest="command"))
    argv = ["import-csv", "in.csv", "--out", "o.jsonl", "--type", "t", "--counts"]

    assert parser.parse_args(argv).max_events == 50_000_000
    assert ImportOptions(event_type="t").max_events == 50_000_000


def test_seed_changes_the_data_but_not_the_times_or_ids() -> None:
    """The seed only steers synthesised data."""
    first = events_of("counts.csv", CountMode(), CONTRIBUTIONS)
    reseeded = ImportOptions(event_type="contribution.created", seed=7)
    second = events_of("counts.csv", CountMode(), reseeded)

    assert [(e.id, e.time) for e in first] == [(e.id, e.time) for e in second]
    assert [e.data for e in first] != [e.data for e in second]


# Values mode


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        (ValueMode("activeUsers"), [10844, 8128, 0]),
        (ValueMode("cpuUsage", scale=0.5), [5422.0, 4063.8, 0.0]),
        (ValueMode("avgResponseTimeMs", 0.1, 5.0), [1089.4, 817.76, 5.0]),
        (ValueMode("requestsPerSecond", scale=1 / 3), [3614.667, 2709.2, 0.0]),
    ],
)
def test_values_mode_writes_one_scaled_sample_per_row(
    mode: ValueMode, expected: list[float]
) -> None:
    """Counting metrics become integers, others keep three decimals."""
    events = events_of("values.csv", mode, SAMPLES)

    assert [event.data for event in events] == [{mode.field: v} for v in expected]
    assert [type(event.data[mode.field]) for event in events] == [
        type(v) for v in expected
    ]
    assert [(event.id, event.time) for event in events] == [
        ("m-000000-00000", "2014-07-01T00:00:00.000Z"),
        ("m-000001-00000", "2014-07-01T00:30:00.000Z"),
        ("m-000002-00000", "2014-07-01T01:00:00.000Z"),
    ]


def test_values_mode_refuses_a_field_samples_do_not_have() -> None:
    """A typo in the metric name fails before any event is made."""
    series = read_series(fixture("values.csv"))

    with pytest.raises(ConfigurationError, match="'activeUser' is not a metric"):
        generate_events(series, ValueMode("activeUser"), SAMPLES)


def test_values_mode_keeps_repeated_timestamps_in_file_order() -> None:
    """Rows that share a time stay separate events, in the order written."""
    events = events_of("repeated_timestamps.csv", ValueMode("cpuUsage"), SAMPLES)

    repeated = [e for e in events if e.time == "2014-03-09T03:00:00.000Z"]
    assert [e.data["cpuUsage"] for e in repeated] == [44.6, 43.5, 47.0]


# Placing on the time line


@pytest.mark.parametrize(
    ("shift_to", "start", "end", "ids", "first_time"),
    [
        (None, None, None, ["000000", "000002", "000003"], "2015-02-26T21:40:50.000Z"),
        (
            "2020-01-01 00:00:00",
            None,
            None,
            ["000000", "000002", "000003"],
            "2020-01-01T00:00:50.000Z",
        ),
        (None, "2015-02-26 21:45:00", None, ["000002", "000003"], None),
        (None, "2015-02-26 21:41:00", "2015-02-26 21:55:00", ["000002"], None),
        (
            "2020-01-01 00:00:00",
            "2020-01-01 00:10:00",
            "2020-01-01 00:15:00",
            ["000002"],
            "2020-01-01T00:10:21.428Z",
        ),
    ],
)
def test_shift_then_clip_by_bucket_start(
    shift_to: str | None,
    start: str | None,
    end: str | None,
    ids: list[str],
    first_time: str | None,
) -> None:
    """Clipping compares shifted bucket starts; ids keep the file's row number."""
    options = ImportOptions(
        event_type="contribution.created",
        shift_to_ms=None if shift_to is None else parse_timestamp(shift_to),
        start_ms=None if start is None else parse_timestamp(start),
        end_ms=None if end is None else parse_timestamp(end),
    )
    events = events_of("counts.csv", CountMode(), options)

    assert sorted({event.id.split("-")[1] for event in events}) == ids
    if first_time is not None:
        assert events[0].time == first_time


def test_clipping_keeps_the_lines_of_the_remaining_rows() -> None:
    """A clipped import is a slice of the full one, byte for byte."""
    series = read_series(fixture("counts.csv"))
    full = [line for _, line in generate_events(series, CountMode(), CONTRIBUTIONS)]
    clipped_options = ImportOptions(
        event_type="contribution.created",
        start_ms=parse_timestamp("2015-02-26 21:50:00"),
    )
    clipped = [
        line for _, line in generate_events(series, CountMode(), clipped_options)
    ]

    assert clipped == full[3:]


# Writing


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz"])
def test_same_input_gives_the_same_bytes(suffix: str, tmp_path: Path) -> None:
    """Two imports into different files are byte-identical, gzip included."""
    first, second = tmp_path / f"a{suffix}", tmp_path / f"b{suffix}"

    assert import_csv(fixture("counts.csv"), first, CountMode(), CONTRIBUTIONS) == 11
    assert import_csv(fixture("counts.csv"), second, CountMode(), CONTRIBUTIONS) == 11

    assert first.read_bytes() == second.read_bytes()
    raw = first.read_bytes()
    text = gzip.decompress(raw) if suffix.endswith(".gz") else raw
    assert len(text.splitlines()) == 11
    assert all(parse_event_line(line).type for line in text.splitlines())


def test_lines_keep_the_cloudevents_key_order(tmp_path: Path) -> None:
    """Attributes come first and data last, as `Event.to_mapping` writes them."""
    out = tmp_path / "out.jsonl"
    import_csv(fixture("values.csv"), out, ValueMode("activeUsers"), SAMPLES)

    first = out.read_bytes().splitlines()[0]
    assert first == (
        b'{"specversion":"1.0","id":"m-000000-00000","source":"/csv-import",'
        b'"type":"metrics.sampled","time":"2014-07-01T00:00:00.000Z",'
        b'"data":{"activeUsers":10844}}'
    )
    assert list(orjson.loads(first)) == list(parse_event_line(first).to_mapping())


def test_output_name_must_say_jsonl(tmp_path: Path) -> None:
    """The extension picks the format, so an unknown one is refused."""
    with pytest.raises(ConfigurationError, match=r"must end in \.jsonl or \.jsonl\.gz"):
        write_event_lines([b"{}\n"], tmp_path / "out.json")


# Merging


def test_merge_streams_orders_by_time_and_breaks_ties_by_stream() -> None:
    """Equal times keep the order in which the streams were given."""
    first = [(1, b"a1"), (3, b"a3"), (3, b"a3'")]
    second = [(0, b"b0"), (3, b"b3"), (4, b"b4")]
    third = [(3, b"c3")]

    merged = list(merge_streams([first, second, third]))

    assert merged == [b"b0", b"a1", b"a3", b"a3'", b"b3", b"c3", b"b4"]


def test_merge_streams_refuses_a_stream_that_goes_back() -> None:
    """An unsorted input would silently misorder the output, so it fails."""
    with pytest.raises(ConfigurationError, match="Stream 1 goes back in time"):
        list(merge_streams([[(1, b"a")], [(5, b"b"), (2, b"c")]]))


# Command


def _run_command(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    import_csv_command.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    status: int = args.run(args)
    return status


def test_import_csv_command_writes_the_stream(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The command passes every option through to the import."""
    out = tmp_path / "taxi.jsonl"
    argv = ["import-csv", fixture("values.csv"), "--out", str(out)]
    argv += ["--type", "metrics.sampled", "--field", "cpuUsage", "--scale", "2"]
    argv += ["--shift-to", "2015-02-26 21:42:53", "--end", "2015-02-26 22:42:53"]
    argv += ["--id-prefix", "taxi", "--source", "/monitoring/test"]

    assert _run_command(argv) == 0

    events = [parse_event_line(line) for line in out.read_bytes().splitlines()]
    assert [(e.id, e.time, e.data) for e in events] == [
        ("taxi-000000-00000", "2015-02-26T21:42:53.000Z", {"cpuUsage": 21688.0}),
        ("taxi-000001-00000", "2015-02-26T22:12:53.000Z", {"cpuUsage": 16255.2}),
    ]
    assert {e.source for e in events} == {"/monitoring/test"}
    # Unconfigured structlog also prints to standard output; the summary is last.
    assert capsys.readouterr().out.splitlines()[-1] == f"2 events written to {out}"


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        (["--counts", "--scale", "2"], "apply to --field, not --counts"),
        (["--counts", "--start", "soon"], "The --start value 'soon' is not a date"),
        (["--field", "cpuUsage", "--scale", "nan"], "--scale value nan is not a fin"),
        (["--field", "cpuUsage", "--offset", "inf"], "--offset value inf is not a fin"),
        (
            ["--counts", "--shift-to", "9999-12-31 23:59:59"],
            "outside the years 0001 to 8999 that event times may take; move",
        ),
        (
            ["--counts", "--shift-to", "9000-01-01 00:00:00"],
            "outside the years 0001 to 8999 that event times may take; move",
        ),
        (["--counts", "--type", " "], "The --type value is empty"),
    ],
)
def test_import_csv_command_refuses_bad_options(
    extra: list[str], says: str, tmp_path: Path
) -> None:
    """Option mistakes are reported as sentences before anything is read."""
    argv = ["import-csv", fixture("counts.csv"), "--out", str(tmp_path / "o.jsonl")]
    if "--type" not in extra:
        argv += ["--type", "contribution.created"]
    argv += extra

    with pytest.raises(ConfigurationError, match=says):
        _run_command(argv)


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz"])
def test_import_csv_command_past_max_events_writes_nothing(
    tmp_path: Path, suffix: str
) -> None:
    """The total is refused before the output is opened, so no file appears."""
    out = tmp_path / f"o{suffix}"
    argv = ["import-csv", fixture("counts.csv"), "--out", str(out), "--counts"]
    argv += ["--type", "contribution.created", "--max-events", "9"]

    with pytest.raises(ConfigurationError) as error:
        _run_command(argv)

    assert str(error.value) == (
        f"Line 4 of {fixture('counts.csv')} brings the import to 10 events, over "
        "its limit of 9; nothing was written. Clip the series (--start, --end), "
        "rescale it, or raise the limit (--max-events)."
    )
    assert list(tmp_path.iterdir()) == []


def test_import_csv_command_refuses_a_max_events_below_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A limit of 0 events would refuse every import, so it is an option error."""
    argv = ["import-csv", fixture("counts.csv"), "--out", str(tmp_path / "o.jsonl")]
    argv += ["--counts", "--type", "contribution.created", "--max-events", "0"]

    with pytest.raises(SystemExit) as exit_:
        _run_command(argv)

    assert exit_.value.code == 2
    assert (
        capsys.readouterr()
        .err.splitlines()[-1]
        .endswith(
            "error: argument --max-events: '0' is not a whole number of at least 1."
        )
    )
