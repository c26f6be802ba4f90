"""Errors raised by the ledger.

::

    LedgerError                 base of every ledger error (an AirfedError)
     +-- EntryError             an entry is malformed or its signature is wrong
     +-- CheckpointError        a checkpoint or one of its signatures is wrong
     +-- LedgerStoreError       the ledger's database refused or failed
     +-- LedgerUnavailable      the log could not be reached over gRPC
     +-- ProofError             a proof does not verify against a checkpoint
     +-- SplitViewError         the log showed two views (a witness's alarm)
     +-- NotRecordedError       a plan or asset is not (yet) in a final checkpoint
"""

from __future__ import annotations

from airfed.sdk.errors import AirfedError

__all__ = [
    "CheckpointError",
    "EntryError",
    "LedgerError",
    "LedgerStoreError",
    "LedgerUnavailable",
    "NotRecordedError",
    "ProofError",
    "SplitViewError",
]


# mypy runs on the folders (``ledger``), so ``airfed.*`` imports are Any to it.
class LedgerError(AirfedError):  # type: ignore[misc,unused-ignore]
    """Base of every error the ledger raises."""


class EntryError(LedgerError):
    """A ledger entry is malformed, or its signature does not verify."""


class CheckpointError(LedgerError):
    """A checkpoint cannot be read, or one of its signatures does not verify."""


class LedgerStoreError(LedgerError):
    """The ledger's database refused an operation or could not be reached."""


class LedgerUnavailable(LedgerError):
    """The ledger's log could not be reached or refused the call."""


class ProofError(LedgerError):
    """An inclusion or consistency proof does not verify."""


class SplitViewError(LedgerError):
    """The log showed inconsistent views: a witness refuses to cosign."""


class NotRecordedError(LedgerError):
    """What was asked for is not in the ledger under a final checkpoint."""
