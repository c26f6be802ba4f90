"""Signed task receipts."""

from __future__ import annotations

import json
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from airfed.node_api._receipt import receipt_payload, sign_receipt, verify_receipt
from airfed.sdk.network import public_key_b64

KEY = ed25519.Ed25519PrivateKey.generate()


def _receipt() -> dict[str, Any]:
    return sign_receipt(
        KEY,
        task_key="0b7c3c1e-4df3-4c8e-9d38-3f3a2f1b9a10",
        function_hash="a" * 64,
        input_hashes={"datasamples": "b" * 64, "model": "c" * 64},
        output_hashes={"model": "d" * 64},
        status="done",
        signer="a",
    )


def test_receipt_verifies_with_the_signers_key() -> None:
    receipt = _receipt()
    assert receipt["signer"] == "a"
    assert verify_receipt(receipt, public_key_b64(KEY))


def test_receipt_survives_a_json_round_trip_in_any_key_order() -> None:
    receipt = _receipt()
    reordered = json.loads(json.dumps(dict(reversed(receipt.items())), indent=3))
    assert verify_receipt(reordered, public_key_b64(KEY))


def test_payload_is_canonical_json_of_the_signed_fields() -> None:
    payload = receipt_payload(_receipt())
    assert payload.startswith(b'{"function_hash":"aaaa')
    assert b"signer" not in payload
    assert b" " not in payload


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("task_key", "another-task"),
        ("function_hash", "e" * 64),
        ("input_hashes", {"datasamples": "b" * 64}),
        ("output_hashes", {"model": "0" * 64}),
        ("status", "failed"),
    ],
)
def test_tampered_field_fails(field: str, value: Any) -> None:
    receipt = _receipt()
    receipt[field] = value
    assert not verify_receipt(receipt, public_key_b64(KEY))


def test_wrong_key_fails() -> None:
    other = ed25519.Ed25519PrivateKey.generate()
    assert not verify_receipt(_receipt(), public_key_b64(other))


@pytest.mark.parametrize(
    "damage",
    [
        lambda r: r.pop("signature"),
        lambda r: r.pop("status"),
        lambda r: r.update(signature="not base64!"),
        lambda r: r.update(signature=r["signature"][:-8] + "AAAAAAA="),
        lambda r: r.update(input_hashes={"x": float("nan")}),
    ],
    ids=["no-signature", "no-status", "bad-base64", "wrong-signature", "nan"],
)
def test_malformed_receipt_fails_without_raising(damage: Any) -> None:
    receipt = _receipt()
    damage(receipt)
    assert not verify_receipt(receipt, public_key_b64(KEY))


def test_malformed_public_key_fails_without_raising() -> None:
    assert not verify_receipt(_receipt(), "AAAA")
    assert not verify_receipt(_receipt(), "%%%")
