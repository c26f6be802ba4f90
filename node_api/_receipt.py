"""Task receipts: a node's signed statement of what a task read and produced.

A receipt carries the task key, the SHA-256 of the function's archive, the
SHA-256 of every input and output (by identifier) and the final status. The
node signs the RFC 8785 (JSON Canonicalization Scheme) encoding of exactly
those five fields with its Ed25519 identity key, so that anyone holding the
node's public key from ``network.yaml`` can check it, whatever JSON library
produced the copy they hold. The receipt adds ``signer`` (the organization)
and ``signature`` (base64), which are not part of the signed bytes.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any

import rfc8785
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519

__all__ = ["SIGNED_FIELDS", "receipt_payload", "sign_receipt", "verify_receipt"]

SIGNED_FIELDS = ("task_key", "function_hash", "input_hashes", "output_hashes", "status")


def receipt_payload(receipt: Mapping[str, Any]) -> bytes:
    """The canonical bytes a receipt's signature covers (RFC 8785)."""
    return rfc8785.dumps({field: receipt[field] for field in SIGNED_FIELDS})


def sign_receipt(
    identity_key: ed25519.Ed25519PrivateKey,
    *,
    task_key: str,
    function_hash: str,
    input_hashes: dict[str, str],
    output_hashes: dict[str, str],
    status: str,
    signer: str = "",
) -> dict[str, Any]:
    """Sign a task's receipt with the node's identity key.

    ``signer`` is the organization whose node ran the task.
    """
    receipt: dict[str, Any] = {
        "task_key": task_key,
        "function_hash": function_hash,
        "input_hashes": dict(input_hashes),
        "output_hashes": dict(output_hashes),
        "status": status,
    }
    signature = identity_key.sign(receipt_payload(receipt))
    receipt["signer"] = signer
    receipt["signature"] = base64.b64encode(signature).decode("ascii")
    return receipt


def verify_receipt(receipt: Mapping[str, Any], public_key_b64: str) -> bool:
    """True only if ``receipt`` was signed by the key and is unchanged."""
    try:
        public_key = ed25519.Ed25519PublicKey.from_public_bytes(
            base64.b64decode(public_key_b64, validate=True)
        )
        signature = base64.b64decode(receipt["signature"], validate=True)
        public_key.verify(signature, receipt_payload(receipt))
    except (
        InvalidSignature,
        KeyError,
        TypeError,
        ValueError,
        binascii.Error,
        rfc8785.CanonicalizationError,
    ):
        return False
    return True
