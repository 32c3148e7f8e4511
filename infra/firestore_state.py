"""Durable engine state in Firestore: checkpoints, the lease and the action log.

One engine namespace keeps these documents::

    engines/{namespace}                  manifest of the current checkpoint
    engines/{namespace}/chunks/{i}       the checkpoint, zlib-compressed, in
                                         chunks under 900 KB
    engines/{namespace}/lease/current    {holder, epoch, expires_at, token}
    actions/{action_id}                  one document per action
    scaling_targets/{target}             mirror of the scale handler's state
    system_config/tier                   mirror of the current tier
    system_config/tier/history/{action_id}
                                         one document per tier change
    metric_history/{YYYY-MM-DDTHH:MM}    metrics.sampled values per minute

The lease is `lease/current` because a document path needs an even number
of segments. The mirrors are not namespaced: one project runs one engine.

Single active evaluator, hot standby. Rules such as thresholds, windows
and cooldowns depend on the order of events, so the engine cannot be split
across workers without changing what it decides. Any number of workers may
share one subscription, but only the holder of the lease evaluates; the
others pull nothing and take over when the lease expires. That is what
makes N workers produce exactly the actions and counts of one. It buys
availability, not throughput.

Fencing. Every write a worker makes carries its lease: the batch also
updates the lease document on the condition that the document is unchanged
since the worker last wrote or read it (a Firestore `update_time`
precondition). A worker that lost the lease, even one paused for minutes
that wakes up believing it still leads, can therefore never overwrite the
state of its successor: its whole batch is refused. Each commit also
renews the lease. The epoch counts acquisitions and is stored in the
manifest. Lease expiry is judged by each worker's wall clock, so clocks
must agree to well within the lease length; fencing does not depend on it.

Lost state. A store remembers the highest epoch and commit it has seen.
Should the lease or the manifest later be missing, or older, Firestore
lost the namespace's data (an emulator restarted without it, documents
deleted by hand), and `StateLostError` says so instead of starting
epoch 1 from an empty checkpoint, which would silently forget every
window, cooldown and event id. A process that never saw the namespace
cannot tell lost data from a new namespace, and starts it.

Acquire, renew and release are compare-and-set writes on the lease
document: read it, then write on the condition that it has not changed
since, which is the one-document case of a Firestore transaction. The
client's transaction helper is not used because its begin and commit calls
retry an unreachable server for about a minute on their own, which would
stall the worker's own back-off and lease timing.

Commit order. A checkpoint and everything derived from it (the mirrors)
go in one batch, which is atomic. Action documents, tier history and
metric minutes join that batch while it stays under 500 writes and the
request size limit; the rest go first, in fenced batches of their own.
Those earlier writes are idempotent (an action document that already
exists is left alone, metric minutes are merged), so a crash between them
and the checkpoint only means they are written again, identically.

Queries need these indexes (the emulator does not ask for them):

* actions by rule and time: composite index on `actions` (rule ASC,
  at ASC), e.g. `gcloud firestore indexes composite create
  --collection-group=actions --field-config=field-path=rule,order=ascending
  --field-config=field-path=at,order=ascending`;
* metric history expiry: a TTL policy on `metric_history.expire_at`,
  e.g. `gcloud firestore fields ttls update expire_at
  --collection-group=metric_history --enable-ttl`. `expire_at` is the
  minute's event time plus 30 days, so a replay of an old stream writes
  history that expires at once.

All times are stored as timezone-aware UTC datetimes.
"""

from __future__ import annotations

import hashlib
import math
import time
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import structlog
from google.api_core import exceptions as api_exceptions
from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter

from engine.actions import ActionRecord
from engine.errors import StateError, TransientStateError
from infra.firestore_documents import (
    MAX_REQUEST_BYTES,
    MAX_WRITES,
    WRITE_OVERHEAD,
    Write,
    add_write,
    log_writes,
    mirror_writes,
    pack_writes,
    sized_write,
)

__all__ = [
    "CHUNK_BYTES",
    "Checkpoint",
    "CommitReport",
    "FirestoreStateStore",
    "Lease",
    "LeaseLostError",
    "Manifest",
    "StateCommit",
    "StateLostError",
    "freeze_state",
    "utc_now",
]

