"""The gateway's semantic cache index: earlier questions' vectors, each under the key the gateway
stores its answer at, kept apart by an opaque partition digest.

The gateway's semantic-cache filter owns the answers (in its shared data) and the partitioning (the
digest covers the verified caller, route, model, system prompt and parameters). This index only
maps a question to the keys of similar earlier ones in the same partition: every search filters on
the partition, and the partition is never part of the embedded text. Entries expire with the
answers' TTL; the index holds at most `semantic_cache_max_entries` of them.

Points live in their own collection of the service's vector store (embedded Qdrant, or the
configured server, which replicas then share).
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass

import numpy as np
from qdrant_client import models

from .store import VectorStore

_ID_NAMESPACE = uuid.UUID("6f1d3c2a-0b7e-4f55-8c3e-2d9a4b7c1e60")
_PARTITION = "partition"
_EXPIRES_AT = "expires_at"
PURGE_PERIOD_SECONDS = 30.0
"""How often a look-up first deletes expired entries."""


@dataclass(frozen=True)
class Match:
    """A similar earlier question: the key its answer is stored under, and how similar it is."""

    key: str
    similarity: float


class SemanticIndex:
    """Question vectors in one collection, every call scoped to one partition."""

    def __init__(self, store: VectorStore, collection: str, dimensions: int, max_entries: int) -> None:
        self._store = store
        self._collection = collection
        self._max_entries = max_entries
        self._purged_at = 0.0
        # Counts and purge times change under concurrent look-ups (one per model thread).
        self._lock = threading.Lock()
        with store.client() as client:
            if not client.collection_exists(collection):
                client.create_collection(
                    collection, vectors_config=models.VectorParams(size=dimensions, distance=models.Distance.COSINE)
                )
                if not store.is_local:
                    # Every search filters on both; a server indexes them for it. (The embedded
                    # store has no payload indexes and would only warn.)
                    client.create_payload_index(collection, _PARTITION, field_schema=models.PayloadSchemaType.KEYWORD)
                    client.create_payload_index(collection, _EXPIRES_AT, field_schema=models.PayloadSchemaType.FLOAT)
            self._entries = client.count(collection, exact=True).count

    def look_up(
        self, partition: str, key: str, vector: np.ndarray, min_similarity: float, limit: int, ttl_seconds: int
    ) -> tuple[list[Match], bool]:
        """The partition's live questions at least `min_similarity` similar to `vector`, best first;
        when there are none, `vector` is indexed under `key` (unless the index is full). Returns the
        matches and whether the question was indexed."""
        now = time.time()
        self._purge_expired(now)
        with self._store.client() as client:
            response = client.query_points(
                self._collection,
                query=vector.tolist(),
                query_filter=models.Filter(
                    must=[
                        models.FieldCondition(key=_PARTITION, match=models.MatchValue(value=partition)),
                        models.FieldCondition(key=_EXPIRES_AT, range=models.Range(gt=now)),
                    ]
                ),
                score_threshold=min_similarity,
                limit=limit,
                with_payload=["key"],
            )
            matches = [Match(point.payload["key"], point.score) for point in response.points if point.payload]
            with self._lock:
                full = self._entries >= self._max_entries
                if not (matches or full):
                    # Counted up on every insert (a re-indexed key counts twice) and exactly at
                    # each purge: the bound errs on the side of refusing. Replicas sharing a server
                    # each count their own inserts between purges.
                    self._entries += 1
            if matches or full:
                return matches, False
            client.upsert(
                self._collection,
                points=[
                    models.PointStruct(
                        id=str(uuid.uuid5(_ID_NAMESPACE, f"{partition}/{key}")),
                        vector=vector.tolist(),
                        payload={_PARTITION: partition, "key": key, _EXPIRES_AT: now + ttl_seconds},
                    )
                ],
            )
            return matches, True

    def _purge_expired(self, now: float) -> None:
        with self._lock:
            if now - self._purged_at < PURGE_PERIOD_SECONDS:
                return
            self._purged_at = now
        expired = models.Filter(must=[models.FieldCondition(key=_EXPIRES_AT, range=models.Range(lte=now))])
        with self._store.client() as client:
            client.delete(self._collection, points_selector=models.FilterSelector(filter=expired))
            entries = client.count(self._collection, exact=True).count
        with self._lock:
            self._entries = entries
