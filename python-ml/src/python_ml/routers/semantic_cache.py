"""`POST /v1/semantic-cache/lookup`: the index the gateway's semantic-cache filter asks for similar
questions (`semantic_index.py`). Only the gateway may call it: it answers with a bearer token the
two share (`PYML_SEMANTIC_CACHE_TOKEN`), and without one configured the endpoint does not exist."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import APIRouter, Depends, Request

from ..dependencies import ERROR_RESPONSES, Service, ServiceState, loaded_rag, on_model_thread, service
from ..errors import ApiError
from ..models import SemanticLookupRequest, SemanticLookupResponse, SemanticMatch
from ..semantic_index import SemanticIndex

router = APIRouter()


def gateway_index(request: Request, state: Annotated[ServiceState, Depends(service)]) -> SemanticIndex:
    """The index, for a caller with the shared token; 404 when none is configured, 401 for a wrong
    or missing token, 503 while the model loads."""
    token = state.settings.semantic_cache_token
    if token is None:
        raise ApiError(404, "not_found", "the semantic cache index is not enabled (PYML_SEMANTIC_CACHE_TOKEN)")
    scheme, _, presented = request.headers.get("authorization", "").partition(" ")
    expected = token.get_secret_value().encode("utf-8")
    if scheme.lower() != "bearer" or not hmac.compare_digest(presented.encode("utf-8"), expected):
        raise ApiError(401, "invalid_token", "this endpoint needs the gateway's semantic cache token")
    loaded_rag(state)
    assert state.semantic_index is not None, "loaded with the model"
    return state.semantic_index


@router.post(
    "/v1/semantic-cache/lookup",
    response_model=SemanticLookupResponse,
    responses={**ERROR_RESPONSES, 401: ERROR_RESPONSES[404]},
    summary="Find a question's similar predecessors in its partition (gateway only)",
)
async def lookup(
    body: SemanticLookupRequest, index: Annotated[SemanticIndex, Depends(gateway_index)], state: Service
) -> SemanticLookupResponse:
    """Embeds the question and searches its partition; indexes it when nothing there is similar."""
    if len(body.text) > state.settings.max_input_chars:
        raise ApiError(413, "input_too_long", f"text is limited to {state.settings.max_input_chars} characters")
    rag = loaded_rag(state)

    def work() -> tuple[list[SemanticMatch], bool]:
        vector = rag.embedder.embed([body.text]).vectors[0]
        found, indexed = index.look_up(
            body.partition, body.key, vector, body.min_similarity, body.limit, body.ttl_seconds
        )
        return [SemanticMatch(key=m.key, similarity=round(m.similarity, 6)) for m in found], indexed

    matches, indexed = await on_model_thread(state, work)
    return SemanticLookupResponse(matches=matches, indexed=indexed)
