"""Encryption at rest: AES-256-GCM envelope encryption, streamed in chunks.

Every stored object (an opener, a data sample, a function archive, a model)
gets its own random 256-bit data key. The data key is wrapped by the node's
master key through a :class:`KeyProvider` (a key file today; a KMS can take
its place) and the wrapped key travels in the object's header.

An object on disk::

    MAGIC (8 bytes) | header length (4 bytes, big-endian) | header (JSON)
    chunk 0 | chunk 1 | ... | chunk n-1        each: ciphertext + 16-byte tag

The plaintext is cut into chunks of ``chunk_size`` bytes; the last chunk holds
the rest (0 to ``chunk_size`` bytes). Chunk i is sealed with the nonce
``i (11 bytes, big-endian) | final flag (1 byte)`` and the header as
associated data, the STREAM construction (Hoang, Reyhanitabar, Rogaway and
Vizár, 2015): reordering, truncating or extending the chunks, or editing the
header, fails authentication. The SHA-256 of the plaintext is the object's
checksum.

Writes are atomic: bytes go to a temporary file in the store, which is
fsynced and renamed into place only on commit; an aborted write leaves
nothing behind. Memory stays bounded by a few chunks whatever the size.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import secrets
import struct
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from airfed.node_api.errors import DecryptionFailed, NodeError, NotFound

__all__ = [
    "CHUNK_SIZE",
    "FileKeyProvider",
    "KeyProvider",
    "ObjectStore",
    "ObjectWriter",
    "StoredObject",
]

CHUNK_SIZE = 1024 * 1024
_MAGIC = b"AFENC\x00\x00\x01"
_TAG = 16
_KEY_WRAP_AAD = b"airfed data key v1"
_MAX_HEADER = 64 * 1024


class KeyProvider(Protocol):
    """Wraps and unwraps data keys with a master key the provider guards."""

    @property
    def key_id(self) -> str:
        """Identifies the master key (not secret); stored in each header."""
        ...

    def wrap(self, data_key: bytes) -> bytes: ...

    def unwrap(self, wrapped: bytes) -> bytes: ...


class FileKeyProvider:
    """A 32-byte master key read from a file (mode 0600)."""

    def __init__(self, path: Path) -> None:
        key = Path(path).read_bytes()
        if len(key) != 32:
            raise NodeError(f"master key {path} must hold exactly 32 bytes")
        self._aead = AESGCM(key)
        self._key_id = hashlib.sha256(b"airfed key id" + key).hexdigest()[:16]

    @property
    def key_id(self) -> str:
        return self._key_id

    def wrap(self, data_key: bytes) -> bytes:
        nonce = secrets.token_bytes(12)
        return nonce + self._aead.encrypt(nonce, data_key, _KEY_WRAP_AAD)

    def unwrap(self, wrapped: bytes) -> bytes:
        try:
            return self._aead.decrypt(wrapped[:12], wrapped[12:], _KEY_WRAP_AAD)
        except InvalidTag as exc:
            raise DecryptionFailed("a data key could not be unwrapped") from exc


@dataclass(frozen=True)
class StoredObject:
    """An object once committed: its id, plaintext size and SHA-256."""

    object_id: str
    size: int
    checksum: str


def _nonce(index: int, final: bool) -> bytes:
    return index.to_bytes(11, "big") + (b"\x01" if final else b"\x00")


def _header_bytes(keys: KeyProvider, data_key: bytes, chunk_size: int) -> bytes:
    header = {
        "v": 1,
        "key_id": keys.key_id,
        "wrapped_key": base64.b64encode(keys.wrap(data_key)).decode(),
        "chunk_size": chunk_size,
    }
    return json.dumps(header, sort_keys=True).encode()


class ObjectWriter:
    """Encrypts what is written to it; ``commit`` makes the object visible.

    Use it as a context manager: leaving the block without ``commit`` (an
    exception, a refused upload) removes the temporary file.
    """

    def __init__(self, store: ObjectStore, chunk_size: int) -> None:
        self._store = store
        self._chunk_size = chunk_size
        self._data_key = AESGCM.generate_key(bit_length=256)
        self._digest = hashlib.sha256()
        self._pending = bytearray(chunk_size)
        self._filled = 0
        self._sealed = bytearray(chunk_size + _TAG)
        self._index = 0
        self._size = 0
        self._done = False
        fd, name = tempfile.mkstemp(prefix="obj-", dir=store.tmp_dir)
        self._tmp = Path(name)
        self._file = os.fdopen(fd, "wb", buffering=0)
        self._header = _header_bytes(store.keys, self._data_key, chunk_size)
        self._file.write(_MAGIC + struct.pack(">I", len(self._header)) + self._header)

    @property
    def size(self) -> int:
        return self._size

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Add plaintext; a chunk is sealed once more data follows it."""
        self._size += len(data)
        view = memoryview(data).cast("B")
        while view:
            if self._filled == self._chunk_size:
                self._seal(memoryview(self._pending), final=False)
                self._filled = 0
            room = self._chunk_size - self._filled
            piece = view[:room]
            self._pending[self._filled : self._filled + len(piece)] = piece
            self._filled += len(piece)
            view = view[len(piece) :]
        return len(data)

    def write_from(self, handle: io.FileIO) -> None:
        """Read a whole file straight into the chunk buffer (no extra copy)."""
        pending = memoryview(self._pending)
        while True:
            if self._filled == self._chunk_size:
                self._seal(pending, final=False)
                self._filled = 0
            count = handle.readinto(pending[self._filled :]) or 0
            if count == 0:
                return
            self._filled += count
            self._size += count

    def _seal(self, chunk: memoryview, *, final: bool) -> None:
        """Hash, encrypt and write one chunk."""
        self._digest.update(chunk)
        self._encrypt(chunk, final=final)

    def _encrypt(self, chunk: memoryview, *, final: bool) -> None:
        encryptor = Cipher(
            algorithms.AES(self._data_key), modes.GCM(_nonce(self._index, final))
        ).encryptor()
        encryptor.authenticate_additional_data(self._header)
        count = encryptor.update_into(chunk, self._sealed)
        encryptor.finalize()
        self._sealed[count : count + _TAG] = encryptor.tag
        self._file.write(memoryview(self._sealed)[: count + _TAG])
        self._index += 1

    def commit(self) -> StoredObject:
        """Seal the last chunk, fsync, and move the object into place."""
        self._seal(memoryview(self._pending)[: self._filled], final=True)
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        object_id = uuid.uuid4().hex
        self._tmp.replace(self._store.path(object_id))
        self._done = True
        return StoredObject(object_id, self._size, self._digest.hexdigest())

    def abort(self) -> None:
        if not self._done:
            self._file.close()
            self._tmp.unlink(missing_ok=True)
            self._done = True

    def __enter__(self) -> ObjectWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.abort()


