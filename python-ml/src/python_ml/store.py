"""The vector store: chunks with their embeddings and metadata, in Qdrant, kept apart by tenant.

The default is Qdrant's embedded mode (a directory or memory, no server); setting a URL points the
same calls at a Qdrant server. Every point carries its tenant in the payload and every read, count
and delete filters on it, so no call made for one tenant can touch another's chunks. Point ids are
derived from (tenant, document id, chunk index): re-ingesting a document overwrites its chunks in
place, and two tenants' documents of the same id are different points.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
from qdrant_client import QdrantClient, models

from .settings import Settings

_ID_NAMESPACE = uuid.UUID("0f6c1d0e-6a4b-4d0a-9a53-3b1c61f0a2d1")
_TENANT = "tenant"
_PAGE = 256

MetadataValue = str | int | bool
MetadataFilter = Mapping[str, MetadataValue | Sequence[MetadataValue]]


@dataclass(frozen=True)
class StoredChunk:
    """A chunk as the store keeps it."""

    document_id: str
    chunk_index: int
    text: str
    start: int
    end: int
    content_hash: str
    metadata: dict[str, Any]


@dataclass(frozen=True)
class Hit:
    """A chunk returned by a search, with its cosine similarity to the query."""

    chunk: StoredChunk
    score: float


class VectorStore:
    """Chunks and vectors in one Qdrant collection, every call scoped to one tenant."""

    def __init__(self, settings: Settings, dimensions: int) -> None:
        if settings.qdrant_url:
            api_key = settings.qdrant_api_key.get_secret_value() if settings.qdrant_api_key else None
            self._client = QdrantClient(url=settings.qdrant_url, api_key=api_key)
            self._local = False
        elif settings.qdrant_path == ":memory:":
            self._client = QdrantClient(location=":memory:")
            self._local = True
        else:
            self._client = QdrantClient(path=settings.qdrant_path)
            self._local = True
        # The embedded store is not safe for concurrent use; a server is.
        self._lock = threading.Lock()
        self._collection = settings.collection
        with self._guard():
            if not self._client.collection_exists(self._collection):
                self._client.create_collection(
                    self._collection,
                    vectors_config=models.VectorParams(size=dimensions, distance=models.Distance.COSINE),
                )
            if not self._local:
                # Every query filters on the tenant; a server keeps each tenant's points together
                # for it. (The embedded store has no payload indexes and would only warn.)
                self._client.create_payload_index(
                    self._collection,
                    _TENANT,
                    field_schema=models.KeywordIndexParams(type=models.KeywordIndexType.KEYWORD, is_tenant=True),
                )

    @contextmanager
    def _guard(self) -> Iterator[None]:
        if self._local:
            with self._lock:
                yield
        else:
            yield

    @property
    def is_local(self) -> bool:
        """Whether this is the embedded store (no payload indexes, one caller at a time)."""
        return self._local

    @contextmanager
    def client(self) -> Iterator[QdrantClient]:
        """The store's client, held for the caller's exclusive use where it must be (embedded), for
        collections of its own beside the documents'."""
        with self._guard():
            yield self._client

    def count(self, tenant: str) -> int:
        """Chunks stored for `tenant`."""
        with self._guard():
            return self._client.count(self._collection, count_filter=_only(tenant), exact=True).count

    def vectors_by_hash(self, tenant: str, hashes: Sequence[str]) -> dict[str, np.ndarray]:
        """`tenant`'s stored vectors for any of these chunk content hashes, so unchanged text is not
        re-embedded. Only the tenant's own: reusing another's would tell it that text is stored."""
        if not hashes:
            return {}
        condition = _only(
            tenant, models.FieldCondition(key="content_hash", match=models.MatchAny(any=list(set(hashes))))
        )
        found: dict[str, np.ndarray] = {}
        for point in self._scroll(condition, with_payload=["content_hash"], with_vectors=True):
            assert point.payload is not None and point.vector is not None
            found[point.payload["content_hash"]] = np.asarray(point.vector, np.float32)
        return found

    def replace_document(
        self, tenant: str, document_id: str, chunks: Sequence[StoredChunk], vectors: np.ndarray
    ) -> None:
        """Stores a document's chunks and drops any chunks left from a longer earlier version."""
        points = [
            models.PointStruct(
                id=_point_id(tenant, document_id, chunk.chunk_index),
                vector=vector.tolist(),
                payload={
                    _TENANT: tenant,
                    "document_id": chunk.document_id,
                    "chunk_index": chunk.chunk_index,
                    "text": chunk.text,
                    "start": chunk.start,
                    "end": chunk.end,
                    "content_hash": chunk.content_hash,
                    "metadata": chunk.metadata,
                },
            )
            for chunk, vector in zip(chunks, vectors, strict=True)
        ]
        stale = _document(
            tenant, document_id, models.FieldCondition(key="chunk_index", range=models.Range(gte=len(chunks)))
        )
        with self._guard():
            if points:
                self._client.upsert(self._collection, points=points)
            self._client.delete(self._collection, points_selector=models.FilterSelector(filter=stale))

    def document(self, tenant: str, document_id: str) -> list[StoredChunk]:
        """`tenant`'s chunks of a document in order; none if it has no such document."""
        chunks = [_chunk(point.payload) for point in self._scroll(_document(tenant, document_id), with_payload=True)]
        return sorted(chunks, key=lambda chunk: chunk.chunk_index)

    def delete_document(self, tenant: str, document_id: str) -> int:
        """Removes `tenant`'s chunks of a document; how many there were."""
        selector = _document(tenant, document_id)
        with self._guard():
            count = self._client.count(self._collection, count_filter=selector, exact=True).count
            if count:
                self._client.delete(self._collection, points_selector=models.FilterSelector(filter=selector))
        return count

    def search(self, tenant: str, vector: np.ndarray, limit: int, metadata: MetadataFilter | None) -> list[Hit]:
        """`tenant`'s `limit` chunks nearest to `vector` whose metadata matches every filter entry."""
        with self._guard():
            response = self._client.query_points(
                self._collection,
                query=vector.tolist(),
                query_filter=_only(tenant, *_metadata_conditions(metadata)),
                limit=limit,
                with_payload=True,
            )
        return [Hit(_chunk(point.payload), point.score) for point in response.points]

    def close(self) -> None:
        """Releases the embedded store's directory lock (or the server connection)."""
        with self._guard():
            self._client.close()

    def _scroll(
        self, condition: models.Filter, with_payload: bool | list[str], with_vectors: bool = False
    ) -> list[models.Record]:
        """Every point matching `condition`, read a page at a time under one hold of the lock."""
        records: list[models.Record] = []
        offset: Any = None
        with self._guard():
            while True:
                points, offset = self._client.scroll(
                    self._collection,
                    scroll_filter=condition,
                    with_payload=with_payload,
                    with_vectors=with_vectors,
                    limit=_PAGE,
                    offset=offset,
                )
                records.extend(points)
                if offset is None:
                    return records


