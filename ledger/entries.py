"""Ledger entries: signed statements of what happened, as canonical JSON.

An entry's bytes (the leaf of the Merkle tree) are the RFC 8785 canonical
JSON of an envelope::

    {"signature": base64(Ed25519 signature), "statement": {
        "v": 1, "kind": "task_status", "author": "a", "key": "<task key>",
        "time": "2026-12-03T16:30:00.000Z", "body": {...}}}

The author organization signs ``airfed-ledger-entry/v1\\n`` followed by the
canonical bytes of the statement with its Ed25519 identity key. Because
canonical JSON sorts keys, the statement's bytes appear verbatim inside the
envelope, so a verifier checks the signature without re-encoding anything.

Entries hold identifiers, hashes and permissions, never data. ``key`` names
what the entry is about: an organization, an asset, a compute plan, a task or
a model; ``airfed ledger prove KEY`` looks entries up by it.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import functools
import json
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import msgspec
import nacl.bindings
import nacl.exceptions
import rfc8785
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from airfed.ledger.errors import EntryError
from airfed.ledger.merkle import leaf_hash

__all__ = [
    "ENTRY_VERSION",
    "MAX_ENTRY_BYTES",
    "TASK_STATUSES",
    "Entry",
    "EntryFields",
    "EntryKind",
    "KeyRing",
    "check_body",
    "make_entry",
    "parse_entry",
    "verify_entries",
    "verify_entry",
    "verify_entry_bytes",
]

ENTRY_VERSION = 1
MAX_ENTRY_BYTES = 64 * 1024
TASK_STATUSES = frozenset(
    {"waiting", "executing", "prepared", "done", "failed", "canceled"}
)
_DOMAIN = b"airfed-ledger-entry/v1\n"
_PREFIX = b'{"signature":"'
_SIGNATURE_B64 = 88  # base64 of 64 bytes
_MIDDLE = b'","statement":'
_STATEMENT_AT = len(_PREFIX) + _SIGNATURE_B64 + len(_MIDDLE)
_STATEMENT_FIELDS = frozenset({"v", "kind", "author", "key", "time", "body"})
_SIGNATURE_AT = len(_PREFIX)
_MIDDLE_AT = _SIGNATURE_AT + _SIGNATURE_B64


class EntryKind(StrEnum):
    ORGANIZATION_REGISTERED = "organization_registered"
    DATASET_REGISTERED = "dataset_registered"
    DATA_SAMPLE_REGISTERED = "data_sample_registered"
    FUNCTION_REGISTERED = "function_registered"
    PLAN_REGISTERED = "plan_registered"
    TASK_STATUS = "task_status"
    MODEL_ACCESSED = "model_accessed"
    PERMISSIONS_CHANGED = "permissions_changed"


_KINDS = {kind.value: kind for kind in EntryKind}  # a dict lookup, not the enum's
_Types = type | tuple[type, ...]
_OPTIONAL_RECEIPT: _Types = (dict, type(None))

# kind -> (required body fields, optional body fields), each with its type.
_BODIES: dict[EntryKind, tuple[dict[str, _Types], dict[str, _Types]]] = {
    EntryKind.ORGANIZATION_REGISTERED: (
        {"identity_public_key": str},
        {"role": str, "tls_certificate_sha256": str},
    ),
    EntryKind.DATASET_REGISTERED: (
        {"owner": str, "opener_checksum": str, "permissions": dict},
        {"logs_permission": dict, "name": str, "metadata_sha256": str},
    ),
    EntryKind.DATA_SAMPLE_REGISTERED: (
        {"owner": str, "dataset_key": str, "checksum": str},
        {},
    ),
    EntryKind.FUNCTION_REGISTERED: (
        {"owner": str, "archive_checksum": str, "permissions": dict},
        {"name": str, "metadata_sha256": str},
    ),
    EntryKind.PLAN_REGISTERED: (
        {"spec_hash": str},
        {
            "creator": str,
            "name": str,
            "organizations": list,
            "tasks_root": str,
            "task_count": int,
        },
    ),
    EntryKind.TASK_STATUS: (
        {"plan_key": str, "status": str},
        {
            "worker": str,
            "function_key": str,
            "category": str,
            "round": int,
            "rank": int,
            "try_number": int,
            "started_at": str,
            "ended_at": str,
            "receipt": _OPTIONAL_RECEIPT,
        },
    ),
    EntryKind.MODEL_ACCESSED: (
        {"accessor": str, "purpose": str},
        {"owner": str, "checksum": str, "task_key": str},
    ),
    EntryKind.PERMISSIONS_CHANGED: (
        {"asset_kind": str, "permissions": dict},
        {"logs_permission": dict},
    ),
}


@dataclass(frozen=True)
class Entry:
    """One signed ledger entry; ``data`` is exactly the bytes the tree holds."""

    kind: EntryKind
    author: str
    key: str
    time: str
    body: Mapping[str, Any]
    signature: bytes
    data: bytes

    @property
    def leaf_hash(self) -> bytes:
        return bytes(leaf_hash(self.data))

    @property
    def signed_message(self) -> bytes:
        return _DOMAIN + self.data[_STATEMENT_AT:-1]

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": str(self.kind),
            "author": self.author,
            "key": self.key,
            "time": self.time,
            "body": dict(self.body),
        }


def _now() -> str:
    now = dt.datetime.now(dt.UTC)
    return now.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def make_entry(
    kind: EntryKind | str,
    *,
    author: str,
    key: str,
    body: Mapping[str, Any],
    identity_key: ed25519.Ed25519PrivateKey,
    time: str | None = None,
) -> Entry:
    """Build and sign an entry by ``author`` with its identity key.

    Raises ``EntryError`` naming the field when the entry is not well formed.
    """
    statement: dict[str, Any] = {
        "v": ENTRY_VERSION,
        "kind": str(kind),
        "author": author,
        "key": key,
        "time": time or _now(),
        "body": dict(body),
    }
    _check_statement(statement)
    try:
        statement_bytes = rfc8785.dumps(statement)
    except rfc8785.CanonicalizationError as exc:
        raise EntryError(f"entry body cannot be canonicalized: {exc}") from exc
    signature = identity_key.sign(_DOMAIN + statement_bytes)
    data = _PREFIX + base64.b64encode(signature) + _MIDDLE + statement_bytes + b"}"
    if len(data) > MAX_ENTRY_BYTES:
        raise EntryError(f"entry is {len(data)} bytes; the limit is {MAX_ENTRY_BYTES}")
    return _entry(statement, signature, data)


def _entry(statement: Mapping[str, Any], signature: bytes, data: bytes) -> Entry:
    return Entry(
        kind=EntryKind(statement["kind"]),
        author=statement["author"],
        key=statement["key"],
        time=statement["time"],
        body=statement["body"],
        signature=signature,
        data=data,
    )


def _split(data: bytes) -> tuple[bytes, dict[str, Any]]:
    """The signature and the decoded statement of an entry's bytes."""
    if len(data) > MAX_ENTRY_BYTES:
        raise EntryError(f"entry is {len(data)} bytes; the limit is {MAX_ENTRY_BYTES}")
    if (
        not data.startswith(_PREFIX)
        or data[_STATEMENT_AT - len(_MIDDLE) : _STATEMENT_AT] != _MIDDLE
        or not data.endswith(b"}")
    ):
        raise EntryError("entry is not a signed envelope {signature, statement}")
    try:
        signature = base64.b64decode(
            data[len(_PREFIX) : len(_PREFIX) + _SIGNATURE_B64], validate=True
        )
        statement = json.loads(data[_STATEMENT_AT:-1])
    except (binascii.Error, ValueError) as exc:
        raise EntryError(f"entry cannot be decoded: {exc}") from exc
    if not isinstance(statement, dict):
        raise EntryError("entry statement must be a JSON object")
    _check_statement(statement)
    return signature, statement


