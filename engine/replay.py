"""Replay a recorded stream through the rules, on event time.

Every line read is accounted for: it is accepted (and processed, or
recognised as a duplicate id) or rejected with a reason, which goes to the
dead-letter file when one is given. Same stream and rules, same bytes out.
"""

from __future__ import annotations

import gzip
import io
import time
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, cast

import orjson

from engine.actions import encode_record
from engine.engine import Engine, EngineStats
from engine.errors import ConfigurationError, EventRejected
from engine.events import Event, parse_event_line
from engine.loader import RuleSet

__all__ = [
    "JUMP_CONFIRMATIONS",
    "ReplayIncomplete",
    "ReplaySummary",
    "open_stream",
    "replay_stream",
]


@dataclass
class ReplaySummary:
    """What one replay read, accepted, rejected and did."""

    read: int = 0
    accepted: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    engine: EngineStats = field(default_factory=EngineStats)

    @property
    def rejected_total(self) -> int:
        """Return the number of rejected lines."""
        return sum(self.rejected.values())

    @property
    def events_per_second(self) -> float:
        """Return the replay's throughput in lines per wall-clock second."""
        return self.read / self.seconds if self.seconds > 0 else 0.0

    def to_mapping(self) -> dict[str, Any]:
        """Return the summary as JSON-compatible data."""
        stats = self.engine
        return {
            "events": {
                "read": self.read,
                "accepted": self.accepted,
                "rejected": self.rejected_total,
                "duplicates": stats.duplicates,
                "emitted_by_engine": stats.emitted,
            },
            "rejected_by_reason": dict(sorted(self.rejected.items())),
            "fires_by_rule": dict(sorted(stats.fires.items())),
            "actions_by_handler": {
                f"{handler}:{outcome}": count
                for (handler, outcome), count in sorted(stats.actions.items())
            },
            "coalesced_by_rule": dict(sorted(stats.coalesced.items())),
            "events_per_second": round(self.events_per_second),
            "seconds": round(self.seconds, 3),
        }

    def render(self) -> str:
        """Return the summary as lines for people."""
        data = self.to_mapping()
        events = data["events"]
        lines = [
            f"events: read {events['read']}, accepted {events['accepted']}, "
            f"rejected {events['rejected']}, duplicates {events['duplicates']}, "
            f"emitted by the engine {events['emitted_by_engine']}",
        ]
        for reason, count in data["rejected_by_reason"].items():
            lines.append(f"  rejected {reason}: {count}")
        lines.append("fires per rule:")
        lines += [f"  {rule}: {count}" for rule, count in data["fires_by_rule"].items()]
        lines.append("actions per handler:")
        lines += [
            f"  {name}: {count}" for name, count in data["actions_by_handler"].items()
        ]
        lines.append(
            f"throughput: {data['events_per_second']} events/s ({data['seconds']} s)"
        )
        return "\n".join(lines)


def open_stream(path: str | Path, kind: str = "event file") -> IO[bytes]:
    """Open a recorded stream, gunzipping `.gz` files.

    Args:
        path: the file to read.
        kind: what the file holds, as its errors name it ("action log").

    Raises:
        ConfigurationError: the file does not exist or cannot be read.
    """
    source = Path(path)
    if source.is_dir():
        raise ConfigurationError(
            f"The {kind} {str(source)!r} is a directory, not a file."
        )
    if not source.exists():
        raise ConfigurationError(f"The {kind} {str(source)!r} does not exist.")
    try:
        raw = source.open("rb")
    except OSError as error:
        raise ConfigurationError(
            f"The {kind} {str(source)!r} cannot be read: {error}."
        ) from error
    if source.suffix == ".gz":
        return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
    return raw


def iter_numbered_lines(stream: IO[bytes]) -> Iterator[tuple[int, bytes]]:
    """Yield (line number, line) for the non-blank lines, line ends kept.

    Numbers count every line of the file, blank ones included, so that a
    dead letter points at the line an editor shows. The line end is kept to
    spare a copy per line: the event parser accepts it.
    """
    for number, line in enumerate(_buffered(stream), start=1):
        if line.strip(_JSON_SPACE):
            yield number, line


