"""Retrieval quality on the shipped corpus (10 documents, 26 labelled questions).

Thresholds: measured recall@5 = 1.00 and nDCG@10 = 0.95 with the default 1000/200 chunking (see
docs/python-ml.md). A ranking that ignores the question scores about 0.2 on both. The thresholds
(0.90 and 0.80) leave room for two or three questions to move within their document after a
chunking change, and fail on anything that breaks the model: a wrong pooling, tokenizer or weight.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import pytest
from python_ml.chunking import split_text
from python_ml.embedding import Embedder
from python_ml.evaluation import LabelledQuestion, load_corpus, load_questions, score_retrieval
from python_ml.rag import Rag
from python_ml.settings import Settings
from python_ml.store import Hit, VectorStore

TENANT = "quality"
RECALL_AT_5_MIN = 0.90
NDCG_AT_10_MIN = 0.80


@pytest.fixture(scope="module")
def rag(embedder: Embedder) -> Rag:
    store = VectorStore(Settings(_env_file=None, qdrant_path=":memory:"), embedder.dimensions)
    rag = Rag(embedder, store)
    for document in load_corpus():
        rag.ingest(TENANT, document, split_text(document.text, 1000, 200))
    return rag


def corpus_chunks() -> dict[str, list[str]]:
    return {d.id: [c.text for c in split_text(d.text, 1000, 200)] for d in load_corpus()}


def test_every_question_has_a_relevant_chunk() -> None:
    chunks = corpus_chunks()
    for q in load_questions():
        assert any(q.contains in text for text in chunks[q.document]), q


def test_retrieval_quality_meets_the_threshold(rag: Rag) -> None:
    chunks = corpus_chunks()

    def count(q: LabelledQuestion) -> int:
        return sum(q.contains in text for text in chunks[q.document])

    scores = score_retrieval(load_questions(), lambda question, k: rag.retrieve(TENANT, question, k, None), count)
    print(f"recall@5={scores.recall_at_5:.3f} nDCG@10={scores.ndcg_at_10:.3f} over {scores.questions} questions")
    assert scores.recall_at_5 >= RECALL_AT_5_MIN
    assert scores.ndcg_at_10 >= NDCG_AT_10_MIN

    # The thresholds mean something: the same chunks in an order unrelated to the question fail them.
    every_chunk = rag.retrieve(TENANT, "", 100, None)
    shuffled = random.Random(7)

    def unrelated(_question: str, k: int) -> Sequence[Hit]:
        return shuffled.sample(every_chunk, k)

    baseline = score_retrieval(load_questions(), unrelated, count)
    print(f"random ranking: recall@5={baseline.recall_at_5:.3f} nDCG@10={baseline.ndcg_at_10:.3f}")
    assert baseline.recall_at_5 < RECALL_AT_5_MIN and baseline.ndcg_at_10 < NDCG_AT_10_MIN
