"""`POST /v1/embeddings`, OpenAI-compatible. Pure computation over no stored state, so it needs no
tenant and answers any caller the gateway lets through."""

from __future__ import annotations

import base64

import numpy as np
from fastapi import APIRouter

from ..dependencies import ERROR_RESPONSES, Service, loaded_rag, on_model_thread
from ..embedding import MODEL_NAME
from ..errors import ApiError
from ..models import EmbeddingItem, EmbeddingRequest, EmbeddingResponse, Usage

router = APIRouter()

MODEL_ALIASES = frozenset({MODEL_NAME, f"sentence-transformers/{MODEL_NAME}"})


@router.post(
    "/v1/embeddings",
    response_model=EmbeddingResponse,
    responses=ERROR_RESPONSES,
    summary="Embed texts (OpenAI-compatible)",
)
async def embeddings(body: EmbeddingRequest, state: Service) -> EmbeddingResponse:
    """One unit vector per input, in input order."""
    settings = state.settings
    if body.model not in MODEL_ALIASES:
        raise ApiError(404, "model_not_found", f"model {body.model!r} is not served here; use {MODEL_NAME!r}")
    texts = [body.input] if isinstance(body.input, str) else body.input
    if not texts:
        raise ApiError(422, "invalid_request", "body.input: at least one text is required")
    if len(texts) > settings.max_inputs_per_request:
        raise ApiError(413, "too_many_inputs", f"at most {settings.max_inputs_per_request} inputs per request")
    if any(len(t) > settings.max_input_chars for t in texts):
        raise ApiError(413, "input_too_long", f"each input is limited to {settings.max_input_chars} characters")
    rag = loaded_rag(state)
    if body.dimensions is not None and body.dimensions != rag.embedder.dimensions:
        raise ApiError(422, "invalid_request", f"body.dimensions: this model has {rag.embedder.dimensions} dimensions")
    result = await on_model_thread(state, lambda: rag.embedder.embed(texts))
    tokens = sum(result.token_counts)
    return EmbeddingResponse(
        data=[EmbeddingItem(index=i, embedding=_encode(v, body.encoding_format)) for i, v in enumerate(result.vectors)],
        model=MODEL_NAME,
        usage=Usage(prompt_tokens=tokens, total_tokens=tokens),
    )


def _encode(vector: np.ndarray, encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return [float(x) for x in vector]
