"""The vector store: chunks with their embeddings and metadata, in Qdrant.

The default is Qdrant's embedded mode (a directory or memory, no server); setting a URL points the
same calls at a Qdrant server. Point ids are derived from (document id, chunk index), so
re-ingesting a document overwrites its chunks in place.
"""

from __future__ import annotations

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
    """Chunks and vectors in one Qdrant collection."""

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

    @contextmanager
    def _guard(self) -> Iterator[None]:
        if self._local:
            with self._lock:
                yield
        else:
            yield

    def count(self) -> int:
        """Chunks stored."""
        with self._guard():
            return self._client.count(self._collection, exact=True).count

    def vectors_by_hash(self, hashes: Sequence[str]) -> dict[str, np.ndarray]:
        """Stored vectors for any of these chunk content hashes, so unchanged text is not re-embedded."""
        found: dict[str, np.ndarray] = {}
        if not hashes:
            return found
        condition = models.Filter(
            must=[models.FieldCondition(key="content_hash", match=models.MatchAny(any=list(set(hashes))))]
        )
        with self._guard():
            offset: Any = None
            while True:
                points, offset = self._client.scroll(
                    self._collection,
                    scroll_filter=condition,
                    with_vectors=True,
                    with_payload=["content_hash"],
                    limit=256,
                    offset=offset,
                )
                for point in points:
                    assert point.payload is not None and point.vector is not None
                    found[point.payload["content_hash"]] = np.asarray(point.vector, np.float32)
                if offset is None:
                    return found

    def replace_document(self, document_id: str, chunks: Sequence[StoredChunk], vectors: np.ndarray) -> None:
        """Stores a document's chunks and drops any chunks left from a longer earlier version."""
        points = [
            models.PointStruct(
                id=str(uuid.uuid5(_ID_NAMESPACE, f"{document_id}\x00{chunk.chunk_index}")),
                vector=vector.tolist(),
                payload={
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
        stale = models.Filter(
            must=[
                models.FieldCondition(key="document_id", match=models.MatchValue(value=document_id)),
                models.FieldCondition(key="chunk_index", range=models.Range(gte=len(chunks))),
            ]
        )
        with self._guard():
            if points:
                self._client.upsert(self._collection, points=points)
            self._client.delete(self._collection, points_selector=models.FilterSelector(filter=stale))

    def search(self, vector: np.ndarray, limit: int, metadata: MetadataFilter | None) -> list[Hit]:
        """The `limit` chunks nearest to `vector` whose metadata matches every filter entry."""
        with self._guard():
            response = self._client.query_points(
                self._collection,
                query=vector.tolist(),
                query_filter=_metadata_filter(metadata),
                limit=limit,
                with_payload=True,
            )
        hits = []
        for point in response.points:
            payload = point.payload or {}
            hits.append(
                Hit(
                    StoredChunk(
                        document_id=payload["document_id"],
                        chunk_index=payload["chunk_index"],
                        text=payload["text"],
                        start=payload["start"],
                        end=payload["end"],
                        content_hash=payload["content_hash"],
                        metadata=payload.get("metadata") or {},
                    ),
                    point.score,
                )
            )
        return hits

    def close(self) -> None:
        """Releases the embedded store's directory lock (or the server connection)."""
        with self._guard():
            self._client.close()


def _metadata_filter(metadata: MetadataFilter | None) -> models.Filter | None:
    if not metadata:
        return None
    conditions: list[models.Condition] = []
    for key, value in metadata.items():
        match: models.MatchValue | models.MatchAny
        if isinstance(value, (list, tuple)):
            match = models.MatchAny(any=list(value))
        else:
            match = models.MatchValue(value=value)
        conditions.append(models.FieldCondition(key=f"metadata.{key}", match=match))
    return models.Filter(must=conditions)