def _point_id(tenant: str, document_id: str, chunk_index: int) -> str:
    # JSON keeps the parts apart whatever characters they hold: no two triples share a name.
    return str(uuid.uuid5(_ID_NAMESPACE, json.dumps([tenant, document_id, chunk_index])))


def _only(tenant: str, *conditions: models.Condition) -> models.Filter:
    return models.Filter(must=[models.FieldCondition(key=_TENANT, match=models.MatchValue(value=tenant)), *conditions])


def _document(tenant: str, document_id: str, *conditions: models.Condition) -> models.Filter:
    return _only(
        tenant, models.FieldCondition(key="document_id", match=models.MatchValue(value=document_id)), *conditions
    )


def _chunk(payload: dict[str, Any] | None) -> StoredChunk:
    assert payload is not None
    return StoredChunk(
        document_id=payload["document_id"],
        chunk_index=payload["chunk_index"],
        text=payload["text"],
        start=payload["start"],
        end=payload["end"],
        content_hash=payload["content_hash"],
        metadata=payload.get("metadata") or {},
    )


def _metadata_conditions(metadata: MetadataFilter | None) -> list[models.Condition]:
    conditions: list[models.Condition] = []
    for key, value in (metadata or {}).items():
        match: models.MatchValue | models.MatchAny
        if isinstance(value, (list, tuple)):
            match = models.MatchAny(any=list(value))
        else:
            match = models.MatchValue(value=value)
        conditions.append(models.FieldCondition(key=f"metadata.{key}", match=match))
    return conditions
