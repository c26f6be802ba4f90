"""Serve a node: migrate its database, then run uvicorn with mutual TLS.

The server requires a client certificate signed by the network CA
(``ssl.CERT_REQUIRED``): a client without one cannot complete the handshake.
The verified certificate reaches the app through :mod:`._tls`. When the
server begins to stop, requests that wait for a task to end are answered at
once, so they do not hold the graceful shutdown open.
"""

from __future__ import annotations

import logging
import socket
import ssl
from collections.abc import Callable
from pathlib import Path

import uvicorn
from fastapi import FastAPI

from airfed.node_api._app import create_app
from airfed.node_api._context import NodeContext
from airfed.node_api._tls import protocol_class
from airfed.sdk.network import load_node_config

__all__ = ["serve", "uvicorn_config"]

logger = logging.getLogger(__name__)


def uvicorn_config(context: NodeContext) -> uvicorn.Config:
    """uvicorn's settings for the node: its address, TLS files and protocol."""
    config = context.config
    return uvicorn.Config(
        create_app(context),
        host=str(config.host),
        port=int(config.port),
        ssl_keyfile=str(config.key_file),
        ssl_certfile=str(config.cert_file),
        ssl_ca_certs=str(config.ca_file),
        ssl_cert_reqs=ssl.CERT_REQUIRED,
        http=protocol_class(context.options.http),
        lifespan="on",
        access_log=False,
        log_level="info",
        timeout_graceful_shutdown=10,
        h11_max_incomplete_event_size=64 * 1024,
    )


class _NodeServer(uvicorn.Server):
    """uvicorn's server; ``on_stop`` runs before open requests are awaited."""

    def __init__(self, config: uvicorn.Config, on_stop: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_stop = on_stop

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self._on_stop()
        await super().shutdown(sockets)


def serve(config_path: Path) -> None:
    """Run the node of ``config_path`` until it is interrupted."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    logging.getLogger("alembic").setLevel(logging.WARNING)
    config = load_node_config(Path(config_path))
    context = NodeContext.open(config)
    logger.info(
        "node starting organization=%s url=%s database=%s",
        context.organization,
        config.url,
        context.db.engine.dialect.name,
    )
    server_config = uvicorn_config(context)
    app = server_config.app
    assert isinstance(app, FastAPI)
    _NodeServer(server_config, app.state.tasks.endings.close).run()
