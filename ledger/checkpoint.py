"""Checkpoints of the log as C2SP signed notes, and witness cosignatures.

A checkpoint (c2sp.org/tlog-checkpoint) is three lines: the log's origin, the
tree size in decimal and the base64 root hash. The log signs it as a signed
note (c2sp.org/signed-note)::

    airfed.local/airfed-dev/log
    1024
    mI3hV0...=

    — airfed.local/airfed-dev/log <base64(key ID || Ed25519 signature)>
    — airfed.local/airfed-dev/witness/b <base64(key ID || time || signature)>

Key ID = SHA-256(key name || 0x0A || type || raw public key)[:4], with type
0x01 for the log's Ed25519 signature over the note text and 0x04 for a
witness cosignature (c2sp.org/tlog-cosignature), an Ed25519 signature over
``cosignature/v1\\ntime <T>\\n`` followed by the note text, carrying T as
an 8-byte big-endian prefix.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
import time as _time
from collections.abc import Mapping
from dataclasses import dataclass, field

import nacl.bindings
import nacl.exceptions
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from airfed.ledger.errors import CheckpointError
from airfed.ledger.merkle import HASH_SIZE

__all__ = [
    "COSIGNATURE_TYPE",
    "ED25519_TYPE",
    "Checkpoint",
    "CheckpointVerifier",
    "NoteSignature",
    "SignedCheckpoint",
    "VerifiedCheckpoint",
    "cosign",
    "key_id",
    "log_origin",
    "raw_public_key",
    "sign_checkpoint",
    "verify_cosignature",
    "verify_log_signature",
    "witness_name",
]

ED25519_TYPE = 0x01
COSIGNATURE_TYPE = 0x04
_DASH = "\u2014 "
_MAX_SIGNATURES = 64


def log_origin(network_name: str) -> str:
    """The origin line (and the log key's name) of a network's ledger."""
    return f"airfed.local/{network_name}/log"


def witness_name(network_name: str, org: str) -> str:
    """The key name an organization's witness cosigns under."""
    return f"airfed.local/{network_name}/witness/{org}"


def raw_public_key(key: ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey) -> bytes:
    public = key.public_key() if isinstance(key, ed25519.Ed25519PrivateKey) else key
    return public.public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )


def key_id(name: str, signature_type: int, public_key: bytes) -> bytes:
    """The 4-byte key ID of a signed-note key."""
    material = name.encode() + b"\n" + bytes([signature_type]) + public_key
    return hashlib.sha256(material).digest()[:4]


@dataclass(frozen=True)
class Checkpoint:
    """The log's statement of its size and root hash."""

    origin: str
    size: int
    root: bytes

    def body(self) -> str:
        root = base64.b64encode(self.root).decode()
        return f"{self.origin}\n{self.size}\n{root}\n"

    @classmethod
    def parse_body(cls, text: str) -> Checkpoint:
        lines = text.split("\n")
        if len(lines) != 4 or lines[3] != "":
            raise CheckpointError("checkpoint body must be origin, size and root")
        origin, size_text, root_text = lines[:3]
        if (
            not origin
            or not size_text.isdigit()
            or (size_text != "0" and size_text.startswith("0"))
        ):
            raise CheckpointError(f"checkpoint size {size_text!r} is not a number")
        try:
            root = base64.b64decode(root_text, validate=True)
        except binascii.Error as exc:
            raise CheckpointError("checkpoint root is not base64") from exc
        if len(root) != HASH_SIZE:
            raise CheckpointError("checkpoint root is not a SHA-256 hash")
        return cls(origin=origin, size=int(size_text), root=root)


@dataclass(frozen=True)
class NoteSignature:
    """One signature line: key name, key ID and the signature bytes."""

    name: str
    key_id: bytes
    signature: bytes

    def line(self) -> str:
        blob = base64.b64encode(self.key_id + self.signature).decode()
        return f"{_DASH}{self.name} {blob}\n"

    @classmethod
    def parse_line(cls, line: str) -> NoteSignature:
        if not line.startswith(_DASH):
            raise CheckpointError("a signature line must start with an em dash")
        parts = line[len(_DASH) :].split(" ")
        if len(parts) != 2 or not parts[0] or "+" in parts[0]:
            raise CheckpointError(f"malformed signature line {line!r}")
        try:
            blob = base64.b64decode(parts[1], validate=True)
        except binascii.Error as exc:
            raise CheckpointError(f"signature of {parts[0]} is not base64") from exc
        if len(blob) < 5:
            raise CheckpointError(f"signature of {parts[0]} is too short")
        return cls(name=parts[0], key_id=blob[:4], signature=blob[4:])


