"""Token counts for chat usage: the embedding model's word pieces, without its 256-piece
truncation. A hosted model's own tokenizer counts differently; these counts are the service's
consistent measure, which is what a budget needs (`docs/python-ml.md`)."""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer


class TokenCounter:
    """Counts and cuts text in word pieces. Thread-safe: encoding holds no mutable state."""

    def __init__(self, model_dir: Path) -> None:
        self._tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self._tokenizer.no_truncation()
        self._tokenizer.no_padding()

    def count(self, text: str) -> int:
        """Word pieces in `text`, no special tokens."""
        return len(self._tokenizer.encode(text, add_special_tokens=False).ids)

    def prefix(self, text: str, pieces: int) -> str:
        """The longest start of `text` that is at most `pieces` word pieces."""
        if pieces <= 0:
            return ""
        offsets = self._tokenizer.encode(text, add_special_tokens=False).offsets
        return text if len(offsets) <= pieces else text[: offsets[pieces - 1][1]]
