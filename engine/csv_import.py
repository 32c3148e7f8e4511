"""Turn `timestamp,value` time series into recorded CloudEvents streams.

A series is read whole and checked before any event is written, so a bad
row fails the import with its file and line and leaves no partial output.
Two modes turn rows into events:

* counts: a row's value is a number of events of one type, spread evenly
  over the row's bucket, with data synthesised to fit the type's model;
* values: a row becomes one event at the row's time whose data holds the
  value, scaled, under one field name (usually a `metrics.sampled` metric).

Output is deterministic: the same input and options give the same bytes.
Event ids are `{prefix}-{row:06d}-{i:05d}`, where `row` counts the file's
data rows from 0 and `i` is the event's place in its bucket, so clipping
a series keeps the ids (and data) of the events that remain.
"""

from __future__ import annotations

import csv
import gzip
import heapq
import itertools
import math
import os
import random
import statistics
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from operator import itemgetter
from pathlib import Path
from typing import IO, Any

import orjson
import structlog
from pydantic import TypeAdapter, ValidationError

from engine.errors import ConfigurationError
from engine.event_data import DATA_MODELS, METRIC_FIELDS, describe_validation_error
from engine.synthetic_data import DataSynthesiser, ProjectPool, synthesiser_for

__all__ = [
    "MAX_COUNT_PER_ROW",
    "MAX_EVENTS",
    "CountMode",
    "ImportMode",
    "ImportOptions",
    "Series",
    "SeriesRow",
    "TimedLine",
    "ValueMode",
    "encode_event",
    "format_millis",
    "generate_events",
    "import_csv",
    "merge_streams",
    "parse_timestamp",
    "read_series",
    "spread_times",
    "write_event_lines",
]

log = structlog.get_logger(__name__)

# Metric fields that count things and so are written as integers.
_INTEGER_METRICS = frozenset(
    {
        "activeUsers",
        "databaseReads",
        "databaseWrites",
        "functionInvocations",
        "storageBytes",
    }
)
_HEADER = ["timestamp", "value"]
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_NAIVE_EPOCH = datetime(1970, 1, 1)
_MILLISECOND = timedelta(milliseconds=1)
_WRITE_BATCH = 8192

# A stream item: event time in epoch milliseconds, then one encoded line.
TimedLine = tuple[int, bytes]


# Time


def parse_timestamp(text: str) -> int:
    """Parse `2015-02-26 21:42:53` (UTC unless a zone is given) to epoch ms.

    Raises:
        ValueError: the text is not an ISO 8601 date and time.
    """
    moment = datetime.fromisoformat(text.strip())
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // _MILLISECOND


def format_millis(ms: int) -> str:
    """Format epoch milliseconds as RFC 3339 UTC, e.g. `2015-02-26T21:42:53.000Z`."""
    try:
        moment = _NAIVE_EPOCH + timedelta(milliseconds=ms)
    except OverflowError:
        moment = None
    # Past 8999 the calendar still has room, but events may not take it.
    if moment is None or moment.year > _LAST_YEAR:
        raise ConfigurationError(
            f"An event would fall {ms} ms from 1970, outside the years 0001 to "
            f"{_LAST_YEAR} that event times may take; move the series "
            "(--shift-to) or clip it (--end)."
        )
    return moment.isoformat(timespec="milliseconds") + "Z"


# The last year of event times (`engine.events`).
_LAST_YEAR = 8999


# Counts above this in one row are refused rather than expanded: one row of
# a real series that says 10**12 is a unit mistake, not a workload.
MAX_COUNT_PER_ROW = 1_000_000

# An import writes at most this many events unless told otherwise
# (`ImportOptions.max_events`, `--max-events`), some 15 GB of JSON lines or
# over 1 GB gzipped:
# 1. rows that each stay under MAX_COUNT_PER_ROW can still add up to more
#    than a disk holds;
# 2. the total is known before the first event is written, so the import is
#    refused then, not when the disk fills up.
MAX_EVENTS = 50_000_000


