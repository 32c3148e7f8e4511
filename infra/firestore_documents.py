"""The Firestore documents that a state commit writes, and how they are batched.

`infra.firestore_state` owns the protocol (lease, fencing, checkpoint);
this module owns the layout: what an action, a tier change, a scaling
target or a minute of metrics looks like as a document, and how a list of
writes is cut into requests that Firestore accepts.
"""

from __future__ import annotations

import calendar
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from google.cloud.firestore_v1.types import write as write_types

from engine.actions import ActionRecord

__all__ = [
    "MAX_REQUEST_BYTES",
    "MAX_WRITES",
    "METRIC_RETENTION",
    "Write",
    "action_document",
    "add_write",
    "log_writes",
    "minute_key",
    "mirror_writes",
    "pack_writes",
    "sized_write",
]

# Writes per commit request, as the Firestore documentation states.
MAX_WRITES = 500
# Bytes per commit request. The emulator refuses gRPC messages over 4 MiB
# and production Firestore requests over 10 MiB; this fits both.
MAX_REQUEST_BYTES = 3_500_000
# Rough cost of one write beyond its data: path, field names, framing.
WRITE_OVERHEAD = 300
METRIC_RETENTION = timedelta(days=30)


@dataclass(slots=True)
class Write:
    """One document write, with its estimated size in a request."""

    kind: str  # "create", "set", "merge" or "delete"
    path: str
    data: dict[str, Any] | None
    size: int


