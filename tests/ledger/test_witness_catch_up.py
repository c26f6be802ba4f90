"""A long catch-up: pages checked on worker processes, joined onto the tree.

The witness checks pages on processes only when it has many entries to
fetch; these tests lower that threshold and the page size so that a small
log takes the same path, with pages that do not align with the tree.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from airfed.ledger import merkle, witness
from airfed.ledger.checkpoint import SignedCheckpoint
from airfed.ledger.client import LedgerClient
from airfed.ledger.entries import EntryKind, make_entry
from airfed.ledger.errors import SplitViewError
from airfed.ledger.server import LedgerServer, serve_log
from airfed.ledger.witness import Witness
from airfed.sdk.network import Network
from tests.ledger.conftest import Authors


@pytest.fixture
def log(network: Network, tmp_path: Path) -> Iterator[LedgerServer]:
    server = serve_log(
        network.root, f"sqlite:///{tmp_path / 'log.db'}", batch_interval=0.05
    )
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _long_catch_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(witness, "_PROCESS_MIN", 1)
    monkeypatch.setattr(witness, "_PAGE", 37)
    monkeypatch.setattr(witness, "_COMMIT_EVERY", 100)


def _append(network: Network, authors: Authors, count: int) -> None:
    with LedgerClient(network.ledger_address, network.root / "a") as client:
        client.append(authors.many(count))


def _witness(network: Network, client: LedgerClient, tmp_path: Path) -> Witness:
    url = f"sqlite:///{tmp_path / 'replica.db'}"
    return Witness(network.root / "c", client, database_url=url, workers=2)


def test_the_replica_rebuilds_the_logs_tree_on_worker_processes(
    network: Network, log: LedgerServer, authors: Authors, tmp_path: Path
) -> None:
    _append(network, authors, 300)
    _append(network, authors, 45)
    with LedgerClient(network.ledger_address, network.root / "c") as client:
        replica = _witness(network, client, tmp_path)
        result = replica.sync()
        assert result.cosigned and result.size == 345 and result.fetched == 345
        _append(network, authors, 18)  # from an unaligned size onwards
        grown = replica.sync()
        assert grown.cosigned and grown.size == 363 and grown.fetched == 18
        checkpoint = SignedCheckpoint.parse(grown.note).checkpoint
        store = replica.store
        assert merkle.root_from(store, 363) == checkpoint.root
        earlier = log.servicer.store.checkpoint(345)
        assert earlier is not None
        assert merkle.root_from(store, 345) == earlier.checkpoint.root
        for index in (0, 36, 37, 255, 344, 362):
            proof = merkle.inclusion_proof_from(store, index, 363)
            assert proof == merkle.inclusion_proof_from(log.servicer.store, index, 363)
            data = store.entries(index, index + 1)[0].data
            assert merkle.verify_inclusion(data, index, 363, proof, checkpoint.root)
        assert replica.health()["replica_size"] == 363
        replica.close()


def test_a_forged_entry_raises_an_alarm_naming_it(
    network: Network, log: LedgerServer, authors: Authors, tmp_path: Path
) -> None:
    _append(network, authors, 120)
    forged = make_entry(
        EntryKind.PLAN_REGISTERED,
        author="b",
        key="plan-forged",
        body={"spec_hash": "0" * 64},
        identity_key=authors.key("a"),
    )
    engine = log.servicer.store.engine
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP TRIGGER ledger_entries_no_update")
        conn.execute(
            sa.text("UPDATE ledger_entries SET data = :d WHERE idx = 77"),
            {"d": forged.data},
        )
    with LedgerClient(network.ledger_address, network.root / "c") as client:
        replica = _witness(network, client, tmp_path)
        with pytest.raises(
            SplitViewError, match="entry 77: the signature of b does not verify"
        ):
            replica.sync()
        health = replica.health()
        assert health["status"] == "alarm"
        assert health["alarms"][0]["kind"] == "bad entry"
        assert replica.store.cosigned_sizes("c") == []
        replica.close()
