"""The tenant's documents: `POST /v1/rag/documents` to index, `GET` and `DELETE
/v1/rag/documents/{id}` to read and remove one. Every call sees only the caller's tenant."""

from __future__ import annotations

import logging
import time
from typing import Annotated

import anyio
from fastapi import APIRouter, Path

from ..chunking import estimated_chunk_count, split_text
from ..dependencies import ERROR_RESPONSES, Service, elapsed_ms, loaded_rag, on_model_thread
from ..errors import ApiError
from ..limits import check_chunk_counts, check_metadata
from ..models import (
    Chunking,
    DeletedDocument,
    DocumentChunk,
    IngestRequest,
    IngestResponse,
    StoredDocument,
)
from ..trust import UNTRUSTED_RESPONSE, TrustedCaller

log = logging.getLogger(__name__)

router = APIRouter(responses={**ERROR_RESPONSES, **UNTRUSTED_RESPONSE})

# The routes take it as `{document_id:path}`: ingest accepts ids with slashes, so reads and deletes must too.
DocumentId = Annotated[str, Path(min_length=1, max_length=256)]


@router.post("/v1/rag/documents", response_model=IngestResponse, summary="Index documents")
async def ingest(body: IngestRequest, caller: TrustedCaller, state: Service) -> IngestResponse:
    """Splits, embeds (only text the tenant has not stored already) and stores the documents,
    replacing the tenant's earlier versions of the same ids."""
    settings = state.settings
    if len(body.documents) > settings.max_documents_per_request:
        raise ApiError(413, "too_many_documents", f"at most {settings.max_documents_per_request} documents per request")
    if any(len(d.text) > settings.max_document_chars for d in body.documents):
        raise ApiError(
            413, "document_too_long", f"each document is limited to {settings.max_document_chars} characters"
        )
    ids = [d.id for d in body.documents]
    if len(set(ids)) != len(ids):
        raise ApiError(422, "invalid_request", "body.documents: document ids must be unique within a request")
    check_metadata(body.documents, settings)
    policy = body.chunking or Chunking(size=settings.chunk_size, overlap=settings.chunk_overlap)
    estimates = {d.id: estimated_chunk_count(len(d.text), policy.size, policy.overlap) for d in body.documents}
    check_chunk_counts(estimates, settings, estimated=True)
    rag = loaded_rag(state)

    started = time.perf_counter()
    pieces = await on_model_thread(
        state, lambda: [split_text(d.text, policy.size, policy.overlap) for d in body.documents]
    )
    # Sentence boundaries make real chunks shorter than full ones: hold the caps exactly too.
    check_chunk_counts({d.id: len(p) for d, p in zip(body.documents, pieces, strict=True)}, settings, estimated=False)
    results = await on_model_thread(
        state,
        lambda: [rag.ingest(caller.tenant, d, p) for d, p in zip(body.documents, pieces, strict=True)],
    )
    return IngestResponse(
        documents=results,
        chunks=sum(r.chunks for r in results),
        embedded=sum(r.embedded for r in results),
        reused=sum(r.reused for r in results),
        duration_ms=elapsed_ms(started),
    )


@router.get("/v1/rag/documents/{document_id:path}", response_model=StoredDocument, summary="Read a document")
async def get_document(document_id: DocumentId, caller: TrustedCaller, state: Service) -> StoredDocument:
    """The tenant's document as stored: its metadata and its chunks in order."""
    rag = loaded_rag(state)
    chunks = await anyio.to_thread.run_sync(lambda: rag.store.document(caller.tenant, document_id))
    if not chunks:
        raise _not_found(document_id)
    return StoredDocument(
        id=document_id,
        metadata=chunks[0].metadata,
        chunks=[DocumentChunk(chunk_index=c.chunk_index, text=c.text, start=c.start, end=c.end) for c in chunks],
    )


@router.delete("/v1/rag/documents/{document_id:path}", response_model=DeletedDocument, summary="Delete a document")
async def delete_document(document_id: DocumentId, caller: TrustedCaller, state: Service) -> DeletedDocument:
    """Removes the tenant's document; other tenants' documents of the same id stay."""
    rag = loaded_rag(state)
    removed = await anyio.to_thread.run_sync(lambda: rag.store.delete_document(caller.tenant, document_id))
    if not removed:
        raise _not_found(document_id)
    log.info(
        "tenant %r (identity %r) deleted document %r: %d chunks", caller.tenant, caller.identity, document_id, removed
    )
    return DeletedDocument(id=document_id, chunks=removed)


def _not_found(document_id: str) -> ApiError:
    # The same answer whether another tenant has this id or nobody does.
    return ApiError(404, "document_not_found", f"no document {document_id!r} is indexed for this tenant")
