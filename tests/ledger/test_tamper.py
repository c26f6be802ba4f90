"""An attacker with access to the log's database: every change is detected.

Each test drops the append-only triggers first, as such an attacker would,
then changes the database behind the log's back and runs the verification.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric import ed25519

from airfed.ledger._network import key_ring
from airfed.ledger.audit import AuditReport, audit_store
from airfed.ledger.checkpoint import Checkpoint, log_origin, sign_checkpoint
from airfed.ledger.entries import EntryKind, make_entry
from airfed.ledger.log import LogWriter
from airfed.ledger.store import APPEND_ONLY_TABLES, LedgerStore
from airfed.sdk.network import Network, load_identity_key
from tests.ledger.conftest import Authors


@pytest.fixture
def store(network: Network, database_url: str, authors: Authors) -> LedgerStore:
    log_key = load_identity_key(network.root / "orchestrator" / "log.key")
    writer = LogWriter(
        LedgerStore(database_url),
        log_key,
        log_origin(network.name),
        key_ring(network),
        batch_interval=0.01,
    ).start()
    try:
        for batch in range(4):  # checkpoints at 0, 3, 6, 9, 12
            writer.append(authors.many(3, org="ab"[batch % 2]))
    finally:
        writer.stop()
    _drop_triggers(writer.store.engine)
    return writer.store


def _drop_triggers(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        for table in APPEND_ONLY_TABLES:
            if engine.dialect.name == "postgresql":
                for name in ("append_only", "no_truncate"):
                    conn.exec_driver_sql(f"DROP TRIGGER {table}_{name} ON {table}")
            else:
                for op in ("update", "delete"):
                    conn.exec_driver_sql(f"DROP TRIGGER {table}_no_{op}")


def _sql(store: LedgerStore, statement: str, **params: object) -> None:
    with store.engine.begin() as conn:
        conn.execute(sa.text(statement), params)


def _audit(store: LedgerStore, network: Network) -> AuditReport:
    return audit_store(store, network)


def test_an_untouched_log_verifies(store: LedgerStore, network: Network) -> None:
    report = _audit(store, network)
    assert report.ok, report.problems
    assert report.entries == 12 and report.checkpoints == 5
    assert report.authors == {"a": 6, "b": 6}


def test_a_changed_entry_is_detected(store: LedgerStore, network: Network) -> None:
    data = store.entries(4, 5)[0].data
    changed = data.replace(b'"dataset_key":"d"', b'"dataset_key":"e"')
    _sql(store, "UPDATE ledger_entries SET data = :d WHERE idx = 4", d=changed)
    report = _audit(store, network)
    assert report.first_bad_entry == 4
    assert report.problems[0] == "entry 4: the signature of b does not verify"
    assert any("checkpoint 6: its root does not match" in p for p in report.problems)


def test_a_removed_entry_is_detected(store: LedgerStore, network: Network) -> None:
    _sql(store, "DELETE FROM ledger_entries WHERE idx = 5")
    report = _audit(store, network)
    assert report.first_bad_entry == 5
    assert report.problems[0] == "entry 5 is missing: the next stored entry is 6"


def test_two_reordered_entries_are_detected(
    store: LedgerStore, network: Network
) -> None:
    _sql(store, "UPDATE ledger_entries SET idx = -1 WHERE idx = 7")
    _sql(store, "UPDATE ledger_entries SET idx = 7 WHERE idx = 8")
    _sql(store, "UPDATE ledger_entries SET idx = 8 WHERE idx = -1")
    report = _audit(store, network)
    assert report.first_bad_entry == 7
    assert report.problems[0].startswith(
        "entry 7: it is not the entry the tree holds at index 7"
    )


def test_a_forged_signature_is_detected(
    store: LedgerStore, network: Network, authors: Authors
) -> None:
    # An entry that claims b as its author, signed with a's key.
    forged = make_entry(
        EntryKind.PLAN_REGISTERED,
        author="b",
        key="plan-forged",
        body={"spec_hash": "0" * 64},
        identity_key=authors.key("a"),
    )
    _sql(
        store,
        "UPDATE ledger_entries SET data = :d, leaf_hash = :h WHERE idx = 10",
        d=forged.data,
        h=forged.leaf_hash,
    )
    report = _audit(store, network)
    assert report.first_bad_entry == 10
    assert report.problems[0] == "entry 10: the signature of b does not verify"


def test_a_replaced_checkpoint_is_detected(
    store: LedgerStore, network: Network
) -> None:
    origin = log_origin(network.name)
    stranger = ed25519.Ed25519PrivateKey.generate()
    fake = sign_checkpoint(Checkpoint(origin, 6, b"\x07" * 32), stranger)
    _sql(store, "UPDATE ledger_checkpoints SET note = :n WHERE size = 6", n=fake.text())
    report = _audit(store, network)
    assert report.problems == ["checkpoint 6 is not signed by the log key"]

    # The operator holds the log key and re-signs a checkpoint of another root.
    log_key = load_identity_key(network.root / "orchestrator" / "log.key")
    resigned = sign_checkpoint(Checkpoint(origin, 6, b"\x07" * 32), log_key)
    _sql(
        store,
        "UPDATE ledger_checkpoints SET note = :n WHERE size = 6",
        n=resigned.text(),
    )
    report = _audit(store, network)
    assert report.problems[0].startswith(
        "checkpoint 6: its root does not match the stored entries"
    )
    assert "checkpoint 9 is not consistent with checkpoint 6" in report.problems


def test_the_cli_names_the_first_bad_entry(
    store: LedgerStore, network: Network
) -> None:
    command = [
        str(Path(sys.executable).parent / "airfed"),
        "ledger",
        "verify",
        "--network",
        str(network.root),
        "--database-url",
        store.url,
    ]
    clean = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert clean.returncode == 0, clean.stderr
    assert "the ledger verifies" in clean.stdout
    assert "entries" in clean.stdout and "12" in clean.stdout

    # Opening the log put the triggers back; the attacker drops them again.
    _drop_triggers(store.engine)
    _sql(store, "DELETE FROM ledger_entries WHERE idx = 2")
    broken = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert broken.returncode == 1
    assert "first bad entry: 2; entry 2 is missing" in broken.stderr
    assert "Traceback" not in broken.stderr
