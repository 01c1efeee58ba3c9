"""The numpy encoder against sentence-transformers' own output for the same model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from python_ml.embedding import Embedder

DATA = Path(__file__).parent / "data"


def test_matches_reference_model(embedder: Embedder) -> None:
    sentences = json.loads((DATA / "reference_sentences.json").read_text())
    reference = np.array(json.loads((DATA / "reference_embeddings.json").read_text())["embeddings"])
    ours = embedder.embed(sentences).vectors
    cosine = (ours * reference).sum(axis=1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(reference, axis=1))
    worst = int(cosine.argmin())
    assert cosine.min() >= 0.99, f"{sentences[worst]!r}: cosine {cosine[worst]:.5f}"


def test_vectors_are_unit_length_and_384_wide(embedder: Embedder) -> None:
    vectors = embedder.embed(["one", "two words", ""]).vectors
    assert vectors.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_padding_does_not_change_a_vector(embedder: Embedder) -> None:
    alone = embedder.embed(["short"]).vectors[0]
    padded = embedder.embed(["short", "a much longer sentence that forces the short one to be padded " * 3]).vectors[0]
    np.testing.assert_allclose(alone, padded, atol=1e-5)


def test_order_is_kept_across_length_sorted_batches() -> None:
    from python_ml.embedding import bundled_model_dir

    small_batches = Embedder(bundled_model_dir(), batch_size=2)
    texts = ["a b c d e f g", "x", "the cat sat on the mat", "y z", "hello"]
    together = small_batches.embed(texts).vectors
    for i, text in enumerate(texts):
        np.testing.assert_allclose(together[i], small_batches.embed([text]).vectors[0], atol=1e-5)


def test_long_inputs_are_truncated_to_the_model_limit(embedder: Embedder) -> None:
    result = embedder.embed(["word " * 1000])
    assert result.token_counts == [256]
    assert embedder.count_tokens("hello world") == 4  # [CLS] hello world [SEP]


def test_similar_meanings_are_closer_than_unrelated_ones(embedder: Embedder) -> None:
    cat, feline, tcp = embedder.embed(
        ["The cat sat on the mat.", "A feline rested upon the rug.", "TCP retransmits lost segments."]
    ).vectors
    assert float(cat @ feline) > float(cat @ tcp) + 0.2
