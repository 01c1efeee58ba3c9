"""A real browser for pages the services serve: headless Chromium (the Debian package `make`
installs), which runs the page as a user's browser would and prints the resulting DOM."""

from __future__ import annotations

import shutil
import subprocess


def rendered_dom(url: str, timeout: float = 60) -> str:
    """The DOM of `url` after Chromium has loaded and rendered it."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise RuntimeError("chromium is not installed; `make deps-apt` installs it")
    # --no-sandbox: the test may run as root, where Chromium's sandbox refuses to start.
    result = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--dump-dom", url],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=True,
    )
    return result.stdout