def minute_key(ts: float) -> str:
    """Return the `metric_history` document id of the minute holding `ts`."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M")


def action_document(
    record: ActionRecord, committed_at: datetime, attempts: int = 1
) -> dict[str, Any]:
    """Return the `actions/{id}` document of an action record."""
    return {
        **_storable(record.to_mapping()),
        "at": _utc(record.at),
        "rules_version": record.why.version,
        "attempts": attempts,
        "committed_at": committed_at,
    }


def log_writes(
    actions: Sequence[ActionRecord],
    updated_actions: Sequence[tuple[ActionRecord, int]],
    metric_samples: Mapping[str, Mapping[str, Any]],
    now: datetime,
) -> list[Write]:
    """Return the writes of the action log, the tier history and metric minutes.

    New actions are created, so that one already logged is never
    overwritten; actions whose outcome a retry changed are merged.
    """
    writes = [
        sized_write("create", f"actions/{r.id}", action_document(r, now))
        for r in actions
    ]
    writes += [
        sized_write("merge", f"actions/{r.id}", action_document(r, now, attempts))
        for r, attempts in updated_actions
    ]
    for record in (*actions, *(r for r, _ in updated_actions)):
        history = _tier_history(record)
        if history is not None:
            path = f"system_config/tier/history/{record.id}"
            writes.append(sized_write("set", path, history))
    for key, values in sorted(metric_samples.items()):
        minute = datetime.strptime(key, "%Y-%m-%dT%H:%M").replace(tzinfo=UTC)
        data = {
            "minute": minute,
            "values": dict(values),
            "expire_at": minute + METRIC_RETENTION,
        }
        writes.append(sized_write("merge", f"metric_history/{key}", data))
    return writes


def mirror_writes(handler_state: Mapping[tuple[str, str], Any]) -> list[Write]:
    """Return the mirrors of changed scaling targets and of the current tier."""
    writes = []
    for (namespace, key), value in sorted(handler_state.items()):
        if not isinstance(value, dict):
            continue
        if namespace == "scaling_targets":
            writes.append(sized_write("set", f"scaling_targets/{key}", _mirror(value)))
        elif namespace == "system_config" and key == "tier":
            writes.append(sized_write("set", "system_config/tier", _mirror(value)))
    return writes


def sized_write(kind: str, path: str, data: dict[str, Any]) -> Write:
    """Return a write with its size estimated from its JSON form."""
    size = len(orjson.dumps(data, default=str)) + WRITE_OVERHEAD
    return Write(kind, path, data, size)


def add_write(client: Any, batch: Any, write: Write) -> None:
    """Add one write to a Firestore batch."""
    ref = client.document(write.path)
    if write.kind in ("create", "set") and write.data is not None:
        encoded = _encode_write(ref._document_path, write)
        if encoded is not None:
            # The batch's own create and set build each value through the
            # proto-plus wrappers, which took about 0.6 ms per action
            # document, more than the rest of a worker's cycle per event.
            # The private `_add_write_pbs` is the one way to hand a batch
            # a write built here; the test of this module checks that the
            # result equals what `create` and `set` build.
            batch._add_write_pbs([encoded])
            return
    if write.kind == "create":
        batch.create(ref, write.data)
    elif write.kind == "set":
        batch.set(ref, write.data)
    elif write.kind == "merge":
        batch.set(ref, write.data, merge=True)
    else:
        batch.delete(ref)


def pack_writes(
    writes: Sequence[Write], reserved_writes: int, reserved_bytes: int
) -> list[list[Write]]:
    """Cut writes into requests; the last one leaves the reserved room free.

    The reserved room is the checkpoint's, which goes in the last request
    so that it lands after everything it refers to. One write of every
    request is kept for the lease update that fences it.
    """
    last: list[Write] = []
    count, size = reserved_writes + 1, reserved_bytes
    rest = list(writes)
    while rest and count < MAX_WRITES and size + rest[-1].size <= MAX_REQUEST_BYTES:
        write = rest.pop()
        last.append(write)
        count, size = count + 1, size + write.size
    last.reverse()

    parts: list[list[Write]] = []
    current: list[Write] = []
    count, size = 1, 0
    for write in rest:
        full = count >= MAX_WRITES or size + write.size > MAX_REQUEST_BYTES
        if current and full:
            parts.append(current)
            current, count, size = [], 1, 0
        current.append(write)
        count, size = count + 1, size + write.size
    if current:
        parts.append(current)
    parts.append(last)
    return parts


def _tier_history(record: ActionRecord) -> dict[str, Any] | None:
    result = record.result or {}
    changed = record.action == "change_tier" and record.outcome == "ok"
    if not (changed and result.get("changed")):
        return None
    return {
        "from": result.get("from"),
        "to": result.get("to"),
        "at": _utc(record.at),
        "rule": record.rule,
        "reason": record.params.get("reason", ""),
        "trigger": {"event_id": record.trigger_id, "type": record.trigger_type},
    }


def _mirror(value: dict[str, Any]) -> dict[str, Any]:
    data: dict[str, Any] = _storable(value)
    if isinstance(value.get("at"), int | float):
        data["at"] = _utc(value["at"])
    return data


def _storable(value: Any) -> Any:
    """Make JSON-compatible data fit Firestore, which refuses nested arrays."""
    if isinstance(value, dict):
        return {str(k): _storable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [
            orjson.dumps(v).decode() if isinstance(v, list) else _storable(v)
            for v in value
        ]
    return value


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


# Encoding writes as raw protobufs

_WritePb = write_types.Write.pb()


class _NotEncodable(Exception):
    """A value of a type that only the Firestore client knows how to encode."""


def _encode_write(document_path: str, write: Write) -> Any:
    """Return a create or set as a `Write` message, or None for odd values."""
    assert write.data is not None
    encoded = _WritePb()
    # Values are written into the message in place: building each one
    # apart and copying it in took about 58 us per action document, this
    # under a third of that.
    document = encoded.update
    document.name = document_path
    fields = document.fields
    try:
        for name, value in write.data.items():
            _fill_value(fields[name], value)
    except _NotEncodable:
        return None
    if write.kind == "create":
        encoded.current_document.exists = False
    return write_types.Write.wrap(encoded)


def _fill_value(target: Any, value: Any) -> None:
    """Encode a value into `target` as the Firestore client does, for our types."""
    # bool before int: it is a subclass of int. Exact types first, the
    # common case, then subclasses.
    kind = type(value)
    if kind is str:
        target.string_value = value
    elif value is None:
        target.null_value = 0
    elif kind is bool:
        target.boolean_value = value
    elif kind is int:
        target.integer_value = value
    elif kind is float:
        target.double_value = value
    elif kind is dict:
        # SetInParent marks the field as present even when it is empty.
        target.map_value.SetInParent()
        fields = target.map_value.fields
        for name, item in value.items():
            _fill_value(fields[name], item)
    elif kind is datetime:
        stamp = target.timestamp_value
        stamp.SetInParent()
        # A naive datetime is UTC, as the client takes it.
        stamp.seconds = calendar.timegm(value.utctimetuple())
        stamp.nanos = value.microsecond * 1000
    elif kind in (list, tuple):
        array = target.array_value
        array.SetInParent()
        for item in value:
            _fill_value(array.values.add(), item)
    elif kind is bytes:
        target.bytes_value = value
    elif isinstance(value, bool):
        target.boolean_value = value
    elif isinstance(value, int):
        target.integer_value = value
    elif isinstance(value, float):
        target.double_value = value
    elif isinstance(value, str):
        target.string_value = value
    else:
        raise _NotEncodable(kind.__name__)
