"""Model downloads: one HTTPS request read straight into reusable buffers.

A model can weigh gigabytes, and a node fetches its parents' models before
every task, so this path is kept cheap. httpx hands the body over in 64 KiB
``bytes`` objects that pass through h11's receive buffer (each byte copied
several times, one Python call per piece); this module instead sends the
request with :mod:`http.client` over the same mutual-TLS context and calls
``readinto`` on preallocated 1 MiB buffers, so the loop over TLS records runs
in C. A second thread hashes (SHA-256) and writes each filled buffer while the
next one is read, so receiving overlaps with checking and writing.

The model lands in a temporary file next to its destination and is renamed
into place only once its SHA-256 matches the node's ``X-Airfed-Checksum``.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import queue
import ssl
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

from airfed.sdk.errors import NodeRequestError

__all__ = ["CHECKSUM_HEADER", "fetch_model"]

CHECKSUM_HEADER = "X-Airfed-Checksum"
_BUFFER = 1024 * 1024
# Two buffers in flight let one be hashed and written while the next is read;
# a third absorbs a slow disk write without stalling the socket.
_BUFFERS = 3
_MAX_PROBLEM = 64 * 1024


class _Sink:
    """Hashes and writes buffers in a thread of its own, then commits."""

    def __init__(self, dest: Path) -> None:
        self.dest = dest
        fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
        self.tmp = Path(name)
        self._file = os.fdopen(fd, "wb", buffering=0)
        self._digest = hashlib.sha256()
        self.free: queue.Queue[bytearray] = queue.Queue()
        for _ in range(_BUFFERS):
            self.free.put(bytearray(_BUFFER))
        self._filled: queue.Queue[tuple[bytearray, int] | None] = queue.Queue()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        while (item := self._filled.get()) is not None:
            buffer, count = item
            if self.error is None:
                try:
                    view = memoryview(buffer)[:count]
                    self._digest.update(view)
                    self._file.write(view)
                except BaseException as exc:  # reported by commit()
                    self.error = exc
            self.free.put(buffer)

    def put(self, buffer: bytearray, count: int) -> None:
        self._filled.put((buffer, count))

    def _finish(self) -> None:
        if self._thread.is_alive():
            self._filled.put(None)
            self._thread.join()
        self._file.close()

    def commit(self, key: str, expected: str | None) -> str:
        self._finish()
        if self.error is not None:
            self.tmp.unlink(missing_ok=True)
            raise NodeRequestError(
                0, f"cannot write model {key} to {self.dest}: {self.error}"
            ) from self.error
        checksum = self._digest.hexdigest()
        if expected is not None and expected != checksum:
            self.tmp.unlink(missing_ok=True)
            raise NodeRequestError(
                502, f"model {key} arrived corrupted (checksum mismatch); retry"
            )
        self.tmp.replace(self.dest)
        return checksum

    def discard(self) -> None:
        self._finish()
        self.tmp.unlink(missing_ok=True)


def _problem(response: http.client.HTTPResponse) -> NodeRequestError:
    body = response.read(_MAX_PROBLEM)
    try:
        detail = json.loads(body)["detail"]
    except (ValueError, KeyError, TypeError):
        detail = body.decode(errors="replace")[:500] or response.reason
    return NodeRequestError(response.status, str(detail))


def _receive(response: http.client.HTTPResponse, sink: _Sink, key: str) -> None:
    expected = response.length
    received = 0
    while True:
        buffer = sink.free.get()
        count = response.readinto(buffer)
        if count == 0:
            sink.free.put(buffer)
            break
        received += count
        sink.put(buffer, count)
    if expected is not None and received != expected:
        raise NodeRequestError(
            502, f"model {key} arrived truncated ({received} bytes); retry"
        )


def fetch_model(
    base_url: str,
    context: ssl.SSLContext,
    headers: Mapping[str, str],
    key: str,
    dest: Path,
    *,
    timeout: float,
) -> str:
    """GET ``/models/{key}`` from ``base_url`` into ``dest``; return its SHA-256."""
    url = urlsplit(base_url)
    if url.scheme != "https" or url.hostname is None:
        raise NodeRequestError(0, f"node URL {base_url} must be https://host:port")
    connection = http.client.HTTPSConnection(
        url.hostname, url.port or 443, context=context, timeout=timeout
    )
    path = f"{url.path.rstrip('/')}/models/{key}"
    # The folder exists whatever the answer, as it would for any download.
    Path(dest).parent.mkdir(parents=True, exist_ok=True)
    sink: _Sink | None = None
    try:
        connection.request(
            "GET", path, headers={"Accept-Encoding": "identity", **headers}
        )
        response = connection.getresponse()
        if response.status >= 400:
            raise _problem(response)
        sink = _Sink(Path(dest))
        _receive(response, sink, key)
        return sink.commit(key, response.getheader(CHECKSUM_HEADER))
    except (OSError, http.client.HTTPException) as exc:
        if sink is not None:
            sink.discard()
        raise NodeRequestError(
            0, f"cannot reach the node at {base_url}: {exc}"
        ) from exc
    except BaseException:
        if sink is not None:
            sink.discard()
        raise
    finally:
        connection.close()
