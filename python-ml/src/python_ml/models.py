"""Request and response bodies. The embeddings ones follow OpenAI's shapes so its clients work."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .embedding import MODEL_NAME

MetadataFilterValue = str | int | bool


class EmbeddingRequest(BaseModel):
    """`POST /v1/embeddings`, as OpenAI's API takes it (text inputs only)."""

    input: str | list[str] = Field(
        description="A text or a list of texts. Texts longer than 256 word pieces are truncated."
    )
    model: str = MODEL_NAME
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, description="Only 384, the model's size, is accepted.")
    user: str | None = None

    @field_validator("input", mode="before")
    @classmethod
    def _texts_only(cls, value: object) -> object:
        if isinstance(value, list) and not all(isinstance(item, str) for item in value):
            raise ValueError("must be a string or a list of strings (token ids are not accepted)")
        return value


class EmbeddingItem(BaseModel):
    """One input's vector: a list of floats, or little-endian float32 bytes in base64."""

    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class Usage(BaseModel):
    """Word pieces read, special tokens included."""

    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    """The vectors, in input order."""

    object: Literal["list"] = "list"
    data: list[EmbeddingItem]
    model: str
    usage: Usage


class Document(BaseModel):
    """A document to index. Its id is the tenant's: sending it again replaces that tenant's earlier
    version, and no other tenant's document of the same id."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=256)
    text: str
    metadata: dict[str, Any] = Field(default_factory=dict)


class Chunking(BaseModel):
    """Chunk size and overlap in characters for this request, instead of the service's defaults."""

    model_config = ConfigDict(extra="forbid")

    size: int = Field(ge=50, le=20_000)
    overlap: int = Field(ge=0, description="At most half of `size`.")

    @model_validator(mode="after")
    def _chunks_move_on(self) -> Chunking:
        # Each chunk must bring at least half a chunk of new text: at size 50 and overlap 49 a
        # megabyte would be a million chunks, every one embedded and stored.
        if self.overlap * 2 > self.size:
            raise ValueError(f"overlap must be at most half of size ({self.size // 2} for size {self.size})")
        return self


class IngestRequest(BaseModel):
    """`POST /v1/rag/documents`."""

    model_config = ConfigDict(extra="forbid")

    documents: list[Document] = Field(min_length=1)
    chunking: Chunking | None = None


class IngestedDocument(BaseModel):
    """What happened to one document: chunks stored, of which how many needed a new embedding."""

    id: str
    chunks: int
    embedded: int
    reused: int


class IngestResponse(BaseModel):
    """`POST /v1/rag/documents` result."""

    documents: list[IngestedDocument]
    chunks: int
    embedded: int
    reused: int
    duration_ms: float


class DocumentChunk(BaseModel):
    """One stored chunk: `text` is the document's `text[start:end]`."""

    chunk_index: int
    text: str
    start: int
    end: int


class StoredDocument(BaseModel):
    """`GET /v1/rag/documents/{id}`: a document as the store holds it, chunks in order."""

    id: str
    metadata: dict[str, Any]
    chunks: list[DocumentChunk]


class DeletedDocument(BaseModel):
    """`DELETE /v1/rag/documents/{id}` result: the chunks removed."""

    id: str
    chunks: int


class QueryRequest(BaseModel):
    """`POST /v1/rag/query`."""

    model_config = ConfigDict(extra="forbid")

    question: str = Field(min_length=1, max_length=4000)
    top_k: int | None = Field(None, ge=1, le=50)
    filters: dict[str, MetadataFilterValue | list[MetadataFilterValue]] | None = Field(
        None, description="Metadata key → value (or list of accepted values); every entry must match."
    )
    stream: bool = False


class Source(BaseModel):
    """A retrieved chunk, cited in the answer as [number]."""

    number: int
    document_id: str
    chunk_index: int
    text: str
    start: int
    end: int
    metadata: dict[str, Any]
    score: float


class Timing(BaseModel):
    """Where a query's time went, in milliseconds."""

    retrieval_ms: float
    generation_ms: float
    total_ms: float


class QueryResponse(BaseModel):
    """`POST /v1/rag/query` result (when not streamed)."""

    answer: str
    generator: str
    sources: list[Source]
    timing: Timing


class ErrorDetail(BaseModel):
    """The error itself; `code` is stable, `message` is for people."""

    status: int
    code: str
    message: str
    request_id: str | None


class ErrorResponse(BaseModel):
    """Every error: the same shape the gateway's filters answer with."""

    error: ErrorDetail


class TextPart(BaseModel):
    """A text part of a message's content (OpenAI's content-part form)."""

    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    """One turn. Content is text, or text parts (images and audio are not served here)."""

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = Field(None, max_length=64)

    def text(self) -> str:
        """The content as one text."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class StreamOptions(BaseModel):
    """`stream_options`: with `include_usage`, a last chunk carries the usage."""

    include_usage: bool = False


class ChatRequest(BaseModel):
    """`POST /v1/chat/completions`, as OpenAI's API takes it. Sampling settings a client sends
    (`temperature`, `top_p`, …) are accepted and ignored; one answer (`n` = 1) is written."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1, max_length=256)
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    n: int = Field(1, ge=1, le=1)

    def question(self) -> str | None:
        """The last user turn, which the answer is about."""
        return next((m.text() for m in reversed(self.messages) if m.role == "user"), None)

    def token_limit(self) -> int | None:
        """What the client allows the answer: `max_completion_tokens`, else `max_tokens`."""
        return self.max_completion_tokens or self.max_tokens


class ChatUsage(BaseModel):
    """Tokens read and written (the service's word pieces, `tokens.py`)."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatChoice(BaseModel):
    """The answer."""

    index: int = 0
    message: ChatMessage
    finish_reason: Literal["stop", "length"]


class ChatCompletion(BaseModel):
    """A non-streamed answer, as OpenAI's API gives it."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: ChatUsage


_DIGEST = r"^[0-9a-f]{64}$"


class SemanticLookupRequest(BaseModel):
    """`POST /v1/semantic-cache/lookup`, as the gateway's semantic-cache filter sends it."""

    model_config = ConfigDict(extra="forbid")

    partition: str = Field(pattern=_DIGEST, description="The filter's partition digest; searches never cross it.")
    key: str = Field(pattern=_DIGEST, description="The question's key, indexed when nothing similar is found.")
    text: str = Field(min_length=1, description="The question, embedded (bounded by `max_input_chars`).")
    min_similarity: float = Field(gt=0, le=1)
    limit: int = Field(4, ge=1, le=8)
    ttl_seconds: int = Field(ge=1, le=7 * 86_400)


class SemanticMatch(BaseModel):
    """A similar earlier question: its key and cosine similarity."""

    key: str
    similarity: float


class SemanticLookupResponse(BaseModel):
    """The partition's similar questions, best first, and whether this one was indexed."""

    matches: list[SemanticMatch]
    indexed: bool
