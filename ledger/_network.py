"""What the ledger takes from a network: keys, names and the quorum."""

from __future__ import annotations

import base64

from airfed.ledger.checkpoint import CheckpointVerifier, log_origin, witness_name
from airfed.ledger.entries import KeyRing
from airfed.sdk.network import Network

__all__ = ["checkpoint_verifier", "key_ring"]


def key_ring(network: Network) -> KeyRing:
    """Every member's identity key, the orchestrator's included."""
    return KeyRing({o.id: o.identity_public_key for o in network.organizations})


def checkpoint_verifier(network: Network) -> CheckpointVerifier:
    """Checks checkpoints of the network's log and its partners' cosignatures."""
    witnesses = {
        org.id: (
            witness_name(network.name, org.id),
            base64.b64decode(org.identity_public_key),
        )
        for org in network.partners
    }
    return CheckpointVerifier(
        origin=log_origin(network.name),
        log_public_key=base64.b64decode(network.log_public_key),
        witnesses=witnesses,
        quorum=network.witness_quorum,
    )
