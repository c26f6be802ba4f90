"""Signed ledger entries and C2SP checkpoints."""

from __future__ import annotations

import base64
import json

import pytest
import rfc8785
from cryptography.hazmat.primitives.asymmetric import ed25519

from airfed.ledger import checkpoint as cp
from airfed.ledger.entries import (
    EntryKind,
    KeyRing,
    make_entry,
    parse_entry,
    verify_entries,
    verify_entry,
)
from airfed.ledger.errors import CheckpointError, EntryError
from airfed.node_api._receipt import sign_receipt

KEY_A = ed25519.Ed25519PrivateKey.generate()
KEY_B = ed25519.Ed25519PrivateKey.generate()
KEYS = KeyRing.of({"a": KEY_A.public_key(), "b": KEY_B.public_key()})


def _plan_entry(key: str = "plan-1", author: str = "a") -> bytes:
    signer = KEY_A if author == "a" else KEY_B
    entry = make_entry(
        EntryKind.PLAN_REGISTERED,
        author=author,
        key=key,
        body={"spec_hash": "ab" * 32, "creator": "a"},
        identity_key=signer,
    )
    return entry.data


def test_entry_bytes_are_canonical_json_and_verify() -> None:
    data = _plan_entry()
    decoded = json.loads(data)
    assert rfc8785.dumps(decoded) == data
    assert decoded["statement"]["kind"] == "plan_registered"
    entry = parse_entry(data)
    verify_entry(entry, KEYS)
    assert entry.key == "plan-1" and entry.author == "a"


def test_forged_or_altered_entries_fail() -> None:
    data = _plan_entry()
    altered = data.replace(b"plan-1", b"plan-2")
    with pytest.raises(EntryError, match="signature of a does not verify"):
        verify_entry(parse_entry(altered), KEYS)
    # b's key over a statement that claims a as author
    forged = make_entry(
        EntryKind.PLAN_REGISTERED,
        author="a",
        key="plan-1",
        body={"spec_hash": "ab" * 32},
        identity_key=KEY_B,
    )
    with pytest.raises(EntryError, match="does not verify"):
        verify_entry(forged, KEYS)
    with pytest.raises(EntryError, match="not an organization"):
        verify_entry(parse_entry(_plan_entry()), KeyRing({}))


@pytest.mark.parametrize(
    ("kind", "body", "message"),
    [
        ("plan_registered", {}, "lacks the body field 'spec_hash'"),
        ("plan_registered", {"spec_hash": 3}, "wrong type"),
        ("plan_registered", {"spec_hash": "x", "data": "y"}, "unknown body field"),
        ("task_status", {"plan_key": "p", "status": "bogus"}, "task status"),
        ("no_such_kind", {}, "entry kind"),
    ],
)
def test_malformed_entries_are_refused(
    kind: str, body: dict[str, object], message: str
) -> None:
    with pytest.raises(EntryError, match=message):
        make_entry(kind, author="a", key="k", body=body, identity_key=KEY_A)


def test_non_canonical_bytes_are_refused() -> None:
    data = _plan_entry()
    spaced = data.replace(b'"statement":', b'"statement": ', 1)
    with pytest.raises(EntryError):
        parse_entry(spaced)
    with pytest.raises(EntryError, match="signed envelope"):
        parse_entry(b'{"statement":{}}')


def test_task_status_receipt_is_checked() -> None:
    receipt = sign_receipt(
        KEY_B,
        task_key="task-1",
        function_hash="f" * 64,
        input_hashes={"model": "1" * 64},
        output_hashes={"model": "2" * 64},
        status="done",
        signer="b",
    )
    body = {"plan_key": "p", "status": "done", "worker": "b", "receipt": receipt}
    good = make_entry(
        "task_status", author="a", key="task-1", body=body, identity_key=KEY_A
    )
    verify_entry(good, KEYS)
    tampered = dict(receipt, output_hashes={"model": "3" * 64})
    bad = make_entry(
        "task_status",
        author="a",
        key="task-1",
        body={**body, "receipt": tampered},
        identity_key=KEY_A,
    )
    with pytest.raises(EntryError, match="receipt signature of b"):
        verify_entry(bad, KEYS)


