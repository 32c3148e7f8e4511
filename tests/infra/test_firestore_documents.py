"""Tests of the Firestore document layout and its write encoding."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from google.auth.credentials import AnonymousCredentials
from google.cloud import firestore
from google.cloud.firestore_v1.types import write as write_types

from infra.firestore_documents import Write, add_write

# Documents as the state store writes them, and the edge cases of each type.
DOCUMENTS: list[tuple[str, dict[str, Any]]] = [
    (
        "an action",
        {
            "at": datetime(2015, 2, 26, 21, 42, 55, 631000, tzinfo=UTC),
            "rule": "invalidate-stats",
            "params": {"target": "stats:*"},
            "trigger": {"event_id": "amzn-000000-00000", "type": "x.created"},
            "outcome": "ok",
            "result": {"removed": 0, "ratio": 0.5, "changed": True},
            "why": {"events": ["a", "b"], "nested": ["[1, 2]"]},
            "error": None,
            "attempts": 1,
        },
    ),
    ("a checkpoint chunk", {"seq": 7, "data": b"\x00\x01compressed"}),
    ("empty containers", {"map": {}, "list": [], "text": ""}),
    ("zero values", {"epoch": datetime(1970, 1, 1, tzinfo=UTC), "n": 0, "f": 0.0}),
    ("a naive datetime", {"at": datetime(2026, 3, 1, 12, 0, 0, 999999)}),
    ("large numbers", {"big": 2**62, "negative": -(2**40), "tiny": 1e-300}),
]


@pytest.fixture(scope="module")
def client() -> firestore.Client:
    """Return a client that builds requests; it never connects here."""
    # The credentials class is untyped upstream.
    credentials = AnonymousCredentials()  # type: ignore[no-untyped-call]
    return firestore.Client(project="layout", credentials=credentials)


def _built(client: firestore.Client, build: Any) -> list[Any]:
    batch = client.batch()
    build(batch)
    return [write_types.Write.pb(w) for w in batch._write_pbs]


@pytest.mark.parametrize("kind", ["create", "set"])
@pytest.mark.parametrize(("case", "data"), DOCUMENTS, ids=[c for c, _ in DOCUMENTS])
def test_a_write_encodes_as_the_client_would(
    client: firestore.Client, kind: str, case: str, data: dict[str, Any]
) -> None:
    """The direct encoding equals the batch's own create and set, byte for byte."""
    path = "actions/05f35397abf37d935f14"
    ours = _built(client, lambda b: add_write(client, b, Write(kind, path, data, 0)))
    ref = client.document(path)
    theirs = _built(client, lambda b: getattr(b, kind)(ref, data))

    assert ours == theirs
    assert ours[0].SerializeToString(deterministic=True) == theirs[0].SerializeToString(
        deterministic=True
    )


def test_a_value_only_the_client_knows_falls_back_to_it(
    client: firestore.Client,
) -> None:
    """A type outside the stored ones is handed to the client's encoder."""
    data = {"where": firestore.GeoPoint(52.5, 13.4)}
    ours = _built(client, lambda b: add_write(client, b, Write("set", "a/b", data, 0)))

    assert ours[0].update.fields["where"].geo_point_value.latitude == 52.5