# What JSON counts as whitespace; a line of nothing else is blank.
_JSON_SPACE = b" \t\r\n"


def _buffered(stream: IO[bytes]) -> IO[bytes]:
    if isinstance(stream, gzip.GzipFile):
        # Buffered already, in small reads: a large buffer over it would
        # lose the whole lines it holds when the file turns out truncated.
        return stream
    # A raw file is a binary stream; typeshed types it apart.
    return io.BufferedReader(stream, buffer_size=1 << 20)  # type: ignore[type-var]


class _LineEndKeeper(io.RawIOBase):
    """Pass a stream's bytes on, keeping those after the last line end.

    A buffered reader that meets a failed read (a truncated gzip file, a
    disk error) drops the line it was in the middle of; `partial` returns
    that line so that a replay can account for it.
    """

    def __init__(self, stream: IO[bytes]) -> None:
        # A BufferedReader or a GzipFile (see `open_stream`); typeshed
        # types them apart from IO[bytes]. `readinto1` reads once, so a
        # failure loses no whole line already decompressed.
        self._stream = cast(io.BufferedIOBase, stream)
        self._since_line_end: list[bytes] = []

    def readable(self) -> bool:
        """Return True: this stream is read."""
        return True

    def readinto(self, buffer: Any) -> int:
        """Read once into `buffer` and note what follows its last line end."""
        view = memoryview(buffer)
        count = self._stream.readinto1(view)
        # Lines are short: the end of the chunk is searched first, and only
        # a chunk with no line end there is copied whole.
        end = view[max(count - _END_WINDOW, 0) : count].tobytes()
        cut = end.rfind(b"\n")
        if cut < 0 and count > _END_WINDOW:
            end = view[:count].tobytes()
            cut = end.rfind(b"\n")
        if cut < 0:
            self._since_line_end.append(end)
        else:
            self._since_line_end = [end[cut + 1 :]]
        return count

    def partial(self) -> bytes:
        """Return the bytes read after the last line end."""
        return b"".join(self._since_line_end)


_END_WINDOW = 4096


