"""Retrieval-augmented answers: ingest documents into the vector store, retrieve chunks for a
question, each for one tenant. Synchronous and CPU-bound; the web layer runs these calls in worker
threads."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from .chunking import Chunk
from .embedding import Embedder
from .models import Document, IngestedDocument
from .store import Hit, MetadataFilter, StoredChunk, VectorStore


class EmptyCorpusError(Exception):
    """A query arrived before the tenant ingested any document."""


def content_hash(text: str) -> str:
    """The key under which a chunk's embedding is reused: same text, same vector."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class Rag:
    """Ingest and retrieval over one embedder and one store."""

    def __init__(self, embedder: Embedder, store: VectorStore) -> None:
        self.embedder = embedder
        self.store = store

    def ingest(self, tenant: str, document: Document, pieces: Sequence[Chunk]) -> IngestedDocument:
        """Embeds (only text the tenant has not stored already) and stores one document's chunks."""
        chunks = [
            StoredChunk(
                document_id=document.id,
                chunk_index=i,
                text=piece.text,
                start=piece.start,
                end=piece.end,
                content_hash=content_hash(piece.text),
                metadata=document.metadata,
            )
            for i, piece in enumerate(pieces)
        ]
        known = self.store.vectors_by_hash(tenant, [c.content_hash for c in chunks])
        missing = sorted({c.content_hash: c.text for c in chunks if c.content_hash not in known}.items())
        if missing:
            fresh = self.embedder.embed([text for _, text in missing]).vectors
            known.update({digest: fresh[i] for i, (digest, _) in enumerate(missing)})
        vectors = np.stack([known[c.content_hash] for c in chunks]) if chunks else np.zeros((0, 0))
        self.store.replace_document(tenant, document.id, chunks, vectors)
        return IngestedDocument(
            id=document.id, chunks=len(chunks), embedded=len(missing), reused=len(chunks) - len(missing)
        )

    def retrieve(self, tenant: str, question: str, top_k: int, filters: MetadataFilter | None) -> list[Hit]:
        """The tenant's `top_k` chunks most similar to the question that match the filters."""
        vector = self.embedder.embed([question]).vectors[0]
        hits = self.store.search(tenant, vector, top_k, filters)
        # Counting is a scan in the embedded store: only an empty answer pays for it.
        if not hits and self.store.count(tenant) == 0:
            raise EmptyCorpusError
        return hits
