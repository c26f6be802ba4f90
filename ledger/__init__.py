"""airfed.ledger: the transparency log of every operation in a network.

Entries (``entries``) are signed by their author organization and kept in an
RFC 6962 Merkle tree (``merkle``) by the orchestrator's log (``log``,
``store``, ``server``), which signs a C2SP checkpoint after each batch
(``checkpoint``). Each partner's witness (``witness``) replicates the log,
checks it and cosigns; a checkpoint is final once a quorum cosigned it.
Nodes check that a compute plan is recorded under a final checkpoint
(``evidence.verify_plan_recorded``); ``audit`` replays a whole log.

The names below are imported on first use: the DAG factory needs only
``merkle`` (to prove a task belongs to its plan), not gRPC and SQLAlchemy.
"""

import importlib
import typing

if typing.TYPE_CHECKING:
    from airfed.ledger.client import LedgerClient
    from airfed.ledger.entries import Entry, EntryKind, make_entry, parse_entry
    from airfed.ledger.evidence import (
        InclusionEvidence,
        prove_entry,
        verify_plan_recorded,
    )
    from airfed.ledger.recorder import LedgerRecorder
    from airfed.ledger.witness import Witness

_LAZY = {
    "Entry": "airfed.ledger.entries",
    "EntryKind": "airfed.ledger.entries",
    "InclusionEvidence": "airfed.ledger.evidence",
    "LedgerClient": "airfed.ledger.client",
    "LedgerRecorder": "airfed.ledger.recorder",
    "Witness": "airfed.ledger.witness",
    "make_entry": "airfed.ledger.entries",
    "parse_entry": "airfed.ledger.entries",
    "prove_entry": "airfed.ledger.evidence",
    "verify_plan_recorded": "airfed.ledger.evidence",
}

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


# Hidden from mypy, which would otherwise take every submodule import
# (``from airfed.ledger import ledger_pb2_grpc``) for a call of it.
if not typing.TYPE_CHECKING:

    def __getattr__(name: str) -> typing.Any:
        module = _LAZY.get(name)
        if module is None:
            raise AttributeError(f"module 'airfed.ledger' has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        globals()[name] = value
        return value
