"""Proof that something is in the ledger, under a checkpoint partners cosigned.

A node calls ``verify_plan_recorded`` before it runs a task: the task's
compute plan must be registered in the log (with the spec hash the node was
given), and the entry must be included in a *final* checkpoint, one that
``witness_quorum`` partners cosigned. The node trusts neither the log nor the
orchestrator for this: it checks the entry's signature, the checkpoint's
signatures and the inclusion proof itself.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from airfed.ledger import merkle
from airfed.ledger._network import checkpoint_verifier, key_ring
from airfed.ledger.client import LedgerClient
from airfed.ledger.entries import Entry, EntryKind, parse_entry, verify_entry
from airfed.ledger.errors import EntryError, NotRecordedError, ProofError
from airfed.sdk.network import Network

__all__ = ["InclusionEvidence", "prove_entry", "verify_plan_recorded"]


@dataclass(frozen=True)
class InclusionEvidence:
    """An entry, its place in the log and the proof against a checkpoint."""

    entry: Entry
    index: int
    tree_size: int
    root: bytes
    proof: list[bytes]
    checkpoint: str  # the signed note, with its cosignatures
    cosigners: frozenset[str]
    final: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.entry.key,
            "kind": str(self.entry.kind),
            "index": self.index,
            "leaf_hash": self.entry.leaf_hash.hex(),
            "tree_size": self.tree_size,
            "root": base64.b64encode(self.root).decode(),
            "proof": [h.hex() for h in self.proof],
            "checkpoint": self.checkpoint,
            "cosigners": sorted(self.cosigners),
            "final": self.final,
        }


def prove_entry(
    client: LedgerClient,
    key: str,
    accept: Callable[[Entry], bool] = lambda entry: True,
    *,
    final_only: bool = True,
    network: Network | None = None,
) -> InclusionEvidence:
    """The latest entry about ``key`` that ``accept`` takes, with its proof.

    Raises ``NotRecordedError`` if there is no such entry (or, with
    ``final_only``, none under a final checkpoint yet) and ``ProofError``
    if the log's proof does not verify.
    """
    network = network or client.network
    keys = key_ring(network)
    candidates = []
    for index, data in client.find(key, limit=1000):
        try:
            entry = parse_entry(data)
            verify_entry(entry, keys)
        except EntryError as exc:
            raise ProofError(f"ledger entry {index} about {key}: {exc}") from exc
        if entry.key == key and accept(entry):
            candidates.append((index, entry))
    if not candidates:
        raise NotRecordedError(f"nothing about {key} is recorded in the ledger")

    verified = checkpoint_verifier(network).verify(
        client.latest_checkpoint(final_only=final_only)
    )
    size = verified.checkpoint.size
    within = [(i, e) for i, e in candidates if i < size]
    if not within:
        raise NotRecordedError(
            f"the ledger entry about {key} is not under a final checkpoint yet; "
            "retry once the witnesses have cosigned"
        )
    index, entry = within[-1]
    proof = client.inclusion_proof(index, tree_size=size).hashes
    if not merkle.verify_inclusion(
        entry.data, index, size, proof, verified.checkpoint.root
    ):
        raise ProofError(
            f"the log's inclusion proof for entry {index} ({key}) does not verify "
            f"against checkpoint {size}"
        )
    return InclusionEvidence(
        entry=entry,
        index=index,
        tree_size=size,
        root=verified.checkpoint.root,
        proof=proof,
        checkpoint=verified.note,
        cosigners=verified.cosigners,
        final=verified.final,
    )


def verify_plan_recorded(
    client: LedgerClient,
    plan_key: str,
    spec_hash: str,
    *,
    network: Network | None = None,
) -> InclusionEvidence:
    """Evidence that compute plan ``plan_key`` with ``spec_hash`` is final."""

    def registers_spec(entry: Entry) -> bool:
        return (
            entry.kind is EntryKind.PLAN_REGISTERED
            and entry.body.get("spec_hash") == spec_hash
        )

    try:
        return prove_entry(client, plan_key, registers_spec, network=network)
    except NotRecordedError as exc:
        raise NotRecordedError(
            f"compute plan {plan_key} with spec hash {spec_hash[:12]}... is not "
            f"recorded under a final checkpoint: {exc}"
        ) from exc