def test_bulk_verification_names_the_first_bad_entry() -> None:
    datas = [_plan_entry(f"plan-{i}") for i in range(40)]
    assert len(verify_entries(datas, KEYS, workers=2)) == 40
    datas[17] = datas[17].replace(b"plan-17", b"plan-99")
    datas[30] = datas[30].replace(b"plan-30", b"plan-98")
    with pytest.raises(EntryError, match="entry 117: the signature of a"):
        verify_entries(datas, KEYS, first_index=100, workers=2)


# --------------------------------------------------------------------------
# Checkpoints


LOG_KEY = ed25519.Ed25519PrivateKey.generate()
ORIGIN = cp.log_origin("test")


def _verifier(quorum: int = 1) -> cp.CheckpointVerifier:
    return cp.CheckpointVerifier(
        origin=ORIGIN,
        log_public_key=cp.raw_public_key(LOG_KEY),
        witnesses={
            "a": (cp.witness_name("test", "a"), cp.raw_public_key(KEY_A)),
            "b": (cp.witness_name("test", "b"), cp.raw_public_key(KEY_B)),
        },
        quorum=quorum,
    )


def test_checkpoint_is_a_c2sp_signed_note() -> None:
    checkpoint = cp.Checkpoint(ORIGIN, 7, bytes(range(32)))
    signed = cp.sign_checkpoint(checkpoint, LOG_KEY)
    text = signed.text()
    body, signature_line = text.split("\n\n")
    assert body == f"{ORIGIN}\n7\n{base64.b64encode(bytes(range(32))).decode()}"
    assert signature_line.startswith(f"\u2014 {ORIGIN} ")
    blob = base64.b64decode(signature_line.split(" ")[2])
    expected_id = cp.key_id(ORIGIN, 0x01, cp.raw_public_key(LOG_KEY))
    assert blob[:4] == expected_id and len(blob) == 68
    LOG_KEY.public_key().verify(blob[4:], checkpoint.body().encode())

    verified = _verifier().verify(text)
    assert verified.checkpoint == checkpoint and not verified.final


def test_cosignatures_count_towards_the_quorum() -> None:
    checkpoint = cp.Checkpoint(ORIGIN, 3, b"\x01" * 32)
    signed = cp.sign_checkpoint(checkpoint, LOG_KEY)
    cos_a = cp.cosign(checkpoint, cp.witness_name("test", "a"), KEY_A, 1700000000)
    cos_b = cp.cosign(checkpoint, cp.witness_name("test", "b"), KEY_B)
    assert cos_a.signature[:8] == (1700000000).to_bytes(8, "big")
    full = signed.with_signatures(cos_a, cos_b, cos_a)
    assert len(full.signatures) == 3
    verified = _verifier(quorum=2).verify(full.text())
    assert verified.cosigners == {"a", "b"} and verified.final


def test_replaced_checkpoint_or_cosignature_is_detected() -> None:
    checkpoint = cp.Checkpoint(ORIGIN, 3, b"\x01" * 32)
    signed = cp.sign_checkpoint(checkpoint, LOG_KEY)
    other = cp.Checkpoint(ORIGIN, 3, b"\x02" * 32)
    replaced = cp.SignedCheckpoint(other, signed.signatures)
    with pytest.raises(CheckpointError, match="log's signature does not verify"):
        _verifier().verify(replaced.text())
    cos = cp.cosign(checkpoint, cp.witness_name("test", "b"), KEY_B)
    wrong = cp.SignedCheckpoint(other, cp.sign_checkpoint(other, LOG_KEY).signatures)
    with pytest.raises(CheckpointError, match=r"cosignature of .*witness/b"):
        _verifier().verify(wrong.with_signatures(cos).text())
    stranger = ed25519.Ed25519PrivateKey.generate()
    with pytest.raises(CheckpointError, match="not signed by the log key"):
        _verifier().verify(cp.sign_checkpoint(checkpoint, stranger).text())


@pytest.mark.parametrize(
    "text",
    ["", "origin\n1\n", "origin\nx\nAAAA\n\n\u2014 k AAAAAAAA\n", "a\n1\nAA==\n\nno\n"],
)
def test_malformed_notes_are_refused(text: str) -> None:
    with pytest.raises(CheckpointError):
        cp.SignedCheckpoint.parse(text)
