"""airfed.ledger: the transparency log of every operation in a network.

Entries (``entries``) are signed by their author organization and kept in an
RFC 6962 Merkle tree (``merkle``) by the orchestrator's log (``log``,
``store``, ``server``), which signs a C2SP checkpoint after each batch
(``checkpoint``). Each partner's witness (``witness``) replicates the log,
checks it and cosigns; a checkpoint is final once a quorum cosigned it.
Nodes check that a compute plan is recorded under a final checkpoint
(``evidence.verify_plan_recorded``); ``audit`` replays a whole log.
"""

from airfed.ledger.client import LedgerClient
from airfed.ledger.entries import Entry, EntryKind, make_entry, parse_entry
from airfed.ledger.evidence import InclusionEvidence, prove_entry, verify_plan_recorded
from airfed.ledger.recorder import LedgerRecorder
from airfed.ledger.witness import Witness

__all__ = [
    "Entry",
    "EntryKind",
    "InclusionEvidence",
    "LedgerClient",
    "LedgerRecorder",
    "Witness",
    "make_entry",
    "parse_entry",
    "prove_entry",
    "verify_plan_recorded",
]
