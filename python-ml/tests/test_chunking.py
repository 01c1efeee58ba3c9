"""Chunk boundaries, sizes and overlap."""

from __future__ import annotations

import pytest
from python_ml.chunking import split_sentences, split_text
from python_ml.evaluation import load_corpus

SIZES = [(1000, 200), (300, 50), (120, 30), (60, 0)]


@pytest.mark.parametrize(("size", "overlap"), SIZES)
def test_chunks_are_exact_slices_within_size_covering_all_text(size: int, overlap: int) -> None:
    for document in load_corpus():
        text = document.text
        chunks = split_text(text, size, overlap)
        covered = [False] * len(text)
        for chunk in chunks:
            assert chunk.text == text[chunk.start : chunk.end]
            assert 0 < len(chunk.text) <= size
            for i in range(chunk.start, chunk.end):
                covered[i] = True
        lost = [i for i, c in enumerate(text) if not covered[i] and not c.isspace()]
        assert not lost, f"{document.id}: text at {lost[:5]} is in no chunk"


@pytest.mark.parametrize(("size", "overlap"), SIZES[:3])
def test_consecutive_chunks_overlap_up_to_the_limit(size: int, overlap: int) -> None:
    overlaps = []
    for document in load_corpus():
        chunks = split_text(document.text, size, overlap)
        overlaps += [a.end - b.start for a, b in zip(chunks, chunks[1:], strict=False)]
    assert all(o <= overlap for o in overlaps)
    assert sum(o > 0 for o in overlaps) >= 0.8 * len(overlaps), overlaps


def test_chunks_prefer_paragraph_then_sentence_boundaries() -> None:
    first = "First paragraph sentence one. Sentence two is here."
    second = "Second paragraph starts. It goes on for a while longer than the first."
    text = f"{first}\n\n{second}"
    chunks = split_text(text, size=len(first) + 20, overlap=0)
    assert chunks[0].text == first
    assert all(c.text.endswith(".") for c in chunks)


def test_a_word_longer_than_a_chunk_is_cut() -> None:
    chunks = split_text("x" * 250, size=100, overlap=0)
    assert [len(c.text) for c in chunks] == [100, 100, 50]


def test_blank_text_has_no_chunks() -> None:
    assert split_text("", 100, 10) == []
    assert split_text(" \n\n \t", 100, 10) == []


@pytest.mark.parametrize(("size", "overlap"), [(0, 0), (100, 100), (100, -1)])
def test_bad_sizes_are_refused(size: int, overlap: int) -> None:
    with pytest.raises(ValueError):
        split_text("text", size, overlap)


def test_sentences_keep_closing_quotes() -> None:
    assert split_sentences('He said "stop." Then he left! Did he? (Yes.) End') == [
        'He said "stop."',
        "Then he left!",
        "Did he?",
        "(Yes.)",
        "End",
    ]