def parse_entry(data: bytes, *, canonical: bool = True) -> Entry:
    """Read an entry's bytes; checks its shape (not its signature).

    With ``canonical`` (the default) the bytes must be exactly the RFC 8785
    encoding, as ``make_entry`` writes them.
    """
    signature, statement = _split(data)
    entry = _entry(statement, signature, data)
    if canonical:
        envelope: dict[str, Any] = {
            "signature": base64.b64encode(signature).decode(),
            "statement": statement,
        }
        if rfc8785.dumps(envelope) != data:
            raise EntryError("entry is not in canonical form (RFC 8785)")
    return entry


def _check_statement(statement: Mapping[str, Any]) -> None:
    if statement.keys() != _STATEMENT_FIELDS:
        raise EntryError(
            f"entry statement must have exactly the fields {sorted(_STATEMENT_FIELDS)}"
        )
    if statement["v"] != ENTRY_VERSION:
        raise EntryError(f"entry version {statement['v']!r} is not {ENTRY_VERSION}")
    kind = _KINDS.get(statement["kind"]) if type(statement["kind"]) is str else None
    if kind is None:
        raise EntryError(
            f"entry kind {statement['kind']!r} is not one of "
            f"{', '.join(k.value for k in EntryKind)}"
        )
    for field in ("author", "key", "time"):
        value = statement[field]
        if not isinstance(value, str) or not value or len(value) > 256:
            raise EntryError(f"entry field {field!r} must be a non-empty string")
    _check_body(kind, statement["body"])