class ObjectStore:
    """Encrypted objects in a folder: ``objects/<id>`` and ``tmp/``."""

    def __init__(
        self, root: Path, keys: KeyProvider, chunk_size: int = CHUNK_SIZE
    ) -> None:
        self.root = Path(root)
        self.keys = keys
        self.chunk_size = chunk_size
        self.objects_dir = self.root / "objects"
        self.tmp_dir = self.root / "tmp"
        for folder in (self.objects_dir, self.tmp_dir):
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)

    def path(self, object_id: str) -> Path:
        if not object_id.isalnum():
            raise NotFound(f"no stored object {object_id!r}")
        return self.objects_dir / object_id

    def writer(self) -> ObjectWriter:
        return ObjectWriter(self, self.chunk_size)

    def put_file(self, source: Path) -> StoredObject:
        """Encrypt a plaintext file into the store."""
        with self.writer() as writer, Path(source).open("rb", buffering=0) as handle:
            writer.write_from(handle)
            return writer.commit()

    def put_bytes(self, data: bytes) -> StoredObject:
        with self.writer() as writer:
            writer.write(data)
            return writer.commit()

    def seal(self, data: bytes) -> bytes:
        """Encrypt ``data`` in memory into the format of a stored object.

        For small values kept elsewhere than the store (a task's logs in the
        database): the same envelope, data key and chunking as a file.
        """
        data_key = AESGCM.generate_key(bit_length=256)
        header = _header_bytes(self.keys, data_key, self.chunk_size)
        aead = AESGCM(data_key)
        size = self.chunk_size
        starts = range(0, max(len(data), 1), size)
        sealed = [_MAGIC, struct.pack(">I", len(header)), header]
        for index, start in enumerate(starts):
            final = start + size >= len(data)
            piece = data[start : start + size]
            sealed.append(aead.encrypt(_nonce(index, final), piece, header))
        return b"".join(sealed)

    def unseal(self, blob: bytes) -> bytes:
        """The plaintext of a :meth:`seal` result, every chunk authenticated."""
        handle = io.BytesIO(blob)
        header, chunk_size, key = self._read_header(handle)
        aead = AESGCM(key)
        body = memoryview(blob)[handle.tell() :]
        step = chunk_size + _TAG
        if chunk_size <= 0 or len(body) < _TAG:
            raise DecryptionFailed("sealed value is truncated")
        plain = []
        for index, start in enumerate(range(0, len(body), step)):
            final = start + step >= len(body)
            try:
                plain.append(
                    aead.decrypt(
                        _nonce(index, final), body[start : start + step], header
                    )
                )
            except InvalidTag as exc:
                raise DecryptionFailed("sealed value failed authentication") from exc
        return b"".join(plain)

    def read(self, object_id: str) -> Iterator[bytes]:
        """Yield the plaintext chunk by chunk, each authenticated first."""
        with self._open(object_id) as handle:
            header, chunk_size, key = self._read_header(handle)
            aead = AESGCM(key)
            for nonce, block in self._blocks(handle, header, chunk_size):
                try:
                    yield aead.decrypt(nonce, block, header)
                except InvalidTag as exc:
                    raise DecryptionFailed(
                        "stored object failed authentication"
                    ) from exc

    def _open(self, object_id: str) -> io.FileIO:
        try:
            return self.path(object_id).open("rb", buffering=0)
        except FileNotFoundError as exc:
            raise NotFound(f"stored object {object_id} is missing") from exc

    @staticmethod
    def _blocks(
        handle: io.FileIO, header: bytes, chunk_size: int
    ) -> Iterator[tuple[bytes, memoryview]]:
        """(nonce, sealed chunk) pairs; the view is reused between chunks."""
        total = os.fstat(handle.fileno()).st_size
        position = len(_MAGIC) + 4 + len(header)
        buffer = bytearray(chunk_size + _TAG)
        view = memoryview(buffer)
        index = 0
        while True:
            count = handle.readinto(buffer) or 0
            position += count
            final = position >= total
            if count < _TAG:
                raise DecryptionFailed("stored object is truncated")
            yield _nonce(index, final), view[:count]
            if final:
                return
            index += 1

    def _read_header(self, handle: IO[bytes]) -> tuple[bytes, int, bytes]:
        prefix = handle.read(len(_MAGIC) + 4)
        if len(prefix) != len(_MAGIC) + 4 or prefix[: len(_MAGIC)] != _MAGIC:
            raise DecryptionFailed("stored object has no airfed header")
        (length,) = struct.unpack(">I", prefix[len(_MAGIC) :])
        if length > _MAX_HEADER:
            raise DecryptionFailed("stored object header is too long")
        header = handle.read(length)
        try:
            chunk_size = int(json.loads(header)["chunk_size"])
        except (ValueError, KeyError, TypeError) as exc:
            raise DecryptionFailed("stored object header is unreadable") from exc
        return header, chunk_size, self._data_key(header)

    def _data_key(self, header: bytes) -> bytes:
        fields = json.loads(header)
        if fields.get("key_id") != self.keys.key_id:
            raise DecryptionFailed(
                "stored object was encrypted under another master key"
            )
        return self.keys.unwrap(base64.b64decode(fields["wrapped_key"]))

    def decrypt_to(self, object_id: str, dest: Path) -> None:
        """Write the plaintext to ``dest`` (mode 0600), chunk by chunk."""
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb", buffering=0) as out, self._open(object_id) as handle:
            header, chunk_size, key = self._read_header(handle)
            plain = bytearray(chunk_size + _TAG)
            for nonce, block in self._blocks(handle, header, chunk_size):
                decryptor = Cipher(algorithms.AES(key), modes.GCM(nonce)).decryptor()
                decryptor.authenticate_additional_data(header)
                count = decryptor.update_into(block[:-_TAG], plain)
                try:
                    decryptor.finalize_with_tag(bytes(block[-_TAG:]))
                except InvalidTag as exc:
                    out.close()
                    Path(dest).unlink(missing_ok=True)
                    raise DecryptionFailed(
                        "stored object failed authentication"
                    ) from exc
                out.write(memoryview(plain)[:count])

    def delete(self, object_id: str) -> None:
        self.path(object_id).unlink(missing_ok=True)

    def exists(self, object_id: str) -> bool:
        return self.path(object_id).is_file()
