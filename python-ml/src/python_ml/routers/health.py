"""Liveness and readiness."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from ..dependencies import Service, loaded_rag
from ..embedding import MODEL_NAME
from ..models import ErrorResponse

router = APIRouter()


@router.get("/healthz", summary="Liveness: the process is serving")
async def healthz() -> dict[str, str]:
    """200 while the process lives."""
    return {"status": "ok"}


@router.get("/readyz", summary="Readiness: the model is loaded", responses={503: {"model": ErrorResponse}})
async def readyz(state: Service) -> dict[str, Any]:
    """200 once the model is loaded; 503 `model_loading` or `model_unavailable` before."""
    rag = loaded_rag(state)
    return {
        "status": "ready",
        "model": MODEL_NAME,
        "dimensions": rag.embedder.dimensions,
        "generator": state.generator.name,
    }