def check_body(kind: str, body: Any) -> None:
    """Raise :class:`EntryError` unless ``body`` is what a ``kind`` entry holds."""
    known = _KINDS.get(kind) if type(kind) is str else None
    if known is None:
        raise EntryError(
            f"entry kind {kind!r} is not one of {', '.join(k.value for k in EntryKind)}"
        )
    _check_body(known, body)


def _check_body(kind: EntryKind, body: Any) -> None:
    if not isinstance(body, dict):
        raise EntryError(f"{kind} entry body must be an object")
    required, optional = _BODIES[kind]
    for field, types in required.items():
        if field not in body:
            raise EntryError(f"{kind} entry lacks the body field {field!r}")
        _check_type(kind, field, body[field], types)
    for field, value in body.items():
        if field in required:
            continue
        if field not in optional:
            raise EntryError(f"{kind} entry has an unknown body field {field!r}")
        _check_type(kind, field, value, optional[field])
    if kind is EntryKind.TASK_STATUS and body["status"] not in TASK_STATUSES:
        raise EntryError(
            f"task status {body['status']!r} is not one of {sorted(TASK_STATUSES)}"
        )


def _check_type(kind: EntryKind, field: str, value: Any, types: _Types) -> None:
    if isinstance(value, bool) or not isinstance(value, types):
        raise EntryError(f"{kind} entry body field {field!r} has the wrong type")


# --------------------------------------------------------------------------
# Signatures


class KeyRing:
    """The organizations' public identity keys, by organization id."""

    def __init__(self, public_keys: Mapping[str, str]) -> None:
        self._raw: dict[str, bytes] = {}
        for org, key_b64 in public_keys.items():
            raw = base64.b64decode(key_b64)
            if len(raw) != 32:
                raise EntryError(f"identity key of {org!r} is not an Ed25519 key")
            self._raw[org] = raw

    @classmethod
    def of(cls, keys: Mapping[str, ed25519.Ed25519PublicKey]) -> KeyRing:
        ring = cls({})
        for org, key in keys.items():
            ring._raw[org] = key.public_bytes(
                serialization.Encoding.Raw, serialization.PublicFormat.Raw
            )
        return ring

    def raw(self, org: str) -> bytes:
        try:
            return self._raw[org]
        except KeyError:
            raise EntryError(f"organization {org!r} is not in the network") from None

    def __contains__(self, org: object) -> bool:
        return org in self._raw

    def public_key_b64(self, org: str) -> str:
        return base64.b64encode(self.raw(org)).decode()


def _signature_ok(public_key: bytes, signature: bytes, message: bytes) -> bool:
    try:
        nacl.bindings.crypto_sign_open(signature + message, public_key)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError):
        return False
    return True


def _receipt_problem(entry: Entry, keys: KeyRing) -> str | None:
    return _body_receipt_problem(entry.key, entry.body, keys)


def _body_receipt_problem(
    key: str, body: Mapping[str, Any], keys: KeyRing
) -> str | None:
    receipt = body.get("receipt")
    if receipt is None:
        return None
    signer = receipt.get("signer")
    if receipt.get("task_key") != key:
        return "its receipt is for another task"
    if signer not in keys:
        return f"its receipt is signed by {signer!r}, not an organization"
    try:
        payload: dict[str, Any] = {
            field: receipt[field]
            for field in (
                "task_key",
                "function_hash",
                "input_hashes",
                "output_hashes",
                "status",
            )
        }
        message = rfc8785.dumps(payload)
        signature = base64.b64decode(receipt["signature"], validate=True)
    except (KeyError, TypeError, ValueError, binascii.Error) as exc:
        return f"its receipt is malformed ({exc})"
    if not _signature_ok(keys.raw(signer), signature, message):
        return f"the receipt signature of {signer} does not verify"
    return None


def verify_entry(entry: Entry, keys: KeyRing) -> None:
    """Raise ``EntryError`` unless the author's (and any receipt's) signature holds."""
    if entry.author not in keys:
        raise EntryError(f"author {entry.author!r} is not an organization")
    if not _signature_ok(keys.raw(entry.author), entry.signature, entry.signed_message):
        raise EntryError(f"the signature of {entry.author} does not verify")
    problem = _receipt_problem(entry, keys)
    if problem:
        raise EntryError(problem)


