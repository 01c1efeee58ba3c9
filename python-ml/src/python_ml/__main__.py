"""`python -m python_ml` (or `python-ml`): serve the app with uvicorn on the configured address."""

from __future__ import annotations

import logging

import uvicorn

from .app import create_app
from .settings import Settings
from .telemetry import configure_trace_export


def main() -> None:
    """Reads the settings from the environment and serves until interrupted."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings()
    configure_trace_export()
    # The access log is ours (telemetry.py): uvicorn's has neither the request id nor the trace id.
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level="info", access_log=False)


if __name__ == "__main__":
    main()