def replay_stream(
    events_path: str | Path,
    ruleset: RuleSet,
    actions_out: IO[bytes] | None = None,
    dead_letter_out: IO[bytes] | None = None,
    engine: Engine | None = None,
    progress: bool = False,
) -> ReplaySummary:
    """Replay a stream through the rules and write the actions it causes."""
    engine = engine or Engine(ruleset)
    summary = ReplaySummary(engine=engine.stats)
    bar = _progress_bar(events_path) if progress else None
    started = time.perf_counter()
    # The loop is the hot path of a replay: names are bound locally and the
    # counters kept in locals until the end.
    parse, process, actions = parse_event_line, engine.process, engine.actions
    read = accepted = 0
    # Events rejected as `time_jump`, held back until the next events say
    # whether they or the clock are the outlier: (line number, line, event,
    # the rejection).
    suspects: list[tuple[int, bytes, Event, EventRejected]] = []

    def reject(number: int, rejection: EventRejected, line: bytes) -> None:
        summary.rejected[rejection.reason] += 1
        if dead_letter_out is not None:
            dead_letter_out.write(_dead_letter(number, rejection, line))

    def settle(confirmed: bool) -> int:
        """Process the held events if they agree, else reject them; count."""
        taken = 0
        for number, line, event, held in suspects:
            if not confirmed:
                reject(number, held, line)
                continue
            try:
                # The first moves the clock; the others are close to it.
                engine.process_past_jump(event)
                taken += 1
            except EventRejected as rejection:
                reject(number, rejection, line)
        suspects.clear()
        return taken

    error: BaseException | None = None
    number = 0
    stream = open_stream(events_path)
    keeper = _LineEndKeeper(stream)
    try:
        with stream:
            lines = io.BufferedReader(keeper, buffer_size=1 << 20)
            # `iter_numbered_lines`, written out: a generator costs a frame
            # switch and a tuple per line.
            for number, line in enumerate(lines, start=1):
                if len(line) <= 2 and not line.strip(_JSON_SPACE):
                    continue
                read += 1
                if bar is not None and read % 4096 == 0:
                    bar.update(4096)
                try:
                    event = parse(line)
                    process(event)
                except EventRejected as rejection:
                    if rejection.reason != "time_jump":
                        if not line.strip(_JSON_SPACE):
                            # A line of JSON whitespace only: blank, like an
                            # empty one (tested here, off the hot path).
                            read -= 1
                            continue
                        reject(number, rejection, line)
                        continue
                    suspects.append((number, line, event, rejection))
                    if len(suspects) > JUMP_CONFIRMATIONS:
                        # The oldest disagrees with the later ones.
                        first, raw, _, held = suspects.pop(0)
                        reject(first, held, raw)
                    if _agree(suspects, engine.max_clock_jump):
                        accepted += settle(confirmed=True)
                        _write_actions(actions, actions_out)
                    continue
                accepted += 1
                if suspects:
                    # An event on the clock's time line: the held ones were
                    # the outliers.
                    settle(confirmed=False)
                if actions:
                    _write_actions(actions, actions_out)
    except (OSError, EOFError, zlib.error) as caught:
        # A truncated or corrupt gzip file, or a read error: what was read
        # so far stands, and the message says where it stopped.
        error = caught
    settle(confirmed=False)
    cut = keeper.partial() if error is not None else b""
    cut_short = bool(cut.strip(_JSON_SPACE))
    if cut_short:
        # The reader drops the line it was in when the stream failed; that
        # line was read all the same, so it is counted and rejected. It may
        # even parse, but without its line end it is not known to be whole.
        number += 1
        read += 1
        truncated = EventRejected(
            "truncated",
            "The line is cut short: the file could not be read past it, so "
            "it is not a whole event.",
        )
        reject(number, truncated, cut)
    summary.read, summary.accepted = read, accepted
    summary.seconds = time.perf_counter() - started
    if bar is not None:
        bar.close()
    if error is not None:
        raise ReplayIncomplete(
            _incomplete_message(events_path, number, cut_short, error), summary
        ) from error
    return summary


# How many events in a row, each far ahead of the clock and close to one
# another, show that the clock was the outlier (say, one event stamped
# 1970 at the head of a stream) rather than each of them.
JUMP_CONFIRMATIONS = 3


def _agree(
    suspects: list[tuple[int, bytes, Event, EventRejected]], bound: float
) -> bool:
    if len(suspects) < JUMP_CONFIRMATIONS:
        return False
    times = [event.ts for _, _, event, _ in suspects]
    return max(times) - min(times) <= bound


def _incomplete_message(
    events_path: str | Path, number: int, cut_short: bool, error: BaseException
) -> str:
    name = str(events_path)
    if cut_short:
        return (
            f"The event file {name!r} could not be read past line {number}, "
            f"which is cut short and rejected as truncated: {error}."
        )
    return f"The event file {name!r} could not be read after line {number}: {error}."


def _write_actions(actions: list[Any], actions_out: IO[bytes] | None) -> None:
    if actions_out is not None:
        actions_out.write(b"".join(encode_record(r) for r in actions))
    actions.clear()


class ReplayIncomplete(ConfigurationError):
    """The stream could not be read to its end; `summary` holds what was."""

    def __init__(self, message: str, summary: ReplaySummary) -> None:
        super().__init__(message)
        self.summary = summary


def _dead_letter(number: int, rejection: EventRejected, line: bytes) -> bytes:
    entry = {
        "line": number,
        "reason": rejection.reason,
        "error": str(rejection),
        "raw": line.rstrip(b"\r\n")[:4096].decode("utf-8", errors="replace"),
    }
    return orjson.dumps(entry, option=orjson.OPT_APPEND_NEWLINE)


def _progress_bar(path: str | Path) -> Any:
    from tqdm import tqdm

    return tqdm(unit=" events", unit_scale=True, desc=Path(path).name, mininterval=0.5)
