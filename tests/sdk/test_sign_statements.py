"""Signing statements into ledger entries, as the orchestrator and nodes do.

A statement that cannot become an entry (its body cannot be made, or the
ledger's rules refuse it) is dropped, and the rest are still signed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from airfed.ledger.entries import EntryKind, KeyRing, parse_entry, verify_entry
from airfed.sdk._ledger import Statement, sign_statements


def _status(status: str) -> dict[str, Any]:
    return {"plan_key": "plan-1", "status": status, "worker": "b", "round": 1}


def _unreadable() -> Mapping[str, Any]:
    raise OSError("the receipt file is gone")


def test_every_statement_is_signed_in_order_by_its_author() -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    statements = [
        Statement("task_status", "task-1", _status("executing")),
        Statement("task_status", "task-1", lambda: _status("done")),
    ]

    entries = sign_statements(statements, author="a", identity_key=key)

    assert [e.body["status"] for e in entries] == ["executing", "done"]
    ring = KeyRing.of({"a": key.public_key()})
    for entry in entries:
        parsed = parse_entry(entry.data)
        verify_entry(parsed, ring)
        assert (parsed.kind, parsed.author, parsed.key) == (
            EntryKind.TASK_STATUS,
            "a",
            "task-1",
        )


def test_a_statement_that_cannot_be_signed_is_dropped_and_named(
    caplog: pytest.LogCaptureFixture,
) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    statements = [
        Statement("task_status", "task-1", _unreadable),
        Statement("task_status", "task-2", {"status": "done"}),  # no plan_key
        Statement("no_such_kind", "task-3", _status("done")),
        Statement("task_status", "task-4", _status("done")),
    ]

    with caplog.at_level("ERROR", logger="airfed.sdk._ledger"):
        entries = sign_statements(statements, author="a", identity_key=key)

    assert [e.key for e in entries] == ["task-4"]
    dropped = [r.getMessage() for r in caplog.records]
    assert len(dropped) == 3
    for name in ("task-1", "task-2", "task-3"):
        assert any(f"key={name}" in line for line in dropped), dropped
