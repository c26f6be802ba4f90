"""Witnesses: replicas that check the log and cosign it; split-view alarms."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from airfed.ledger.checkpoint import SignedCheckpoint
from airfed.ledger.client import LedgerClient
from airfed.ledger.errors import (
    LedgerError,
    LedgerUnavailable,
    NotRecordedError,
    SplitViewError,
)
from airfed.ledger.evidence import prove_entry, verify_plan_recorded
from airfed.ledger.server import LedgerServer, serve_log, serve_replica
from airfed.ledger.witness import Witness
from airfed.sdk.network import Network
from tests.ledger.conftest import Authors
from tests.support.ports import free_port


@pytest.fixture
def log(network: Network, tmp_path: Path) -> Iterator[LedgerServer]:
    url = f"sqlite:///{tmp_path / 'log.db'}"
    server = serve_log(network.root, url, batch_interval=0.05)
    yield server
    server.stop()


def _client(network: Network, org: str, address: str = "") -> LedgerClient:
    return LedgerClient(address or network.ledger_address, network.root / org)


def _witness(network: Network, org: str, client: LedgerClient, url: str) -> Witness:
    return Witness(network.root / org, client, database_url=url, workers=2)


def test_witnesses_cosign_and_make_the_plan_final(
    network: Network, log: LedgerServer, authors: Authors, database_url: str
) -> None:
    plan = authors.plan(org="a", spec_hash="5" * 64)
    with _client(network, "c") as client:
        client.append(authors.many(3, org="c"))
    with _client(network, "a") as client:
        client.append([*authors.many(4), plan])
        with pytest.raises(NotRecordedError, match="final"):
            verify_plan_recorded(client, plan.key, "5" * 64)

    with _client(network, "b") as b_client, _client(network, "c") as c_client:
        witness_b = _witness(network, "b", b_client, database_url)
        witness_c = _witness(
            network,
            "c",
            c_client,
            "sqlite:///" + str(network.root / "c" / "replica.db"),
        )
        first = witness_b.sync()
        assert first.cosigned and first.size == 8 and first.fetched == 8
        second = witness_c.sync()
        assert second.cosigned
        again = witness_b.sync()
        assert not again.cosigned and again.fetched == 0
        assert witness_b.health()["status"] == "ok"
        assert witness_b.health()["cosigned_size"] == 8

        b_client.append(authors.many(5, org="b"))
        grown = witness_b.sync()
        assert grown.size == 13 and grown.fetched == 5 and grown.cosigned
        replica = serve_replica(witness_b)
        try:
            with _client(network, "c", replica.address) as reader:
                served = SignedCheckpoint.parse(reader.latest_checkpoint())
                assert served.checkpoint.size == 13
                assert len(reader.entries(0, 13)) == 13
                with pytest.raises(LedgerError, match="read-only"):
                    reader.append(authors.many(1, org="c"))
        finally:
            replica.stop()
        witness_b.close()
        witness_c.close()

    with _client(network, "c") as client:
        evidence = verify_plan_recorded(client, plan.key, "5" * 64)
        assert evidence.index == 7 and evidence.final
        assert evidence.cosigners == {"b", "c"}
        with pytest.raises(NotRecordedError, match="spec hash"):
            verify_plan_recorded(client, plan.key, "6" * 64)
        with pytest.raises(NotRecordedError, match="nothing about"):
            prove_entry(client, "no-such-plan")


def test_a_forked_log_raises_the_alarm_and_the_witness_stops_cosigning(
    network: Network, log: LedgerServer, authors: Authors, tmp_path: Path
) -> None:
    # The log's operator (who holds the log key) runs a second log that
    # forks after the entries the witness has seen.
    fork = serve_log(
        network.root,
        f"sqlite:///{tmp_path / 'fork.db'}",
        address=f"127.0.0.1:{free_port()}",
        batch_interval=0.05,
    )
    shared = authors.many(3)
    try:
        with _client(network, "a") as honest, _client(network, "a", fork.address) as f:
            honest.append(shared)
            f.append(shared)
            honest.append(authors.many(2))
            f.append(authors.many(2))  # same size, other entries

        with _client(network, "b") as client:
            witness = _witness(network, "b", client, f"sqlite:///{tmp_path / 'b.db'}")
            assert witness.sync().cosigned
        with _client(network, "b", fork.address) as forked:
            witness.client = forked
            with pytest.raises(SplitViewError, match="split view"):
                witness.sync()
        health = witness.health()
        assert health["status"] == "alarm"
        assert "differs from the root this witness holds" in str(health["alarms"])
        with _client(network, "b") as client:
            witness.client = client
            with pytest.raises(SplitViewError, match="in alarm"):
                witness.sync()
        witness.close()
    finally:
        fork.stop()


def test_a_rewritten_log_fails_the_consistency_check(
    network: Network, authors: Authors, tmp_path: Path
) -> None:
    first = serve_log(
        network.root, f"sqlite:///{tmp_path / 'one.db'}", batch_interval=0.05
    )
    rewritten = serve_log(
        network.root,
        f"sqlite:///{tmp_path / 'two.db'}",
        address=f"127.0.0.1:{free_port()}",
        batch_interval=0.05,
    )
    try:
        with (
            _client(network, "a") as one,
            _client(network, "a", rewritten.address) as two,
        ):
            one.append(authors.many(3))
            two.append(authors.many(6))  # a different history, and longer
        with _client(network, "c") as client:
            witness = _witness(network, "c", client, f"sqlite:///{tmp_path / 'c.db'}")
            witness.sync()
        with _client(network, "c", rewritten.address) as client:
            witness.client = client
            with pytest.raises(
                SplitViewError, match="not consistent with checkpoint 3"
            ):
                witness.sync()
        assert witness.health()["alarms"][0]["kind"] == "inconsistent checkpoint"
        witness.close()
    finally:
        first.stop()
        rewritten.stop()


def test_a_cosignature_the_log_missed_is_sent_again(
    network: Network, log: LedgerServer, authors: Authors, tmp_path: Path
) -> None:
    with _client(network, "a") as client:
        client.append(authors.many(2))
    with _client(network, "b") as client:
        witness = _witness(network, "b", client, f"sqlite:///{tmp_path / 'b.db'}")
        send = client.add_cosignature

        def lost(size: int, line: str) -> str:
            raise LedgerUnavailable("connection reset while sending")

        client.add_cosignature = lost  # type: ignore[method-assign]
        with pytest.raises(LedgerUnavailable):
            witness.sync()
        client.add_cosignature = send  # type: ignore[method-assign]
        kept = witness.store.cosignature_line(2, "b")
        assert kept is not None
        result = witness.sync()
        assert result.cosigned and kept in result.note
        witness.close()
