"""The ledger's gRPC service over mutual TLS on loopback."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from airfed.ledger import merkle
from airfed.ledger._codegen import GENERATED, generate
from airfed.ledger._network import checkpoint_verifier
from airfed.ledger.checkpoint import SignedCheckpoint, cosign, witness_name
from airfed.ledger.client import LedgerClient
from airfed.ledger.errors import LedgerError, LedgerUnavailable, NotRecordedError
from airfed.ledger.server import LedgerServer, serve_log
from airfed.sdk.network import Network, init_network, load_identity_key
from tests.ledger.conftest import Authors
from tests.support.ports import free_port_block


@pytest.fixture
def log(network: Network, database_url: str) -> Iterator[LedgerServer]:
    server = serve_log(network.root, database_url, batch_interval=0.05)
    yield server
    server.stop()


def _client(network: Network, org: str) -> LedgerClient:
    return LedgerClient(network.ledger_address, network.root / org, timeout=20)


def test_append_prove_and_cosign_over_mutual_tls(
    network: Network, log: LedgerServer, authors: Authors
) -> None:
    verifier = checkpoint_verifier(network)
    with _client(network, "a") as client:
        entries = authors.many(6)
        outcome = client.append(entries)
        assert outcome.indices == list(range(6))
        latest = verifier.verify(client.latest_checkpoint())
        assert latest.checkpoint.size == 6 and not latest.final

        proof = client.inclusion_proof(leaf_hash=entries[3].leaf_hash)
        assert proof.index == 3 and proof.tree_size == 6
        assert merkle.verify_inclusion(
            entries[3].data, 3, 6, proof.hashes, latest.checkpoint.root
        )
        stored = client.entries(0, 6)
        assert [data for _, data in stored] == [e.data for e in entries]
        assert client.find(entries[2].key) == [(2, entries[2].data)]

        more = client.append(authors.many(3))
        new = verifier.verify(more.checkpoint)
        hashes = client.consistency_proof(6, new.checkpoint.size)
        assert merkle.verify_consistency(
            6, 9, latest.checkpoint.root, new.checkpoint.root, hashes
        )
        with pytest.raises(NotRecordedError, match="final"):
            client.latest_checkpoint(final_only=True)

    for org in ("b", "c"):
        key = load_identity_key(network.root / org / "identity.key")
        line = cosign(new.checkpoint, witness_name(network.name, org), key).line()
        with _client(network, org) as witness:
            note = witness.add_cosignature(9, line)
    cosigned = verifier.verify(note)
    assert cosigned.cosigners == {"b", "c"} and cosigned.final
    with _client(network, "a") as client:
        final = verifier.verify(client.latest_checkpoint(final_only=True))
    assert final.checkpoint.size == 9 and final.final


def test_an_organization_appends_only_its_own_entries(
    network: Network, log: LedgerServer, authors: Authors
) -> None:
    with _client(network, "b") as client:
        with pytest.raises(LedgerError, match="may append only its own entries"):
            client.append([authors.plan(org="a")])
        tampered = authors.plan(org="b").data.replace(b'"v":1', b'"v":2')
        with pytest.raises(LedgerError, match="version"):
            client.append([tampered])
        key = load_identity_key(network.root / "c" / "identity.key")
        checkpoint = SignedCheckpoint.parse(client.latest_checkpoint()).checkpoint
        line = cosign(checkpoint, witness_name(network.name, "c"), key).line()
        with pytest.raises(LedgerError, match="not from the key"):
            client.add_cosignature(checkpoint.size, line)
        assert client.latest_checkpoint().startswith(
            f"airfed.local/{network.name}/log\n0\n"
        )


def test_stream_sends_existing_then_new_entries(
    network: Network, log: LedgerServer, authors: Authors
) -> None:
    with _client(network, "a") as client:
        client.append(authors.many(2))
        received: list[int] = []
        done = threading.Event()

        def consume() -> None:
            with _client(network, "b") as reader:
                for index, _ in reader.stream(0):
                    received.append(index)
                    if len(received) == 5:
                        break
            done.set()

        thread = threading.Thread(target=consume)
        thread.start()
        client.append(authors.many(3))
        assert done.wait(20)
        thread.join()
    assert received == [0, 1, 2, 3, 4]


def test_a_client_from_another_network_cannot_connect(
    network: Network, log: LedgerServer, tmp_path: Path
) -> None:
    stranger = init_network(tmp_path / "other", ["z"], base_port=free_port_block(3))
    with (
        LedgerClient(network.ledger_address, stranger.root / "z", timeout=5) as client,
        pytest.raises(LedgerUnavailable),
    ):
        client.latest_checkpoint()


def test_checked_in_grpc_code_matches_the_proto(tmp_path: Path) -> None:
    generate(tmp_path)
    package = Path(__file__).resolve().parents[2] / "ledger"
    for name in GENERATED:
        assert (tmp_path / name).read_text() == (package / name).read_text(), name
