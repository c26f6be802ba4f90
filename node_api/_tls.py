"""The verified client certificate, handed from TLS to the application.

uvicorn verifies client certificates (``ssl_cert_reqs=CERT_REQUIRED``) but
does not pass them to the ASGI application. These protocol classes read the
peer certificate once per connection and add it to every request's scope as
``scope["extensions"]["tls"]["client_cert"]`` (the dict of
``ssl.SSLSocket.getpeercert()``) and ``["client_organization"]`` (its common
name). Both of uvicorn's HTTP implementations are covered.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = [
    "PeerCertH11Protocol",
    "PeerCertHttpToolsProtocol",
    "common_name",
    "protocol_class",
]

_ASGIApp = Any


def common_name(cert: dict[str, Any] | None) -> str | None:
    """The subject's commonName of a ``getpeercert()`` dict, if any."""
    if not cert:
        return None
    for rdn in cert.get("subject", ()):
        for name, value in rdn:
            if name == "commonName":
                return str(value)
    return None


def _with_peer(app: _ASGIApp, cert: dict[str, Any] | None) -> _ASGIApp:
    tls = {"client_cert": cert, "client_organization": common_name(cert)}

    async def asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
        scope.setdefault("extensions", {})["tls"] = tls
        await app(scope, receive, send)

    return asgi


def _peer_cert(transport: asyncio.BaseTransport) -> dict[str, Any] | None:
    ssl_object = transport.get_extra_info("ssl_object")
    if ssl_object is None:
        return None
    cert = ssl_object.getpeercert()
    return dict(cert) if cert else None


class PeerCertH11Protocol(H11Protocol):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.app = _with_peer(self.app, _peer_cert(transport))


class PeerCertHttpToolsProtocol(HttpToolsProtocol):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.app = _with_peer(self.app, _peer_cert(transport))


def protocol_class(implementation: str) -> type[asyncio.Protocol]:
    """The protocol class for ``"httptools"`` (default) or ``"h11"``."""
    if implementation == "h11":
        return PeerCertH11Protocol
    if implementation == "httptools":
        return PeerCertHttpToolsProtocol
    raise ValueError(f"unknown HTTP implementation {implementation!r}")
