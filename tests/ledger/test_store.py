"""The log's store: append-only tables, batches with checkpoints, proofs."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from airfed.ledger import merkle
from airfed.ledger._network import checkpoint_verifier, key_ring
from airfed.ledger.checkpoint import log_origin
from airfed.ledger.errors import EntryError
from airfed.ledger.log import LogWriter
from airfed.ledger.store import LedgerStore
from airfed.sdk.network import Network, load_identity_key
from tests.ledger.conftest import Authors


def _writer(network: Network, url: str, interval: float = 0.05) -> LogWriter:
    log_key = load_identity_key(Path(network.root) / "orchestrator" / "log.key")
    return LogWriter(
        LedgerStore(url),
        log_key,
        log_origin(network.name),
        key_ring(network),
        batch_interval=interval,
    )


def test_batches_end_with_signed_checkpoints_and_proofs_verify(
    network: Network, database_url: str, authors: Authors
) -> None:
    writer = _writer(network, database_url).start()
    try:
        first = writer.append(authors.many(5))
        second = writer.append(authors.many(6, org="b"))
    finally:
        writer.stop()
    store = writer.store
    assert [r.index for r in first] == list(range(5))
    assert [r.index for r in second] == list(range(5, 11))
    verifier = checkpoint_verifier(network)
    latest = verifier.verify(store.checkpoint().text())  # type: ignore[union-attr]
    assert latest.checkpoint.size == 11
    assert store.checkpoint_sizes() == [0, 5, 11]

    datas = [e.data for e in store.entries(0, 11)]
    assert latest.checkpoint.root == merkle.tree_root(datas)
    for index in (0, 4, 10):
        proof = merkle.inclusion_proof_from(store, index, 11)
        assert proof == merkle.inclusion_proof(datas, index)
        assert merkle.verify_inclusion(
            datas[index], index, 11, proof, latest.checkpoint.root
        )
    old = verifier.verify(store.checkpoint(5).text())  # type: ignore[union-attr]
    proof = merkle.consistency_proof_from(store, 5, 11)
    assert merkle.verify_consistency(
        5, 11, old.checkpoint.root, latest.checkpoint.root, proof
    )


def test_the_database_refuses_updates_and_deletes(
    network: Network, database_url: str, authors: Authors
) -> None:
    writer = _writer(network, database_url).start()
    try:
        writer.append(authors.many(3))
    finally:
        writer.stop()
    assert writer.store.add_cosignature(3, "b", "\u2014 w AAAAAAA=")
    engine = writer.store.engine
    attacks = [
        "UPDATE ledger_entries SET kind = 'x' WHERE idx = 1",
        "DELETE FROM ledger_entries WHERE idx = 2",
        "UPDATE ledger_nodes SET hash = hash",
        "DELETE FROM ledger_checkpoints",
        "UPDATE ledger_checkpoints SET note = 'x'",
        "DELETE FROM ledger_cosignatures",
    ]
    for statement in attacks:
        with (
            pytest.raises(sa.exc.DatabaseError, match="append-only"),
            engine.begin() as conn,
        ):
            conn.exec_driver_sql(statement)
    assert writer.store.size() == 3
    assert len(writer.store.entries(0, 3)) == 3


def test_restart_continues_the_same_tree(
    network: Network, database_url: str, authors: Authors
) -> None:
    writer = _writer(network, database_url).start()
    writer.append(authors.many(7))
    writer.stop()
    again = _writer(network, database_url).start()
    try:
        results = again.append(authors.many(4))
    finally:
        again.stop()
    assert [r.index for r in results] == [7, 8, 9, 10]
    datas = [e.data for e in again.store.entries(0, 11)]
    assert results[-1].checkpoint.checkpoint.root == merkle.tree_root(datas)


def test_duplicates_return_the_same_index_and_bad_entries_are_refused(
    network: Network, tmp_path: Path, authors: Authors
) -> None:
    writer = _writer(network, f"sqlite:///{tmp_path / 'log.db'}").start()
    try:
        entry = authors.plan()
        first = writer.append([entry, entry])
        again = writer.append([entry])
        assert first[0].index == first[1].index == again[0].index == 0
        with pytest.raises(EntryError, match="only its own entries"):
            writer.check(authors.plan(org="b").data, caller="a")
        forged = entry.data.replace(b'"plan_registered"', b'"plan_registered" ')
        with pytest.raises(EntryError):
            writer.check(forged, caller="a")
        assert writer.check(entry.data, caller="a").key == entry.key
    finally:
        writer.stop()
    assert writer.store.size() == 1
