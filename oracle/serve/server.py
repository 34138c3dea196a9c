"""Running the API under uvicorn: the model loads in the background once the server starts (so /health answers while
it loads), and SIGTERM/SIGINT drain in-flight requests (up to `shutdown_timeout` seconds) before the engine stops."""

from __future__ import annotations

import logging

import uvicorn

from oracle.serve.app import create_app
from oracle.serve.loading import ServeOptions, check_servable, load_served_model

log = logging.getLogger("oracle.serve")


def serve(options: ServeOptions, *, host: str, port: int, shutdown_timeout: int = 30) -> str | None:
    """Check, bind, load and serve until told to stop. Returns why loading failed, or None after a clean stop.
    ServingRefusedError (provenance) and ServeLoadError (files) are raised before anything listens."""
    servable = check_servable(options)
    failures: list[str] = []
    server: uvicorn.Server | None = None

    def loading_failed(message: str) -> None:
        failures.append(message)
        if server is not None:
            server.should_exit = True

    app = create_app(lambda: load_served_model(options, servable), on_load_failure=loading_failed)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        lifespan="on",
        timeout_graceful_shutdown=shutdown_timeout,
        log_level="info",
        access_log=False,
    )
    server = uvicorn.Server(config)
    log.info("provenance of %s verified; loading it once the server is up", servable.checkpoint)
    server.run()
    return failures[0] if failures else None