@dataclass(frozen=True)
class SignedCheckpoint:
    """A checkpoint with the signature lines of its note."""

    checkpoint: Checkpoint
    signatures: tuple[NoteSignature, ...] = ()

    def text(self) -> str:
        lines = "".join(sig.line() for sig in self.signatures)
        return f"{self.checkpoint.body()}\n{lines}"

    def with_signatures(self, *signatures: NoteSignature) -> SignedCheckpoint:
        merged = {(s.name, s.key_id): s for s in self.signatures}
        for sig in signatures:
            merged.setdefault((sig.name, sig.key_id), sig)
        return SignedCheckpoint(self.checkpoint, tuple(merged.values()))

    @classmethod
    def parse(cls, text: str) -> SignedCheckpoint:
        if not text.endswith("\n") or "\n\n" not in text:
            raise CheckpointError("a signed note is a text, a blank line, signatures")
        if any(ord(c) < 0x20 and c != "\n" for c in text):
            raise CheckpointError("a signed note must not hold control characters")
        body, _, signature_block = text.rpartition("\n\n")
        lines = signature_block.split("\n")[:-1]
        if not lines or len(lines) > _MAX_SIGNATURES:
            raise CheckpointError("a signed note needs 1 to 64 signature lines")
        signatures = tuple(NoteSignature.parse_line(line) for line in lines)
        return cls(Checkpoint.parse_body(body + "\n"), signatures)


def _verify(public_key: bytes, signature: bytes, message: bytes) -> bool:
    try:
        nacl.bindings.crypto_sign_open(signature + message, public_key)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError):
        return False
    return True


def sign_checkpoint(
    checkpoint: Checkpoint, log_key: ed25519.Ed25519PrivateKey
) -> SignedCheckpoint:
    """Sign a checkpoint as the log, whose key name is the origin."""
    name = checkpoint.origin
    kid = key_id(name, ED25519_TYPE, raw_public_key(log_key))
    signature = log_key.sign(checkpoint.body().encode())
    return SignedCheckpoint(checkpoint, (NoteSignature(name, kid, signature),))


def verify_log_signature(signed: SignedCheckpoint, log_public_key: bytes) -> None:
    """Raise ``CheckpointError`` unless the log's signature on the note holds."""
    checkpoint = signed.checkpoint
    kid = key_id(checkpoint.origin, ED25519_TYPE, log_public_key)
    for sig in signed.signatures:
        if sig.name == checkpoint.origin and sig.key_id == kid:
            if _verify(log_public_key, sig.signature, checkpoint.body().encode()):
                return
            raise CheckpointError(
                f"checkpoint {checkpoint.size}: the log's signature does not verify"
            )
    raise CheckpointError(f"checkpoint {checkpoint.size} is not signed by the log key")


def _cosigned_message(checkpoint: Checkpoint, timestamp: int) -> bytes:
    return f"cosignature/v1\ntime {timestamp}\n{checkpoint.body()}".encode()


def cosign(
    checkpoint: Checkpoint,
    name: str,
    witness_key: ed25519.Ed25519PrivateKey,
    timestamp: int | None = None,
) -> NoteSignature:
    """A witness's cosignature of a checkpoint it has checked."""
    when = int(_time.time()) if timestamp is None else timestamp
    signature = witness_key.sign(_cosigned_message(checkpoint, when))
    kid = key_id(name, COSIGNATURE_TYPE, raw_public_key(witness_key))
    return NoteSignature(name, kid, struct.pack(">Q", when) + signature)


def verify_cosignature(
    checkpoint: Checkpoint, signature: NoteSignature, name: str, public_key: bytes
) -> int:
    """The cosignature's time; ``CheckpointError`` if it is not ``name``'s."""
    if signature.name != name or signature.key_id != key_id(
        name, COSIGNATURE_TYPE, public_key
    ):
        raise CheckpointError(f"the cosignature is not from the key of {name}")
    if len(signature.signature) != 8 + 64:
        raise CheckpointError(f"cosignature of {name} has the wrong length")
    (timestamp,) = struct.unpack(">Q", signature.signature[:8])
    message = _cosigned_message(checkpoint, timestamp)
    if timestamp >= 2**63 or not _verify(public_key, signature.signature[8:], message):
        raise CheckpointError(
            f"checkpoint {checkpoint.size}: the cosignature of {name} does not verify"
        )
    return int(timestamp)


@dataclass(frozen=True)
class VerifiedCheckpoint:
    checkpoint: Checkpoint
    cosigners: frozenset[str]
    quorum: int
    note: str

    @property
    def final(self) -> bool:
        return len(self.cosigners) >= self.quorum


@dataclass(frozen=True)
class CheckpointVerifier:
    """Checks a log's signed notes: the log key, witness keys and the quorum."""

    origin: str
    log_public_key: bytes
    witnesses: Mapping[str, tuple[str, bytes]] = field(default_factory=dict)
    quorum: int = 1

    def verify(self, text: str) -> VerifiedCheckpoint:
        """Verify the note; a cosignature from a known witness must verify too."""
        signed = SignedCheckpoint.parse(text)
        if signed.checkpoint.origin != self.origin:
            raise CheckpointError(
                f"checkpoint is for {signed.checkpoint.origin!r}, not {self.origin!r}"
            )
        verify_log_signature(signed, self.log_public_key)
        cosigners: set[str] = set()
        for sig in signed.signatures:
            for org, (name, public_key) in self.witnesses.items():
                if sig.name == name and sig.key_id == key_id(
                    name, COSIGNATURE_TYPE, public_key
                ):
                    verify_cosignature(signed.checkpoint, sig, name, public_key)
                    cosigners.add(org)
        return VerifiedCheckpoint(
            signed.checkpoint, frozenset(cosigners), self.quorum, text
        )
