"""The replica's fast check of many entries agrees with the thorough one."""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from airfed.ledger.entries import (
    EntryKind,
    KeyRing,
    make_entry,
    verify_entries,
    verify_entry_bytes,
)
from airfed.ledger.errors import EntryError
from airfed.node_api._receipt import sign_receipt

KEY_A = ed25519.Ed25519PrivateKey.generate()
KEY_B = ed25519.Ed25519PrivateKey.generate()
KEYS = KeyRing.of({"a": KEY_A.public_key(), "b": KEY_B.public_key()})


def _sample(i: int, author: str = "a") -> bytes:
    return make_entry(
        EntryKind.DATA_SAMPLE_REGISTERED,
        author=author,
        key=f"sample-{i}",
        body={"owner": author, "dataset_key": "d", "checksum": f"{i:064x}"},
        identity_key=KEY_A if author == "a" else KEY_B,
    ).data


def _task_status(status: str = "done") -> bytes:
    receipt = sign_receipt(
        KEY_B,
        task_key="task-1",
        function_hash="f" * 64,
        input_hashes={"model": "1" * 64},
        output_hashes={"model": "2" * 64},
        status="done",
        signer="b",
    )
    if status != "done":
        receipt = dict(receipt, status=status)
    body = {"plan_key": "p", "status": "done", "round": 3, "receipt": receipt}
    return make_entry(
        "task_status", author="a", key="task-1", body=body, identity_key=KEY_A
    ).data


def _signed_statement(statement: bytes, key: ed25519.Ed25519PrivateKey) -> bytes:
    """An envelope around statement bytes exactly as given (not canonicalized)."""
    signature = key.sign(b"airfed-ledger-entry/v1\n" + statement)
    return (
        b'{"signature":"'
        + base64.b64encode(signature)
        + b'","statement":'
        + statement
        + b"}"
    )


def _fields(datas: list[bytes]) -> list[tuple[str, str, str]]:
    entries = verify_entries(datas, KEYS, workers=1)
    return [(str(e.kind), e.author, e.key) for e in entries]


def test_the_fast_check_returns_what_the_thorough_one_reads() -> None:
    datas = [
        _sample(1),
        _sample(2, author="b"),
        _task_status(),
        make_entry(
            EntryKind.PLAN_REGISTERED,
            author="b",
            key="plan-é-\U0001f600",
            body={"spec_hash": "ab" * 32, "name": 'quote " and \\ and \n'},
            identity_key=KEY_B,
        ).data,
    ]
    fields = verify_entry_bytes(datas, KEYS)
    assert list(zip(fields.kinds, fields.authors, fields.keys, strict=True)) == (
        _fields(datas)
    )


def test_an_entry_the_fast_decoder_refuses_is_decided_by_the_thorough_path() -> None:
    # NaN is not JSON, but Python's decoder (the thorough path) reads it: the
    # replica must accept exactly what the log's own checks accept.
    statement = (
        b'{"author":"a","body":{"opener_checksum":"c","owner":"a",'
        b'"permissions":{"weight":NaN}},"key":"ds-1","kind":"dataset_registered",'
        b'"time":"2026-12-03T12:00:00.000Z","v":1}'
    )
    data = _signed_statement(statement, KEY_A)
    fields = verify_entry_bytes([_sample(0), data], KEYS)
    assert fields.keys == ["sample-0", "ds-1"]
    assert fields.kinds == ["data_sample_registered", "dataset_registered"]


def test_a_bad_signature_in_a_large_page_is_named_by_its_index() -> None:
    datas = [_sample(i) for i in range(2000)]
    assert len(verify_entry_bytes(datas, KEYS, first_index=1_000_000).keys) == 2000
    datas[1234] = datas[1234].replace(b"sample-1234", b"sample-9999")
    datas[1500] = datas[1500].replace(b"sample-1500", b"sample-9998")
    with pytest.raises(
        EntryError, match=r"^entry 1001234: the signature of a does not verify$"
    ):
        verify_entry_bytes(datas, KEYS, first_index=1_000_000)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (_task_status(status="failed"), "entry 7: the receipt signature of b"),
        (_sample(5, author="b").replace(b'"b"', b'"z"'), "entry 7: author 'z'"),
        (b'{"statement":{}}', "entry 7: entry is not a signed envelope"),
        (
            _signed_statement(b'{"v":1,"kind":"x"', KEY_A),
            "entry 7: entry cannot be decoded",
        ),
        (
            _signed_statement(
                b'{"author":"a","body":{},"key":"k","kind":"plan_registered",'
                b'"time":"t","v":1}',
                KEY_A,
            ),
            "entry 7: plan_registered entry lacks the body field 'spec_hash'",
        ),
        (
            _sample(5).replace(b'"signature":"', b'"signature":"!', 1)[:-1],
            "entry 7: entry",
        ),
    ],
)
def test_every_kind_of_bad_entry_gets_the_thorough_message(
    bad: bytes, message: str
) -> None:
    datas = [_sample(i) for i in range(5)] + [bad, _sample(6)]
    with pytest.raises(EntryError, match=message) as fast:
        verify_entry_bytes(datas, KEYS, first_index=2)
    with pytest.raises(EntryError) as thorough:
        verify_entries(datas, KEYS, first_index=2, workers=1)
    assert str(fast.value) == str(thorough.value)
