"""Helpers for the ledger's tests: signed entries by the network's members."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from airfed.ledger.entries import Entry, EntryKind, make_entry
from airfed.sdk.network import Network, load_identity_key


class Authors:
    """Signs entries as any member of a test network."""

    def __init__(self, network: Network) -> None:
        self.network = network

    def key(self, org: str) -> ed25519.Ed25519PrivateKey:
        return load_identity_key(Path(self.network.root) / org / "identity.key")

    def plan(
        self, org: str = "a", key: str | None = None, spec_hash: str = ""
    ) -> Entry:
        return make_entry(
            EntryKind.PLAN_REGISTERED,
            author=org,
            key=key or str(uuid.uuid4()),
            body={"spec_hash": spec_hash or uuid.uuid4().hex * 2},
            identity_key=self.key(org),
        )

    def many(self, count: int, org: str = "a") -> list[Entry]:
        key = self.key(org)
        return [
            make_entry(
                EntryKind.DATA_SAMPLE_REGISTERED,
                author=org,
                key=f"sample-{i}-{uuid.uuid4().hex[:8]}",
                body={"owner": org, "dataset_key": "d", "checksum": f"{i:064x}"},
                identity_key=key,
            )
            for i in range(count)
        ]


@pytest.fixture
def authors(network: Network) -> Authors:
    return Authors(network)
