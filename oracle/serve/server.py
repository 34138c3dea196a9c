"""Running the API under uvicorn: the model loads in the background once the server starts (so /health answers while
it loads), and SIGTERM/SIGINT drain in-flight requests (up to `shutdown_timeout` seconds) before the engine stops."""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Mapping

import uvicorn

from oracle.serve import API_KEY_ENV
from oracle.serve.app import create_app
from oracle.serve.loading import ServeOptions, check_servable, load_served_model

log = logging.getLogger("oracle.serve")


def api_key_from_env(environ: Mapping[str, str]) -> str | None:
    """The API key the server requires, or None when the variable is unset. Set but blank is an error (it would
    otherwise read as 'no key' and leave the server open)."""
    value = environ.get(API_KEY_ENV)
    if value is None:
        return None
    key = value.strip()
    if not key:
        raise ValueError(f"{API_KEY_ENV} is set but empty; set it to the key clients must send, or unset it")
    if not (key.isascii() and key.isprintable()) or " " in key:
        raise ValueError(  # a header value is ASCII: such a key could never be sent (the value is not shown)
            f"{API_KEY_ENV} holds characters an Authorization header cannot carry (non-ASCII, control characters "
            "or spaces); use printable ASCII, e.g. `openssl rand -hex 32`"
        )
    return key


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def serve(
    options: ServeOptions, *, host: str, port: int, shutdown_timeout: int = 30, api_key: str | None = None
) -> str | None:
    """Check, bind, load and serve until told to stop. Returns why loading failed, or None after a clean stop.
    ServingRefusedError (provenance) and ServeLoadError (files) are raised before anything listens. With `api_key`,
    the API routes require `Authorization: Bearer <api_key>` (app.APIKeyMiddleware)."""
    servable = check_servable(options)
    failures: list[str] = []
    server: uvicorn.Server | None = None

    def loading_failed(message: str) -> None:
        failures.append(message)
        if server is not None:
            server.should_exit = True

    app = create_app(lambda: load_served_model(options, servable), on_load_failure=loading_failed, api_key=api_key)
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
    if api_key is None and not _loopback(host):
        log.warning(  # the operator's choice (a private network, a proxy that authenticates); said, not refused
            "listening on %s without an API key: anyone who reaches it can generate (set %s)", host, API_KEY_ENV
        )
    elif api_key is not None:
        log.info("the API routes require the API key from %s (not /health, /ready, /metrics)", API_KEY_ENV)
    server.run()
    return failures[0] if failures else None
