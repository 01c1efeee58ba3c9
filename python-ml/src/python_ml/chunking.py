"""Splitting documents into overlapping chunks on paragraph, sentence and word boundaries.

Chunks are exact slices of the document (`text[start:end]`), so a citation can point back into it.
The document is cut into sentences (a sentence longer than a chunk into words, and a word longer than
a chunk into characters), and sentences are packed greedily into chunks of at most `size`
characters. A full chunk ends at the last paragraph break in its second half when there is one, else
at a sentence. Each new chunk repeats the trailing sentences of the previous one that fit in
`overlap` characters.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Whitespace after sentence punctuation, or after punctuation and a closing quote or bracket.
_SENTENCE_END = re.compile(r"(?:(?<=[.!?…])|(?<=[.!?…][\"')\]]))\s+")
_PARAGRAPH = re.compile(r"\n\s*\n")
_BOUNDARIES = (
    _PARAGRAPH,
    _SENTENCE_END,
    re.compile(r"\s+"),  # words
)


@dataclass(frozen=True)
class Chunk:
    """A slice of a document: `text == document[start:end]`."""

    text: str
    start: int
    end: int


@dataclass(frozen=True)
class _Piece:
    start: int
    end: int
    ends_paragraph: bool


def split_text(text: str, size: int = 1000, overlap: int = 200) -> list[Chunk]:
    """Chunks of at most `size` characters, consecutive chunks sharing up to `overlap` characters."""
    if size <= 0:
        raise ValueError("size must be positive")
    if not 0 <= overlap < size:
        raise ValueError("overlap must be at least 0 and smaller than size")
    pieces: list[_Piece] = []
    cursor = 0
    for match in [*_PARAGRAPH.finditer(text), None]:
        paragraph_end = match.start() if match else len(text)
        spans = _pieces(text, cursor, paragraph_end, 1, size)
        pieces.extend(_Piece(s, e, i == len(spans) - 1) for i, (s, e) in enumerate(spans))
        cursor = match.end() if match else len(text)
    return [Chunk(text[start:end], start, end) for start, end in _pack(text, pieces, size, overlap)]


def estimated_chunk_count(length: int, size: int, overlap: int) -> int:
    """The chunks `split_text` makes of `length` characters if every chunk is full and repeats
    exactly `overlap` characters: what the service checks its caps against before splitting. Real
    chunks end at sentences and paragraphs, so the exact count can differ either way."""
    if length == 0:
        return 0
    return max(1, -(-(length - overlap) // (size - overlap)))


def split_sentences(text: str) -> list[str]:
    """The sentences of `text`, whitespace-trimmed, blank ones dropped."""
    return [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]


def _trim(text: str, start: int, end: int) -> tuple[int, int]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def _pieces(text: str, start: int, end: int, level: int, size: int) -> list[tuple[int, int]]:
    """Non-blank spans split at every boundary of `level`, and finer ones while longer than `size`."""
    start, end = _trim(text, start, end)
    if start == end:
        return []
    if level == len(_BOUNDARIES):
        return [(i, min(i + size, end)) for i in range(start, end, size)]
    if level > 1 and end - start <= size:
        return [(start, end)]
    spans: list[tuple[int, int]] = []
    cursor = start
    for match in _BOUNDARIES[level].finditer(text, start, end):
        spans.extend(_pieces(text, cursor, match.start(), level + 1, size))
        cursor = match.end()
    spans.extend(_pieces(text, cursor, end, level + 1, size))
    return spans


def _overlap_tail(text: str, emitted: list[_Piece], overlap: int) -> list[_Piece]:
    """The end of a chunk that the next one repeats: whole sentences that fit in `overlap`, or,
    when the last sentence alone is longer, its trailing words that do."""
    tail = [p for p in emitted if emitted[-1].end - p.start <= overlap]
    if tail or overlap == 0:
        return tail
    last = emitted[-1]
    space = text.find(" ", last.end - overlap, last.end)
    if space == -1:
        return []
    start, end = _trim(text, space, last.end)
    return [_Piece(start, end, last.ends_paragraph)] if start < end else []


def _cut(text: str, current: list[_Piece], carried: int, piece: _Piece, size: int, overlap: int) -> int:
    """How many pieces of the full `current` chunk to emit: through the last paragraph end in its
    second half, if what follows still fits in the next chunk with its overlap; else all of them."""
    for i in range(len(current) - 1, carried, -1):
        if current[i - 1].ends_paragraph and current[i - 1].end - current[0].start >= size // 2:
            tail = _overlap_tail(text, current[:i], overlap)
            next_start = tail[0].start if tail else current[i].start
            if piece.end - next_start <= size:
                return i
    return len(current)


def _pack(text: str, pieces: list[_Piece], size: int, overlap: int) -> list[tuple[int, int]]:
    chunks: list[tuple[int, int]] = []
    current: list[_Piece] = []
    carried = 0  # leading pieces of `current` repeated from the previous chunk

    def too_long(piece: _Piece) -> bool:
        return bool(current) and piece.end - current[0].start > size

    for piece in pieces:
        # A chunk holding only the previous chunk's tail gives up that overlap, not new text.
        while carried == len(current) and too_long(piece):
            current.pop(0)
            carried -= 1
        if too_long(piece):
            cut = _cut(text, current, carried, piece, size, overlap)
            emitted, rest = current[:cut], current[cut:]
            chunks.append((emitted[0].start, emitted[-1].end))
            tail = _overlap_tail(text, emitted, overlap)
            current, carried = tail + rest, len(tail)
            while carried and too_long(piece):
                current.pop(0)
                carried -= 1
            if too_long(piece):
                chunks.append((current[0].start, current[-1].end))
                current, carried = [], 0
        current.append(piece)
    if len(current) > carried:
        chunks.append((current[0].start, current[-1].end))
    return chunks