def verify_entries(
    datas: Sequence[bytes],
    keys: KeyRing,
    *,
    first_index: int = 0,
    workers: int | None = None,
    pool: Executor | None = None,
) -> list[Entry]:
    """Parse and verify many entries' bytes, spread over threads.

    The signature checks release the GIL, so threads run them in parallel;
    pass ``pool`` to reuse threads across calls. Raises ``EntryError`` naming
    the first bad entry by its index in the log (``first_index`` is the
    index of ``datas[0]``).
    """
    workers = workers or min(4, os.cpu_count() or 1)
    chunk = max(1, -(-len(datas) // workers))
    parts = [
        (start, datas[start : start + chunk]) for start in range(0, len(datas), chunk)
    ]
    check = functools.partial(_check_part, keys=keys)
    if pool is None:
        with ThreadPoolExecutor(max_workers=workers) as own:
            results = list(own.map(check, parts))
    else:
        results = list(pool.map(check, parts))
    entries: list[Entry] = []
    for part_entries, problem in results:
        entries.extend(part_entries)
        if problem is not None:
            offset, message = problem
            raise EntryError(f"entry {first_index + offset}: {message}")
    return entries


def _check_part(
    part: tuple[int, Sequence[bytes]], keys: KeyRing
) -> tuple[list[Entry], tuple[int, str] | None]:
    """Parse and verify one run of entries; stops at the first bad one."""
    start, datas = part
    entries: list[Entry] = []
    for offset, data in enumerate(datas, start):
        try:
            signature, statement = _split(data)
            entry = _entry(statement, signature, data)
            verify_entry(entry, keys)
        except EntryError as exc:
            return entries, (offset, str(exc))
        entries.append(entry)
    return entries, None


# --------------------------------------------------------------------------
# Many entries at once, as a replica reads them


@dataclass(frozen=True)
class EntryFields:
    """The kind, author and key of each of a run of verified entries."""

    kinds: list[str]
    authors: list[str]
    keys: list[str]


_decode_statement = msgspec.json.Decoder()


def verify_entry_bytes(
    datas: Sequence[bytes], keys: KeyRing, *, first_index: int = 0
) -> EntryFields:
    """Check many entries' bytes as ``verify_entries`` does, without objects.

    The same checks (envelope, statement shape, the author's and any
    receipt's signature), for a replica that needs only what it stores: no
    ``Entry`` is built, and the statement is decoded by a faster decoder.
    An entry that this path cannot pass is checked again the thorough way,
    which either accepts it or raises ``EntryError`` naming it by its index
    in the log (``first_index`` is the index of ``datas[0]``), so the
    verdict and the message are always those of ``verify_entries``.
    """
    fields = EntryFields([], [], [])
    for offset, data in enumerate(datas):
        found = _fast_fields(data, keys)
        if found is None:
            checked, problem = _check_part((0, [data]), keys)
            if problem is not None:
                raise EntryError(f"entry {first_index + offset}: {problem[1]}")
            found = (str(checked[0].kind), checked[0].author, checked[0].key)
        fields.kinds.append(found[0])
        fields.authors.append(found[1])
        fields.keys.append(found[2])
    return fields


def _fast_fields(data: bytes, keys: KeyRing) -> tuple[str, str, str] | None:
    """An entry's kind, author and key if it passes every check, else None."""
    if (
        len(data) > MAX_ENTRY_BYTES
        or data[:_SIGNATURE_AT] != _PREFIX
        or data[_MIDDLE_AT:_STATEMENT_AT] != _MIDDLE
        or data[-1:] != b"}"
    ):
        return None
    statement_bytes = data[_STATEMENT_AT:-1]
    try:
        signature = binascii.a2b_base64(
            data[_SIGNATURE_AT:_MIDDLE_AT], strict_mode=True
        )
        statement = _decode_statement.decode(statement_bytes)
        if type(statement) is not dict:
            return None
        _check_statement(statement)
    except (binascii.Error, msgspec.DecodeError, EntryError):
        return None
    author, key = statement["author"], statement["key"]
    public_key = keys._raw.get(author)
    if public_key is None or not _signature_ok(
        public_key, signature, _DOMAIN + statement_bytes
    ):
        return None
    body = statement["body"]
    if "receipt" in body and _body_receipt_problem(key, body, keys) is not None:
        return None
    return statement["kind"], author, key
