"""The orchestrator's ledger relay: one channel to the log for every task process.

Each Airflow task process writes the ``task_status`` entries of its task
run. Opening a mutual-TLS gRPC channel to the log from every one of them
costs about a tenth of a CPU-second per task (importing gRPC and the
entries' code, the TLS handshake), which two cores pay for on every
dependency level of a plan. When the orchestrator runs on one machine
(``airfed orchestrator start``, the quickstart), :class:`LedgerRelay` runs in
the process that started Airflow: it listens on a Unix socket in a folder
only its user can open (``[airfed] ledger_relay``), and task processes hand
it their statements. The relay signs them with the orchestrator's identity
key and appends them, batched, over its one channel. A task process that
finds no relay writes to the log itself, as before.

The protocol is one JSON object per line. A request is
``{"statements": [{"kind": ..., "key": ..., "body": {...}}, ...]}``; the
answer is ``{"accepted": N, "refused": [{"index": I, "error": "..."}]}``
once the relay has queued the accepted ones, or ``{"error": "..."}`` for a
request it could not read. The relay signs only the kinds the orchestrator
writes (``task_status``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import socketserver
import tempfile
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from airfed.sdk.errors import AirfedError

__all__ = [
    "RELAY_KINDS",
    "LedgerRelay",
    "RelayClient",
    "RelayError",
    "RelayUnavailable",
]

logger = logging.getLogger(__name__)

RELAY_KINDS = frozenset({"task_status"})
_MAX_LINE = 8 * 1024 * 1024
_MAX_KEY = 256
_TOO_LONG = f"a request must be one line of at most {_MAX_LINE} bytes"
_SOCKET_NAME = "ledger-relay.sock"
# A Unix socket's path holds at most 107 bytes on Linux.
_MAX_SOCKET_PATH = 100


class RelayError(AirfedError):  # type: ignore[misc,unused-ignore]
    """The relay did not take a request it was sent."""


class RelayUnavailable(RelayError):
    """The relay could not be reached, or the connection to it broke."""


def _refusal(statement: Any) -> str | None:
    """Why the relay will not sign ``statement``, or None when it will."""
    from airfed.ledger.entries import check_body
    from airfed.ledger.errors import EntryError

    if not isinstance(statement, dict):
        return "a statement must be a JSON object with kind, key and body"
    kind, key, body = (statement.get(name) for name in ("kind", "key", "body"))
    if kind not in RELAY_KINDS:
        return f"kind {kind!r} is not one the relay signs ({', '.join(RELAY_KINDS)})"
    if not isinstance(key, str) or not key or len(key) > _MAX_KEY:
        return f"key must be a string of 1 to {_MAX_KEY} characters"
    try:
        check_body(kind, body)
    except EntryError as exc:
        return str(exc)
    return None


class _Handler(socketserver.StreamRequestHandler):
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.relay._opened(self.connection)

    def finish(self) -> None:
        self.server.relay._closed(self.connection)
        super().finish()

    def handle(self) -> None:
        while True:
            line = self.rfile.readline(_MAX_LINE + 1)
            if not line:
                return
            if len(line) > _MAX_LINE or not line.endswith(b"\n"):
                self._answer({"error": _TOO_LONG})
                return
            answer = self.server.relay._take(line)
            if answer is None:
                return  # stopping: the sender goes on without the relay
            self._answer(answer)

    def _answer(self, answer: Mapping[str, Any]) -> None:
        self.wfile.write(json.dumps(answer).encode() + b"\n")
        self.wfile.flush()


class _Server(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True
    relay: LedgerRelay

    def handle_error(self, request: Any, client_address: Any) -> None:
        logger.debug("ledger relay connection failed", exc_info=True)


class LedgerRelay:
    """Takes statements on a Unix socket and appends them as ``profile``'s author.

    ``profile`` is the orchestrator's folder (``<network>/orchestrator``);
    ``socket_path`` is where the socket goes (its folder must exist). The
    socket is readable and writable by this user only from the moment it
    appears; a stale socket there is replaced, a live relay's is not.
    :meth:`stop` closes the socket, then flushes what the relay still holds
    for up to ``flush_timeout`` seconds.
    """

    def __init__(
        self,
        profile: Path,
        socket_path: Path,
        *,
        address: str | None = None,
        flush_timeout: float = 10.0,
    ) -> None:
        from airfed.sdk._ledger import EntrySender

        self.socket_path = Path(socket_path).absolute()
        self._own_folder: Path | None = None
        self._flush_timeout = flush_timeout
        self._lock = threading.Lock()
        self._stopping = False
        self._connections: set[socket.socket] = set()
        self._server = _bind(self.socket_path)
        self._server.relay = self
        self._sender = EntrySender(profile, address=address, flush_at_exit=False)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.2},
            name="ledger-relay",
            daemon=True,
        )
        self._thread.start()
        logger.info("ledger relay listening socket=%s", self.socket_path)

    @classmethod
    def in_folder(cls, profile: Path, folder: Path, **options: Any) -> LedgerRelay:
        """A relay whose socket is in ``folder/run`` (made with mode 0700).

        When that path is too long for a Unix socket, the socket goes into
        a private temporary folder instead, removed by :meth:`stop`.
        """
        own, path = _socket_path(Path(folder))
        try:
            relay = cls(profile, path, **options)
        except BaseException:
            if own is not None:
                own.rmdir()
            raise
        relay._own_folder = own
        return relay

    @property
    def sent(self) -> int:
        """How many entries the log has accepted through this relay."""
        return self._sender.sent

    def _opened(self, connection: socket.socket) -> None:
        with self._lock:
            self._connections.add(connection)

    def _closed(self, connection: socket.socket) -> None:
        with self._lock:
            self._connections.discard(connection)

    def _take(self, line: bytes) -> dict[str, Any] | None:
        """The answer to one request; None once the relay is stopping."""
        try:
            request = json.loads(line)
        except ValueError as exc:
            return {"error": f"the request is not JSON: {exc}"}
        statements = request.get("statements") if isinstance(request, dict) else None
        if not isinstance(statements, list):
            return {"error": "the request must be an object with a list 'statements'"}
        refused = []
        reasons = [_refusal(statement) for statement in statements]
        with self._lock:
            if self._stopping:
                return None
            for statement, reason in zip(statements, reasons, strict=True):
                if reason is None:
                    self._sender.record(
                        statement["kind"], statement["key"], statement["body"]
                    )
        for index, reason in enumerate(reasons):
            if reason is not None:
                refused.append({"index": index, "error": reason})
                logger.warning("ledger relay refused statement error=%s", reason)
        return {"accepted": len(statements) - len(refused), "refused": refused}

    def stop(self) -> None:
        """Stop listening, then send what is still queued.

        Connections still open are closed without an answer to what comes
        on them, so that their senders send it over channels of their own.
        """
        with self._lock:
            self._stopping = True
            for connection in self._connections:
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5.0)
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        if self._own_folder is not None:
            with contextlib.suppress(OSError):
                self._own_folder.rmdir()
        self._sender.close(self._flush_timeout)

    def __enter__(self) -> LedgerRelay:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _socket_path(folder: Path) -> tuple[Path | None, Path]:
    """Where the socket goes, and the temporary folder made for it (if any)."""
    run = folder.resolve() / "run"
    if len(str(run / _SOCKET_NAME)) <= _MAX_SOCKET_PATH:
        run.mkdir(mode=0o700, parents=True, exist_ok=True)
        run.chmod(0o700)
        return None, run / _SOCKET_NAME
    own = Path(tempfile.mkdtemp(prefix="airfed-relay-"))
    return own, own / _SOCKET_NAME


def _bind(path: Path) -> _Server:
    """A server listening at ``path``, never reachable by another user.

    The socket is bound in a private folder beside ``path``, restricted to
    this user, and only then renamed into place.
    """
    if len(str(path)) > _MAX_SOCKET_PATH:
        raise RelayError(
            f"{path} is too long for a Unix socket (at most {_MAX_SOCKET_PATH} "
            "bytes); choose a shorter path"
        )
    if not path.parent.is_dir():
        raise RelayError(f"{path.parent} is not a folder; create it first")
    if path.exists() or path.is_symlink():
        try:
            RelayClient(path, timeout=2.0).close()
        except RelayUnavailable:
            pass  # stale: nobody answers there
        else:
            raise RelayError(f"a ledger relay already listens at {path}")
    staging = Path(tempfile.mkdtemp(prefix=".r", dir=path.parent))
    try:
        server = _Server(str(staging / "s"), _Handler, bind_and_activate=False)
        try:
            server.server_bind()
            (staging / "s").chmod(0o600)
            server.server_activate()
            (staging / "s").replace(path)
        except BaseException:
            server.server_close()
            raise
    except OSError as exc:
        raise RelayError(f"cannot listen at {path}: {exc}") from exc
    finally:
        with contextlib.suppress(OSError):
            (staging / "s").unlink()
        with contextlib.suppress(OSError):
            staging.rmdir()
    return server


class RelayClient:
    """One connection to a relay; :meth:`send` returns what the relay refused."""

    def __init__(self, path: Path, *, timeout: float = 10.0) -> None:
        self.path = Path(path)
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._socket.settimeout(timeout)
        try:
            self._socket.connect(os.fspath(self.path))
        except OSError as exc:
            self._socket.close()
            raise RelayUnavailable(f"no ledger relay at {self.path}: {exc}") from exc
        self._reader = self._socket.makefile("rb")

    def send(self, statements: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Hand ``statements`` to the relay; returns the refused ones' reasons."""
        request = json.dumps({"statements": list(statements)}).encode() + b"\n"
        try:
            self._socket.sendall(request)
            line = self._reader.readline(_MAX_LINE)
        except OSError as exc:
            raise RelayUnavailable(
                f"the connection to the ledger relay at {self.path} failed: {exc}"
            ) from exc
        if not line:
            raise RelayUnavailable(
                f"the ledger relay at {self.path} closed the connection"
            )
        try:
            answer = json.loads(line)
        except ValueError as exc:
            raise RelayError(
                f"the ledger relay at {self.path} answered something that is not JSON"
            ) from exc
        if (
            not isinstance(answer, dict)
            or "error" in answer
            or "accepted" not in answer
        ):
            raise RelayError(f"the ledger relay at {self.path} answered {answer!r}")
        refused: list[dict[str, Any]] = list(answer.get("refused") or [])
        return refused

    def close(self) -> None:
        self._reader.close()
        self._socket.close()

    def __enter__(self) -> RelayClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