def spread_times(start_ms: int, width_ms: int, count: int) -> list[int]:
    """Return the times of `count` events spread evenly over one bucket.

    Event i of n sits at start + (i + 0.5) * width / n, floored to the
    millisecond in integer arithmetic so every platform agrees.
    """
    double = 2 * count
    return [start_ms + (2 * i + 1) * width_ms // double for i in range(count)]


# Reading a series


@dataclass(frozen=True, slots=True)
class SeriesRow:
    """One data row: its index among data rows, file line, time and value."""

    row: int
    line: int
    ms: int
    value: float


@dataclass(frozen=True, slots=True)
class Series:
    """A time series read from one CSV file, sorted by time."""

    path: str
    rows: tuple[SeriesRow, ...]
    bucket_ms: int

    def shifted_to(self, start_ms: int) -> Series:
        """Return the series moved in time so that its first row is at `start_ms`."""
        if not self.rows:
            return self
        delta = start_ms - self.rows[0].ms
        rows = tuple(replace(row, ms=row.ms + delta) for row in self.rows)
        return replace(self, rows=rows)

    def clipped(self, start_ms: int | None, end_ms: int | None) -> Series:
        """Return the rows whose bucket starts in [start_ms, end_ms)."""
        low = -math.inf if start_ms is None else start_ms
        high = math.inf if end_ms is None else end_ms
        rows = tuple(row for row in self.rows if low <= row.ms < high)
        return replace(self, rows=rows)

    def end_ms(self) -> int:
        """Return the end of the last bucket, or of nothing for an empty series."""
        return self.rows[-1].ms + self.bucket_ms if self.rows else 0


def read_series(path: str | Path, bucket_seconds: float | None = None) -> Series:
    """Read and check a `timestamp,value` CSV file.

    The bucket width is `bucket_seconds` when given, else the median gap
    between consecutive rows. Rows may repeat a timestamp (real exports do,
    around clock changes) but must never go back in time.

    Raises:
        ConfigurationError: the file is missing, has no header, or a row is
            malformed or out of order; the message names the file and line.
    """
    name = str(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            rows = _read_rows(name, handle)
    except OSError as error:
        raise ConfigurationError(f"The file {name} cannot be read: {error}.") from error
    except UnicodeDecodeError as error:
        raise ConfigurationError(f"The file {name} is not UTF-8 text.") from error

    if bucket_seconds is not None:
        if not bucket_seconds > 0:
            raise ConfigurationError(
                f"The bucket width must be positive, not {bucket_seconds} seconds."
            )
        bucket_ms = round(bucket_seconds * 1000)
    else:
        bucket_ms = _infer_bucket_ms(name, rows)

    return Series(path=name, rows=tuple(rows), bucket_ms=bucket_ms)


def _read_rows(name: str, handle: IO[str]) -> list[SeriesRow]:
    reader = csv.reader(handle)
    header = next(reader, None)
    if header is None:
        raise ConfigurationError(
            f"The file {name} is empty; it needs the header 'timestamp,value'."
        )
    if [cell.strip().lower() for cell in header] != _HEADER:
        found = ",".join(header)
        raise ConfigurationError(
            f"Line 1 of {name} is {found!r}, not the header 'timestamp,value'."
        )

    rows: list[SeriesRow] = []
    previous_ms: int | None = None
    for fields in reader:
        line = reader.line_num
        if not any(cell.strip() for cell in fields):
            continue
        ms, value = _parse_row(name, line, fields)
        if previous_ms is not None and ms < previous_ms:
            raise ConfigurationError(
                f"Line {line} of {name} has the time {format_millis(ms)}, earlier "
                f"than the row before it ({format_millis(previous_ms)}); rows must "
                "be sorted by time."
            )
        rows.append(SeriesRow(row=len(rows), line=line, ms=ms, value=value))
        previous_ms = ms

    if not rows:
        raise ConfigurationError(f"The file {name} has a header but no data rows.")
    return rows


def _parse_row(name: str, line: int, fields: list[str]) -> tuple[int, float]:
    if len(fields) != 2:
        raise ConfigurationError(
            f"Line {line} of {name} has {len(fields)} fields; each row holds a "
            "timestamp and a value."
        )
    stamp, text = fields
    try:
        ms = parse_timestamp(stamp)
    except ValueError as error:
        raise ConfigurationError(
            f"Line {line} of {name} has the timestamp {stamp!r}, which is not a "
            "date and time such as '2015-02-26 21:42:53'."
        ) from error
    try:
        value = float(text)
    except ValueError as error:
        raise ConfigurationError(
            f"Line {line} of {name} has the value {text!r}, which is not a number."
        ) from error
    if not math.isfinite(value):
        raise ConfigurationError(
            f"Line {line} of {name} has the value {text!r}, which is not a finite "
            "number."
        )
    return ms, value


def _infer_bucket_ms(name: str, rows: list[SeriesRow]) -> int:
    gaps = [after.ms - before.ms for before, after in itertools.pairwise(rows)]
    # The median ignores the odd missing bucket or repeated timestamp.
    width = statistics.median_low(gaps) if gaps else 0
    if width <= 0:
        raise ConfigurationError(
            f"The bucket width of {name} cannot be inferred from the gaps between "
            "its rows; give the width explicitly (--bucket-seconds)."
        )
    return width


# Making events


@dataclass(frozen=True, slots=True)
class ImportOptions:
    """Where a series' events go on the time line and how they are named.

    `shift_to_ms` moves the series so that its first row lands there;
    `start_ms` (inclusive) and `end_ms` (exclusive) then clip the shifted
    rows by bucket start. `max_events` caps the events of the whole import.
    """

    event_type: str
    source: str = "/csv-import"
    id_prefix: str = "csv"
    seed: int = 0
    shift_to_ms: int | None = None
    start_ms: int | None = None
    end_ms: int | None = None
    max_events: int = MAX_EVENTS


@dataclass(frozen=True, slots=True)
class CountMode:
    """Each row's value counts events; `projects` feeds synthesised data."""

    projects: ProjectPool | None = None


@dataclass(frozen=True, slots=True)
class ValueMode:
    """Each row becomes one event with data {field: value * scale + offset}.

    Counting metrics (such as `activeUsers`) are rounded to integers, other
    values to three decimals so that float noise stays out of the output.
    """

    field: str
    scale: float = 1.0
    offset: float = 0.0


ImportMode = CountMode | ValueMode


def encode_event(
    event_id: str, source: str, event_type: str, ms: int, data: dict[str, Any]
) -> bytes:
    """Encode one structured-mode CloudEvent as a JSON line."""
    # Key order follows `Event.to_mapping`, so recorded lines read alike.
    event = {
        "specversion": "1.0",
        "id": event_id,
        "source": source,
        "type": event_type,
        "time": format_millis(ms),
        "data": data,
    }
    return orjson.dumps(event, option=orjson.OPT_APPEND_NEWLINE)


def generate_events(
    series: Series, mode: ImportMode, options: ImportOptions
) -> Iterator[TimedLine]:
    """Place the series on the time line and return its events in time order.

    Every row is checked before the first event is made.

    Raises:
        ConfigurationError: a row does not fit the mode (a count that is
            not a whole number of zero or more, a value the type's model
            rejects), the rows add up to more than `options.max_events`
            events, or the mode does not fit the event type.
    """
    if options.shift_to_ms is not None:
        series = series.shifted_to(options.shift_to_ms)
    series = series.clipped(options.start_ms, options.end_ms)

    if isinstance(mode, CountMode):
        return _count_events(series, mode, options)
    return iter(_value_events(series, mode, options))


def _count_events(
    series: Series, mode: CountMode, options: ImportOptions
) -> Iterator[TimedLine]:
    projects = mode.projects or ProjectPool.build(seed=options.seed)
    synthesise = synthesiser_for(options.event_type, projects)
    counts: list[int] = []
    total = 0
    for row in series.rows:
        if row.value < 0 or not row.value.is_integer():
            raise ConfigurationError(
                f"Line {row.line} of {series.path} has the count {row.value:g}; a "
                "count must be a whole number of zero or more."
            )
        if row.value > MAX_COUNT_PER_ROW:
            raise ConfigurationError(
                f"Line {row.line} of {series.path} has the count {row.value:g}; a "
                f"row may count at most {MAX_COUNT_PER_ROW:,} events (rescale the "
                "series, or split its buckets)."
            )
        counts.append(int(row.value))
        total += counts[-1]
        if total > options.max_events:
            raise _too_many_events(series.path, row, total, options.max_events)
    return _spread_events(series, counts, synthesise, options)


def _too_many_events(
    path: str, row: SeriesRow, total: int, limit: int
) -> ConfigurationError:
    return ConfigurationError(
        f"Line {row.line} of {path} brings the import to {total:,} events, over "
        f"its limit of {limit:,}; nothing was written. Clip the series (--start, "
        "--end), rescale it, or raise the limit (--max-events)."
    )


def _spread_events(
    series: Series,
    counts: list[int],
    synthesise: DataSynthesiser,
    options: ImportOptions,
) -> Iterator[TimedLine]:
    prefix, source, event_type = options.id_prefix, options.source, options.event_type
    for row, count in zip(series.rows, counts, strict=True):
        # One generator per row keeps a row's data the same however the
        # series is clipped.
        rng = random.Random(f"{options.seed}:{prefix}:{row.row}")
        times = spread_times(row.ms, series.bucket_ms, count)
        for index, ms in enumerate(times):
            event_id = f"{prefix}-{row.row:06d}-{index:05d}"
            data = synthesise(rng, event_id, ms)
            yield ms, encode_event(event_id, source, event_type, ms, data)


def _value_events(
    series: Series, mode: ValueMode, options: ImportOptions
) -> list[TimedLine]:
    model = DATA_MODELS.get(options.event_type)
    if options.event_type == "metrics.sampled" and mode.field not in METRIC_FIELDS:
        raise ConfigurationError(
            f"The field {mode.field!r} is not a metric of metrics.sampled events."
        )

    if len(series.rows) > options.max_events:
        # One event per row: the first row past the limit is the one named.
        first_over = series.rows[options.max_events]
        raise _too_many_events(
            series.path, first_over, options.max_events + 1, options.max_events
        )

    as_integer = mode.field in _INTEGER_METRICS
    events: list[TimedLine] = []
    for row in series.rows:
        scaled = row.value * mode.scale + mode.offset
        if not math.isfinite(scaled):
            raise ConfigurationError(
                f"Line {row.line} of {series.path}: {row.value:g} scaled by "
                f"{mode.scale:g} plus {mode.offset:g} is not a finite number."
            )
        value: float | int = round(scaled) if as_integer else round(scaled, 3)
        data = {mode.field: value}
        if model is not None:
            _check_data(series.path, row.line, options.event_type, model, data)
        event_id = f"{options.id_prefix}-{row.row:06d}-00000"
        line = encode_event(event_id, options.source, options.event_type, row.ms, data)
        events.append((row.ms, line))
    return events


def _check_data(
    path: str,
    line: int,
    event_type: str,
    model: TypeAdapter[Any],
    data: dict[str, Any],
) -> None:
    try:
        model.validate_python(data)
    except ValidationError as error:
        detail = describe_validation_error([dict(entry) for entry in error.errors()])
        raise ConfigurationError(
            f"Line {line} of {path} gives a {event_type} event invalid data: {detail}."
        ) from error


# Merging and writing


def merge_streams(streams: Iterable[Iterable[tuple[float, bytes]]]) -> Iterator[bytes]:
    """Merge time-ordered streams of (time, line) into lines in time order.

    Lines with equal times keep the order of the streams they came from.

    Raises:
        ConfigurationError: a stream goes back in time.
    """
    checked = [_checked_order(number, stream) for number, stream in enumerate(streams)]
    for _, line in heapq.merge(*checked, key=itemgetter(0)):
        yield line


def _checked_order(
    number: int, stream: Iterable[tuple[float, bytes]]
) -> Iterator[tuple[float, bytes]]:
    # heapq.merge silently misorders an unsorted input; fail loudly instead.
    previous = -math.inf
    for item in stream:
        if item[0] < previous:
            raise ConfigurationError(
                f"Stream {number} goes back in time from {previous} to {item[0]}; "
                "each merged stream must be sorted by time."
            )
        previous = item[0]
        yield item


def write_event_lines(lines: Iterable[bytes], out_path: str | Path) -> int:
    """Write lines to a `.jsonl` or `.jsonl.gz` file and return how many.

    The file appears only when complete. Gzip output carries no name and
    no timestamp, so equal lines give equal bytes.

    Raises:
        ConfigurationError: the file name has another extension.
    """
    path = Path(out_path)
    compress = path.name.endswith(".jsonl.gz")
    if not compress and not path.name.endswith(".jsonl"):
        raise ConfigurationError(
            f"The output file {path} must end in .jsonl or .jsonl.gz."
        )

    partial = path.with_name(path.name + ".partial")
    try:
        with open(partial, "wb") as raw:
            if compress:
                with gzip.GzipFile(
                    filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6
                ) as packed:
                    count = _write_batched(packed.write, lines)
            else:
                count = _write_batched(raw.write, lines)
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise

    return count


def _write_batched(write: Callable[[bytes], object], lines: Iterable[bytes]) -> int:
    # One write per line would cost more than encoding the events.
    count = 0
    batch: list[bytes] = []
    for line in lines:
        batch.append(line)
        if len(batch) == _WRITE_BATCH:
            write(b"".join(batch))
            count += len(batch)
            batch.clear()
    write(b"".join(batch))
    return count + len(batch)


def import_csv(
    csv_path: str | Path,
    out_path: str | Path,
    mode: ImportMode,
    options: ImportOptions,
    bucket_seconds: float | None = None,
) -> int:
    """Read a series, turn it into events and write them; return the count.

    Raises:
        ConfigurationError: the file, a row, the mode or the output name is
            wrong; nothing is written then.
    """
    series = read_series(csv_path, bucket_seconds)
    count = write_event_lines(
        (line for _, line in generate_events(series, mode, options)), out_path
    )
    log.info(
        "csv imported",
        file=str(csv_path),
        out=str(out_path),
        event_type=options.event_type,
        events=count,
    )
    return count