log = structlog.get_logger(__name__)

# A Firestore document holds at most 1 MiB; a chunk leaves room for its
# field names and the document's own overhead.
CHUNK_BYTES = 900_000
_FORMAT = 1

# Status codes that say "try again later" rather than "this is wrong".
_TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    api_exceptions.ServiceUnavailable,
    api_exceptions.DeadlineExceeded,
    api_exceptions.Aborted,
    api_exceptions.InternalServerError,
    api_exceptions.ResourceExhausted,
    api_exceptions.RetryError,
    ConnectionError,
)


class LeaseLostError(StateError):
    """Another worker holds the lease now; this one must stop writing."""


class StateLostError(LeaseLostError):
    """Firestore no longer has the lease or checkpoint this store saw.

    A lease lost this way cannot be taken again: the worker stops.
    """


@dataclass(frozen=True, slots=True)
class Lease:
    """A worker's hold on the namespace.

    `update_time` is the lease document's version as this worker last saw
    it; every fenced write requires the document to still be at it.
    """

    holder: str
    epoch: int
    expires_at: datetime
    update_time: datetime


@dataclass(frozen=True, slots=True)
class Manifest:
    """What the manifest document says about the current checkpoint."""

    chunks: int
    sha256: str
    size: int
    rules_version: str
    epoch: int
    seq: int
    updated_at: datetime
    events_processed: int


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A loaded checkpoint: the saved state and its manifest."""

    state: dict[str, Any]
    manifest: Manifest


@dataclass
class StateCommit:
    """Everything one commit makes durable.

    Args:
        state: the checkpoint, JSON-compatible (the engine's snapshot and
            the worker's own state), or as `freeze_state` serialized it.
        rules_version: the version of the rules that produced it.
        events_processed: events processed since the namespace began.
        actions: new action records; one that is already logged is skipped.
        updated_actions: logged records whose outcome a retry changed, each
            with the attempts made so far.
        handler_state: changed handler state by (namespace, key).
        metric_samples: metrics.sampled values by `minute_key`.
    """

    state: dict[str, Any] | bytes
    rules_version: str
    events_processed: int
    actions: Sequence[ActionRecord] = ()
    updated_actions: Sequence[tuple[ActionRecord, int]] = ()
    handler_state: Mapping[tuple[str, str], Any] = field(default_factory=dict)
    metric_samples: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CommitReport:
    """What one commit wrote and how long it took."""

    seq: int
    chunks: int
    state_bytes: int
    compressed_bytes: int
    requests: int
    writes: int
    skipped_actions: int
    seconds: float


def freeze_state(state: dict[str, Any]) -> bytes:
    """Serialize a checkpoint now, for a commit that another thread writes.

    The state a snapshot returns may share structures with the engine,
    which goes on changing them; the bytes do not change.
    """
    return orjson.dumps({"format": _FORMAT, "state": state})


def utc_now() -> datetime:
    """Return the current time as a timezone-aware UTC datetime."""
    return datetime.now(UTC)


class FirestoreStateStore:
    """Keep one engine namespace's checkpoint, lease and logs in Firestore.

    Args:
        project: the Google Cloud project id.
        namespace: the engine namespace; one lease and checkpoint each.
        client: a ready Firestore client; by default one for `project`.
        request_timeout: seconds allowed for each Firestore request.
        clock: the wall clock, for lease expiry and `updated_at`.
    """

    def __init__(
        self,
        project: str,
        namespace: str = "default",
        *,
        client: firestore.Client | None = None,
        request_timeout: float = 10.0,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.namespace = namespace
        self._client = client or firestore.Client(project=project)
        self._timeout = request_timeout
        self._clock = clock
        self._manifest_path = f"engines/{namespace}"
        self._lease_path = f"engines/{namespace}/lease/current"
        # The manifest as last read or written, to number the next commit
        # and to know which old chunks to delete.
        self._manifest: Manifest | None = None
        self._manifest_known = False
        # Set when a write failed without an answer: it may have landed.
        self._in_doubt = False
        # The lease length last asked for; every commit renews it by as much.
        self._lease_seconds: float | None = None
        # The highest lease epoch and commit seen: the namespace existed.
        self._seen_epoch = 0
        self._seen_seq = 0

    # Lease

    def read_lease(self) -> Lease | None:
        """Return the lease as stored, or None if nobody ever held it.

        Raises:
            TransientStateError: Firestore is unreachable for now.
        """
        snapshot = self._get(self._lease_path)
        current = _lease_from(snapshot) if snapshot.exists else None
        self._check_lease_kept(current)
        return current

    def acquire_lease(self, holder: str, seconds: float) -> Lease | None:
        """Take the lease if it is free, expired or already ours; start an epoch.

        Returns None when another worker holds a live lease.

        Raises:
            StateLostError: the lease this store saw is gone or older.
            TransientStateError: Firestore is unreachable for now.
        """
        current = self.read_lease()
        now = self._clock()
        if (
            current is not None
            and current.holder != holder
            and current.expires_at > now
        ):
            return None

        # Every acquisition starts an epoch, a restart of the same holder
        # included: the process that held the previous one may still be
        # alive, and must not pass for the new one.
        epoch = (current.epoch if current is not None else 0) + 1
        expires_at = now + timedelta(seconds=seconds)
        data = {
            "holder": holder,
            "epoch": epoch,
            "expires_at": expires_at,
            "token": f"{holder}:{epoch}:acquire",
        }
        batch = self._client.batch()
        ref = self._client.document(self._lease_path)
        if current is None:
            batch.create(ref, data)
        else:
            option = self._client.write_option(last_update_time=current.update_time)
            batch.update(ref, data, option=option)
        try:
            results = self._commit_batch(batch)
        except (LeaseLostError, api_exceptions.AlreadyExists):
            # Another worker won the race for the same document.
            return None
        log.info("lease acquired", namespace=self.namespace, holder=holder, epoch=epoch)
        self._seen_epoch = epoch
        self._manifest_known = False
        self._lease_seconds = seconds
        return Lease(holder, epoch, expires_at, results[0].update_time)

    def renew_lease(self, lease: Lease, seconds: float) -> Lease:
        """Extend the lease by `seconds` from now.

        Raises:
            LeaseLostError: another worker took the lease.
            TransientStateError: Firestore is unreachable for now.
        """
        lease = self._settle_doubt(lease)
        expires_at = self._clock() + timedelta(seconds=seconds)
        batch = self._client.batch()
        self._add_lease_write(batch, lease, {"expires_at": expires_at}, "renew")
        results = self._commit_batch(batch)
        self._lease_seconds = seconds
        return Lease(lease.holder, lease.epoch, expires_at, results[0].update_time)

    def release_lease(self, lease: Lease) -> None:
        """Let the lease expire now, so that a standby takes over at once.

        A lease already lost is left alone.

        Raises:
            TransientStateError: Firestore is unreachable for now.
        """
        try:
            lease = self._settle_doubt(lease)
            batch = self._client.batch()
            self._add_lease_write(
                batch, lease, {"expires_at": self._clock()}, "release"
            )
            self._commit_batch(batch)
        except LeaseLostError:
            return
        log.info("lease released", namespace=self.namespace, epoch=lease.epoch)

    # Checkpoint

    def load(self) -> Checkpoint | None:
        """Return the current checkpoint, or None if none was ever written.

        Raises:
            StateLostError: the manifest this store saw is gone or older.
            StateError: the chunks are missing or do not match the checksum.
            TransientStateError: Firestore is unreachable for now.
        """
        manifest = self.read_manifest()
        self._manifest_known = True
        if manifest is None:
            self._manifest = None
            return None
        refs = [self._chunk_ref(i) for i in range(manifest.chunks)]
        chunks = {
            chunk.id: chunk.to_dict()
            for chunk in self._call(
                lambda: list(
                    self._client.get_all(refs, retry=None, timeout=self._timeout)
                )
            )
            if chunk.exists
        }
        parts = []
        for i in range(manifest.chunks):
            chunk = chunks.get(str(i))
            if chunk is None or chunk.get("seq") != manifest.seq:
                raise StateError(
                    f"The checkpoint of namespace {self.namespace!r} lacks chunk {i} "
                    f"of commit {manifest.seq}; it cannot be restored."
                )
            parts.append(chunk["data"])
        blob = b"".join(parts)
        digest = hashlib.sha256(blob).hexdigest()
        if digest != manifest.sha256:
            raise StateError(
                f"The checkpoint of namespace {self.namespace!r} (commit "
                f"{manifest.seq}) does not match its checksum: the manifest says "
                f"{manifest.sha256[:12]}, the chunks give {digest[:12]}. It was not "
                "restored."
            )
        state: dict[str, Any] = orjson.loads(zlib.decompress(blob))
        self._manifest = manifest
        return Checkpoint(state["state"], manifest)

    def commit(self, lease: Lease, commit: StateCommit) -> tuple[Lease, CommitReport]:
        """Write a checkpoint with its actions, mirrors and metrics, fenced.

        Returns the lease as renewed by the commit, and a report.

        Raises:
            LeaseLostError: another worker took the lease; nothing of this
                commit that matters was written (action documents written
                earlier are ones the successor writes identically).
            StateError: the checkpoint is too large for one request, or
                Firestore refused a write.
            TransientStateError: Firestore is unreachable for now; commit
                the same data again later.
        """
        started = time.perf_counter()
        lease = self._settle_doubt(lease)
        previous = self._current_manifest()
        seq = (previous.seq if previous is not None else 0) + 1
        now = self._clock()

        # The checkpoint
        raw = commit.state
        if not isinstance(raw, bytes):
            raw = freeze_state(raw)
        blob = zlib.compress(raw, 6)
        chunk_count = max(1, math.ceil(len(blob) / CHUNK_BYTES))
        manifest = Manifest(
            chunks=chunk_count,
            sha256=hashlib.sha256(blob).hexdigest(),
            size=len(blob),
            rules_version=commit.rules_version,
            epoch=lease.epoch,
            seq=seq,
            updated_at=now,
            events_processed=commit.events_processed,
        )
        final = [
            Write(
                "set",
                self._chunk_path(i),
                {"seq": seq, "data": part},
                len(part) + WRITE_OVERHEAD,
            )
            for i, part in enumerate(_split(blob, CHUNK_BYTES))
        ]
        old_chunks = previous.chunks if previous is not None else 0
        final += [
            Write("delete", self._chunk_path(i), None, WRITE_OVERHEAD)
            for i in range(chunk_count, old_chunks)
        ]
        final.append(sized_write("set", self._manifest_path, _manifest_data(manifest)))
        final += mirror_writes(commit.handler_state)
        size = sum(w.size for w in final)
        if size > MAX_REQUEST_BYTES or len(final) >= MAX_WRITES:
            raise StateError(
                f"The checkpoint of namespace {self.namespace!r} is {len(blob)} bytes "
                f"compressed, more than one atomic commit of {MAX_REQUEST_BYTES} "
                "bytes holds; shorten the dedup retention or the rules' windows."
            )

        # The action log, tier history and metric minutes
        extra = log_writes(
            commit.actions, commit.updated_actions, commit.metric_samples, now
        )
        parts = pack_writes(extra, len(final), size)
        skipped = 0
        for number, part in enumerate(parts[:-1]):
            lease, part_skipped = self._write_part(lease, part, f"{seq}:{number}")
            skipped += part_skipped
        lease, part_skipped = self._write_part(
            lease, [*parts[-1], *final], f"{seq}:final"
        )
        skipped += part_skipped

        self._manifest = manifest
        self._seen_seq = seq
        report = CommitReport(
            seq=seq,
            chunks=chunk_count,
            state_bytes=len(raw),
            compressed_bytes=len(blob),
            requests=len(parts),
            writes=len(final) + len(extra),
            skipped_actions=skipped,
            seconds=time.perf_counter() - started,
        )
        return lease, report

    # Queries

    def read_manifest(self) -> Manifest | None:
        """Return the manifest as stored, or None.

        Raises:
            TransientStateError: Firestore is unreachable for now.
        """
        snapshot = self._get(self._manifest_path)
        manifest = _manifest_from(snapshot.to_dict()) if snapshot.exists else None
        seq = manifest.seq if manifest is not None else 0
        if seq < self._seen_seq:
            raise StateLostError(
                f"Firestore lost the checkpoint of namespace {self.namespace!r}: "
                f"this worker saw commit {self._seen_seq}, and the manifest now "
                f"{'says commit ' + str(seq) if manifest else 'is missing'}. The "
                "worker stops rather than go on from older or empty state; "
                "restore the data, or delete the namespace to start it anew."
            )
        self._seen_seq = seq
        return manifest

    def read_action(self, action_id: str) -> dict[str, Any] | None:
        """Return one logged action as `replay` writes it, or None.

        Raises:
            TransientStateError: Firestore is unreachable for now.
        """
        snapshot = self._get(f"actions/{action_id}")
        if not snapshot.exists:
            return None
        document: dict[str, Any] = snapshot.to_dict()
        at = document.get("at")
        if isinstance(at, datetime):
            document["at"] = at.astimezone(UTC).isoformat().replace("+00:00", "Z")
        return document

    def actions_by_rule(
        self, rule: str, start: datetime, end: datetime, limit: int = 1000
    ) -> list[dict[str, Any]]:
        """Return the logged actions of a rule with `start <= at < end`, by time.

        Raises:
            TransientStateError: Firestore is unreachable for now.
        """
        query = (
            self._client.collection("actions")
            .where(filter=FieldFilter("rule", "==", rule))
            .where(filter=FieldFilter("at", ">=", start))
            .where(filter=FieldFilter("at", "<", end))
            .order_by("at")
            .limit(limit)
        )
        documents = self._call(
            lambda: list(query.stream(retry=None, timeout=self._timeout))
        )
        return [document.to_dict() for document in documents]

    def close(self) -> None:
        """Close the client's channel."""
        self._client.close()  # type: ignore[no-untyped-call]  # untyped upstream

    # Writing

    def _write_part(
        self, lease: Lease, writes: list[Write], label: str
    ) -> tuple[Lease, int]:
        """Commit one fenced batch; skip action documents that already exist."""
        skipped = 0
        expires_at = lease.expires_at
        if self._lease_seconds is not None:
            expires_at = self._clock() + timedelta(seconds=self._lease_seconds)
        while True:
            batch = self._client.batch()
            self._add_lease_write(batch, lease, {"expires_at": expires_at}, label)
            for write in writes:
                add_write(self._client, batch, write)
            try:
                results = self._commit_batch(batch)
            except api_exceptions.AlreadyExists:
                # A crash after an earlier batch but before its checkpoint
                # leaves action documents that this commit creates again.
                existing = self._existing(
                    {w.path for w in writes if w.kind == "create"}
                )
                skipped += len(existing)
                writes = [w for w in writes if w.path not in existing]
                continue
            renewed = Lease(
                lease.holder, lease.epoch, expires_at, results[0].update_time
            )
            return renewed, skipped

    def _add_lease_write(
        self, batch: Any, lease: Lease, data: dict[str, Any], label: str
    ) -> None:
        data = {"token": f"{lease.holder}:{lease.epoch}:{label}", **data}
        option = self._client.write_option(last_update_time=lease.update_time)
        batch.update(self._client.document(self._lease_path), data, option=option)

    def _settle_doubt(self, lease: Lease) -> Lease:
        """After a write without an answer, find out where the lease stands.

        The write may have landed, which moved the lease document on; when
        the document still names this worker and epoch, only this worker
        can have moved it, so its version is adopted.
        """
        if not self._in_doubt:
            return lease
        stored = self.read_lease()
        self._check_lease_kept(stored, lease.epoch)
        if (
            stored is None
            or stored.holder != lease.holder
            or stored.epoch != lease.epoch
        ):
            raise LeaseLostError(
                f"The lease of namespace {self.namespace!r} moved to "
                f"{stored.holder if stored else 'nobody'!r}; this worker held epoch "
                f"{lease.epoch} and must stop writing."
            )
        self._in_doubt = False
        self._manifest_known = False
        return Lease(lease.holder, lease.epoch, stored.expires_at, stored.update_time)

    def _check_lease_kept(self, stored: Lease | None, held: int = 0) -> None:
        """Raise `StateLostError` if the lease went back to before what was seen.

        Only lost data moves it back: epochs only grow, and the lease
        document is never deleted.
        """
        seen = max(self._seen_epoch, held)
        epoch = stored.epoch if stored is not None else 0
        if epoch < seen:
            found = f"epoch {epoch}" if stored is not None else "no lease"
            raise StateLostError(
                f"Firestore lost the state of namespace {self.namespace!r}: this "
                f"worker saw its lease at epoch {seen}, and it now finds {found}. "
                "The worker stops rather than start again from an empty "
                "checkpoint; restore the data, or delete the namespace to start "
                "it anew."
            )
        self._seen_epoch = max(seen, epoch)

    def _commit_batch(self, batch: Any) -> list[Any]:
        try:
            return list(batch.commit(retry=None, timeout=self._timeout))
        except api_exceptions.FailedPrecondition as error:
            raise LeaseLostError(
                f"The lease of namespace {self.namespace!r} changed since this worker "
                "last wrote it; another worker holds it now, so nothing was written."
            ) from error
        except api_exceptions.AlreadyExists:
            raise
        except _TRANSIENT_ERRORS as error:
            # The write may have landed all the same; the next one finds out.
            self._in_doubt = True
            raise _transient(error, "write to", self.namespace) from error
        except api_exceptions.GoogleAPIError as error:
            raise StateError(
                f"Firestore refused a write of namespace {self.namespace!r}: "
                f"{_describe(error)}."
            ) from error

    def _existing(self, paths: Iterable[str]) -> set[str]:
        refs = [self._client.document(path) for path in paths]
        found = self._call(
            lambda: list(
                self._client.get_all(
                    refs, field_paths=["rule"], retry=None, timeout=self._timeout
                )
            )
        )
        return {snapshot.reference.path for snapshot in found if snapshot.exists}

    def _current_manifest(self) -> Manifest | None:
        if not self._manifest_known:
            self._manifest = self.read_manifest()
            self._manifest_known = True
        return self._manifest

    # Reading

    def _get(self, path: str) -> Any:
        reference = self._client.document(path)
        return self._call(lambda: reference.get(retry=None, timeout=self._timeout))

    def _call(self, read: Callable[[], Any]) -> Any:
        try:
            return read()
        except _TRANSIENT_ERRORS as error:
            raise _transient(error, "read from", self.namespace) from error
        except api_exceptions.GoogleAPIError as error:
            raise StateError(
                f"Firestore refused a read of namespace {self.namespace!r}: "
                f"{_describe(error)}."
            ) from error

    def _chunk_path(self, index: int) -> str:
        return f"engines/{self.namespace}/chunks/{index}"

    def _chunk_ref(self, index: int) -> Any:
        return self._client.document(self._chunk_path(index))


# Documents


def _manifest_data(manifest: Manifest) -> dict[str, Any]:
    return {
        "chunks": manifest.chunks,
        "sha256": manifest.sha256,
        "size": manifest.size,
        "rules_version": manifest.rules_version,
        "epoch": manifest.epoch,
        "seq": manifest.seq,
        "updated_at": manifest.updated_at,
        "events_processed": manifest.events_processed,
    }


def _manifest_from(data: dict[str, Any]) -> Manifest:
    return Manifest(
        chunks=data["chunks"],
        sha256=data["sha256"],
        size=data["size"],
        rules_version=data["rules_version"],
        epoch=data["epoch"],
        seq=data["seq"],
        updated_at=data["updated_at"],
        events_processed=data["events_processed"],
    )


def _lease_from(snapshot: Any) -> Lease:
    data = snapshot.to_dict()
    return Lease(
        data["holder"], data["epoch"], data["expires_at"], snapshot.update_time
    )


def _split(blob: bytes, size: int) -> list[bytes]:
    return [blob[i : i + size] for i in range(0, len(blob), size)] or [b""]


def _transient(
    error: BaseException, action: str, namespace: str
) -> TransientStateError:
    return TransientStateError(
        f"Firestore could not {action} namespace {namespace!r} for now "
        f"({_describe(error)}); a retry may succeed."
    )


def _describe(error: BaseException) -> str:
    detail = getattr(error, "message", None) or str(error) or type(error).__name__
    return str(detail).rstrip(".")
