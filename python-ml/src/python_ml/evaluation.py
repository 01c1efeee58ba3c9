"""Retrieval quality on the labelled corpus in `python-ml/corpus/`: recall@k and nDCG@k.

A question's relevant chunks are the chunks of its document that contain its `contains` phrase, so
the labels hold whatever the chunk size. Used by the tests (which fail below a threshold) and by the
report script.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .models import Document
from .store import Hit

CORPUS_DIR = Path(__file__).resolve().parents[2] / "corpus"


@dataclass(frozen=True)
class LabelledQuestion:
    """A question and how to recognise the chunks that answer it."""

    question: str
    document: str
    contains: str

    def is_relevant(self, document_id: str, text: str) -> bool:
        """Whether a chunk answers this question."""
        return document_id == self.document and self.contains in text


@dataclass(frozen=True)
class RetrievalScores:
    """Mean recall@k and nDCG@k over the questions."""

    recall_at_5: float
    ndcg_at_10: float
    questions: int


def load_corpus(directory: Path = CORPUS_DIR) -> list[Document]:
    """The corpus documents: one Markdown file each, metadata from `metadata.json` plus the title."""
    metadata = json.loads((directory / "metadata.json").read_text())
    documents = []
    for path in sorted(directory.glob("*.md")):
        text = path.read_text()
        title = text.splitlines()[0].lstrip("# ").strip()
        documents.append(Document(id=path.stem, text=text, metadata={"title": title, **metadata[path.stem]}))
    return documents


def load_questions(directory: Path = CORPUS_DIR) -> list[LabelledQuestion]:
    """The labelled questions of the corpus."""
    return [LabelledQuestion(**q) for q in json.loads((directory / "questions.json").read_text())]


def recall_at(k: int, ranked: Sequence[bool], total_relevant: int) -> float:
    """Share of the relevant chunks found in the first `k` results."""
    return sum(ranked[:k]) / total_relevant if total_relevant else 0.0


def ndcg_at(k: int, ranked: Sequence[bool], total_relevant: int) -> float:
    """Binary-relevance nDCG: hits near the top count more; 1.0 is a perfect ranking."""
    dcg = sum(1.0 / math.log2(rank + 2) for rank, hit in enumerate(ranked[:k]) if hit)
    ideal = sum(1.0 / math.log2(rank + 2) for rank in range(min(k, total_relevant)))
    return dcg / ideal if ideal else 0.0


def score_retrieval(
    questions: Sequence[LabelledQuestion],
    retrieve: Callable[[str, int], Sequence[Hit]],
    relevant_counts: Callable[[LabelledQuestion], int],
) -> RetrievalScores:
    """Runs every question through `retrieve(question, 10)` and averages the metrics."""
    recall = ndcg = 0.0
    for q in questions:
        hits = retrieve(q.question, 10)
        ranked = [q.is_relevant(h.chunk.document_id, h.chunk.text) for h in hits]
        total = relevant_counts(q)
        recall += recall_at(5, ranked, total)
        ndcg += ndcg_at(10, ranked, total)
    n = len(questions)
    return RetrievalScores(recall_at_5=recall / n, ndcg_at_10=ndcg / n, questions=n)
