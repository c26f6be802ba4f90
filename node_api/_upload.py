"""Streaming multipart uploads: file parts go straight into the encrypted store.

A request body is read chunk by chunk and fed to python-multipart's parser in
a worker thread. Text fields are kept in memory up to a small limit; file
parts are encrypted as they arrive (:class:`~airfed.node_api._crypto.ObjectWriter`),
so an upload never sits in memory or in plaintext on disk. The whole body is
counted against the node's upload limit. On any error every object written
so far is discarded; on success the objects are committed and returned, and
the caller owns them (it deletes them if registration fails afterwards).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio.to_thread
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from airfed.node_api._crypto import ObjectStore, ObjectWriter, StoredObject
from airfed.node_api.errors import BadRequest, PayloadTooLarge

__all__ = ["Upload", "receive_multipart"]

_FEED_BYTES = 1024 * 1024
_MAX_FIELD_BYTES = 1024 * 1024
_MAX_PARTS = 16


@dataclass
class Upload:
    """The text fields and the committed file objects of one request."""

    fields: dict[str, str] = field(default_factory=dict)
    files: dict[str, StoredObject] = field(default_factory=dict)


class _Sink:
    """Receives parser callbacks; routes part data to a field or a writer."""

    def __init__(self, objects: ObjectStore, file_fields: frozenset[str]) -> None:
        self.objects = objects
        self.file_fields = file_fields
        self.fields: dict[str, bytearray] = {}
        self.writers: dict[str, ObjectWriter] = {}
        self._header_field = bytearray()
        self._header_value = bytearray()
        self._headers: dict[bytes, bytes] = {}
        self._target: bytearray | ObjectWriter | None = None
        self._parts = 0

    def callbacks(self) -> dict[str, Callable[..., None]]:
        return {
            "on_part_begin": self._part_begin,
            "on_part_data": self._part_data,
            "on_header_field": self._header_field_data,
            "on_header_value": self._header_value_data,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
        }

    def _part_begin(self) -> None:
        self._parts += 1
        if self._parts > _MAX_PARTS:
            raise BadRequest(f"the upload has more than {_MAX_PARTS} parts")
        self._headers = {}
        self._target = None

    def _header_field_data(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def _header_value_data(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        self._headers[bytes(self._header_field).lower()] = bytes(self._header_value)
        self._header_field.clear()
        self._header_value.clear()

    def _headers_finished(self) -> None:
        disposition = self._headers.get(b"content-disposition", b"")
        _, options = parse_options_header(disposition)
        name = options.get(b"name", b"").decode("utf-8", "replace")
        if not name:
            raise BadRequest("a multipart part has no name")
        if name in self.fields or name in self.writers:
            raise BadRequest(f"the multipart field {name!r} appears twice")
        if b"filename" in options:
            if name not in self.file_fields:
                raise BadRequest(
                    f"unexpected file field {name!r}; expected "
                    f"{', '.join(sorted(self.file_fields))}"
                )
            writer = self.objects.writer()
            self.writers[name] = writer
            self._target = writer
        else:
            buffer = bytearray()
            self.fields[name] = buffer
            self._target = buffer

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        target = self._target
        if isinstance(target, bytearray):
            if len(target) + end - start > _MAX_FIELD_BYTES:
                raise BadRequest(
                    f"a text field is larger than {_MAX_FIELD_BYTES} bytes"
                )
            target += data[start:end]
        elif target is not None:
            target.write(memoryview(data)[start:end])

    def abort(self) -> None:
        for writer in self.writers.values():
            writer.abort()

    def commit(self) -> Upload:
        upload = Upload()
        try:
            for name, buffer in self.fields.items():
                upload.fields[name] = buffer.decode("utf-8")
            for name, writer in self.writers.items():
                upload.files[name] = writer.commit()
        except UnicodeDecodeError as exc:
            raise BadRequest("text fields must be UTF-8") from exc
        except BaseException:
            for stored in upload.files.values():
                self.objects.delete(stored.object_id)
            raise
        return upload


def _boundary(request: Request) -> bytes:
    content_type, options = parse_options_header(request.headers.get("content-type"))
    if content_type != b"multipart/form-data" or b"boundary" not in options:
        raise BadRequest("the request must be multipart/form-data")
    return bytes(options[b"boundary"])


def _check_declared_length(request: Request, max_bytes: int) -> None:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise PayloadTooLarge(
            f"the upload is {declared} bytes; this node accepts at most {max_bytes}"
        )


async def receive_multipart(
    request: Request,
    objects: ObjectStore,
    *,
    file_fields: frozenset[str],
    max_bytes: int,
) -> Upload:
    """Read a multipart body; file parts named in ``file_fields`` are stored."""
    _check_declared_length(request, max_bytes)
    sink = _Sink(objects, file_fields)
    parser = MultipartParser(_boundary(request), sink.callbacks())  # type: ignore[arg-type]
    try:
        await _feed(request, parser, max_bytes)
        return await anyio.to_thread.run_sync(sink.commit)
    except MultipartParseError as exc:
        raise BadRequest(f"the multipart body is malformed: {exc}") from exc
    finally:
        sink.abort()


async def _feed(request: Request, parser: Any, max_bytes: int) -> None:
    received = 0
    pending = bytearray()
    async for chunk in request.stream():
        received += len(chunk)
        if received > max_bytes:
            raise PayloadTooLarge(f"the upload exceeds this node's {max_bytes} bytes")
        pending += chunk
        if len(pending) >= _FEED_BYTES:
            await anyio.to_thread.run_sync(parser.write, bytes(pending))
            pending.clear()
    if pending:
        await anyio.to_thread.run_sync(parser.write, bytes(pending))
    await anyio.to_thread.run_sync(parser.finalize)
