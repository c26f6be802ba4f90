"""Encryption at rest: round trips, tampering, wrong keys, atomic writes."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from airfed.node_api._crypto import FileKeyProvider, ObjectStore
from airfed.node_api.errors import DecryptionFailed

CHUNK = 1024


def _store(
    tmp_path: Path, key: bytes | None = None, name: str = "master.key"
) -> ObjectStore:
    key_file = tmp_path / name
    if not key_file.exists():
        key_file.write_bytes(key or os.urandom(32))
    return ObjectStore(
        tmp_path / "storage", FileKeyProvider(key_file), chunk_size=CHUNK
    )


@pytest.mark.parametrize(
    "size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 5 * CHUNK, 5 * CHUNK + 7]
)
def test_round_trip_keeps_bytes_and_checksum(tmp_path: Path, size: int) -> None:
    store = _store(tmp_path)
    data = os.urandom(size)

    stored = store.put_bytes(data)

    assert stored.size == size
    assert stored.checksum == hashlib.sha256(data).hexdigest()
    assert b"".join(store.read(stored.object_id)) == data


def test_writes_in_pieces_of_any_size(tmp_path: Path) -> None:
    store = _store(tmp_path)
    data = os.urandom(7 * CHUNK + 3)
    with store.writer() as writer:
        for start in range(0, len(data), 333):
            writer.write(data[start : start + 333])
        writer.write(data[:0])
        stored = writer.commit()
    assert b"".join(store.read(stored.object_id)) == data


def test_stored_bytes_do_not_contain_the_plaintext(tmp_path: Path) -> None:
    store = _store(tmp_path)
    plaintext = b"patient 42: diagnosis confidential " * 100

    stored = store.put_bytes(plaintext)

    on_disk = store.path(stored.object_id).read_bytes()
    assert b"patient 42" not in on_disk
    assert b"confidential" not in on_disk


def test_wrong_master_key_cannot_decrypt(tmp_path: Path) -> None:
    stored = _store(tmp_path).put_bytes(b"secret model weights")
    other = ObjectStore(
        tmp_path / "storage", FileKeyProvider(_key(tmp_path / "other.key")), CHUNK
    )

    with pytest.raises(DecryptionFailed):
        b"".join(other.read(stored.object_id))


def _key(path: Path) -> Path:
    path.write_bytes(os.urandom(32))
    return path


def test_a_flipped_byte_fails_authentication(tmp_path: Path) -> None:
    store = _store(tmp_path)
    stored = store.put_bytes(os.urandom(3 * CHUNK))
    path = store.path(stored.object_id)
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x01
    path.write_bytes(bytes(data))

    with pytest.raises(DecryptionFailed):
        b"".join(store.read(stored.object_id))


def test_truncated_or_reordered_chunks_fail_authentication(tmp_path: Path) -> None:
    store = _store(tmp_path)
    stored = store.put_bytes(os.urandom(3 * CHUNK + 10))
    path = store.path(stored.object_id)
    original = path.read_bytes()
    sealed = CHUNK + 16
    body_start = len(original) - (3 * sealed + 10 + 16)

    path.write_bytes(original[: body_start + 2 * sealed])  # drop the last chunks
    with pytest.raises(DecryptionFailed):
        b"".join(store.read(stored.object_id))

    head, body = original[:body_start], original[body_start:]
    swapped = body[sealed : 2 * sealed] + body[:sealed] + body[2 * sealed :]
    path.write_bytes(head + swapped)
    with pytest.raises(DecryptionFailed):
        b"".join(store.read(stored.object_id))


def test_aborted_write_leaves_nothing(tmp_path: Path) -> None:
    store = _store(tmp_path)
    with pytest.raises(RuntimeError), store.writer() as writer:
        writer.write(os.urandom(3 * CHUNK))
        raise RuntimeError("upload cut")

    assert list(store.objects_dir.iterdir()) == []
    assert list(store.tmp_dir.iterdir()) == []


def test_master_key_must_be_32_bytes(tmp_path: Path) -> None:
    short = tmp_path / "short.key"
    short.write_bytes(b"too short")
    with pytest.raises(Exception, match="32 bytes"):
        FileKeyProvider(short)


STREAM_300MB = """
    import hashlib, os, resource, sys
    from pathlib import Path
    from airfed.node_api._crypto import FileKeyProvider, ObjectStore

    root = Path(sys.argv[1])
    (root / "master.key").write_bytes(os.urandom(32))
    store = ObjectStore(root / "storage", FileKeyProvider(root / "master.key"))
    block = os.urandom(1024 * 1024)
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    digest = hashlib.sha256()
    with store.writer() as writer:
        for _ in range(300):
            writer.write(block)
            digest.update(block)
        stored = writer.commit()
    check = hashlib.sha256()
    for chunk in store.read(stored.object_id):
        check.update(chunk)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert stored.checksum == digest.hexdigest() == check.hexdigest()
    print((peak - baseline) * 1024)
"""


def test_300_mb_stream_through_the_store_in_bounded_memory(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(STREAM_300MB), str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    growth = int(result.stdout.strip())
    assert growth < 48 * 1024 * 1024, f"peak RSS grew by {growth} bytes"


def test_decrypt_to_writes_the_plaintext_or_nothing(tmp_path: Path) -> None:
    store = _store(tmp_path)
    data = os.urandom(4 * CHUNK + 5)
    stored = store.put_bytes(data)
    dest = tmp_path / "plain.bin"

    store.decrypt_to(stored.object_id, dest)
    assert dest.read_bytes() == data
    assert dest.stat().st_mode & 0o777 == 0o600

    path = store.path(stored.object_id)
    tampered = bytearray(path.read_bytes())
    tampered[-CHUNK] ^= 0x80
    path.write_bytes(bytes(tampered))
    with pytest.raises(DecryptionFailed):
        store.decrypt_to(stored.object_id, dest)
    assert not dest.exists()


@pytest.mark.parametrize("size", [0, CHUNK - 3, CHUNK, 3 * CHUNK + 5])
def test_put_file_reads_the_file_in_chunks(tmp_path: Path, size: int) -> None:
    store = _store(tmp_path)
    source = tmp_path / "source.bin"
    source.write_bytes(os.urandom(size))

    stored = store.put_file(source)

    assert stored.size == size
    assert stored.checksum == hashlib.sha256(source.read_bytes()).hexdigest()
    assert b"".join(store.read(stored.object_id)) == source.read_bytes()


@pytest.mark.parametrize("size", [0, 1, CHUNK, CHUNK + 1, 3 * CHUNK, 3 * CHUNK + 5])
def test_sealed_values_round_trip_under_a_fresh_data_key(
    tmp_path: Path, size: int
) -> None:
    store = _store(tmp_path)
    data = os.urandom(size)

    first, second = store.seal(data), store.seal(data)

    assert first != second
    assert store.unseal(first) == store.unseal(second) == data


def test_sealed_value_refuses_tampering_truncation_and_another_key(
    tmp_path: Path,
) -> None:
    store = _store(tmp_path)
    sealed = store.seal(b"secret log line\n" * 200)
    flipped = bytearray(sealed)
    flipped[-20] ^= 1
    (tmp_path / "other").mkdir()
    other = _store(tmp_path / "other")

    # 3200 bytes: three full chunks and a final one of 128 bytes (+16 tag).
    without_final_chunk = sealed[: -(128 + 16)]
    for broken in (bytes(flipped), without_final_chunk, sealed[:-1]):
        with pytest.raises(DecryptionFailed):
            store.unseal(broken)
    with pytest.raises(DecryptionFailed, match="another master key"):
        other.unseal(sealed)
