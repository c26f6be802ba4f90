"""The orchestrator accepts only compute plans that their creator registered.

When ``[airfed] ledger`` is on, ``POST /airfed/api/plans`` looks the plan up
in the log before it stores the spec: there must be a ``plan_registered``
entry about the plan's key, signed by the creator organization, whose spec
hash is the hash of the spec submitted. The SDK's ``Client.submit`` (and
``airfed plan submit``) writes that entry first; the orchestrator never signs
a plan in a creator's name. Whether the entry is final yet is for the nodes
to check before they run a task.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from fastapi import HTTPException, status

if TYPE_CHECKING:
    from airfed.sdk.spec import PlanSpec

__all__ = ["require_registered_plan"]

logger = logging.getLogger(__name__)


def require_registered_plan(spec: PlanSpec) -> None:
    """Raise 422 unless the log holds the creator's registration of ``spec``."""
    from airfed.ledger._network import key_ring
    from airfed.ledger.client import LedgerClient
    from airfed.ledger.entries import EntryKind, parse_entry, verify_entry
    from airfed.ledger.errors import EntryError, LedgerError, LedgerUnavailable
    from airfed.operators._settings import orchestrator_profile
    from airfed.sdk.spec import spec_hash

    wanted = spec_hash(spec)
    creator = spec.creator.split("/")[0]
    try:
        with LedgerClient.for_profile(orchestrator_profile(), timeout=10.0) as client:
            keys = key_ring(client.network)
            found = client.find(spec.key)
    except LedgerUnavailable as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc)) from exc
    except LedgerError as exc:
        raise HTTPException(status.HTTP_502_BAD_GATEWAY, str(exc)) from exc
    for index, data in found:
        try:
            entry = parse_entry(data)
            verify_entry(entry, keys)
        except EntryError as exc:
            logger.warning("ledger entry rejected index=%d error=%s", index, exc)
            continue
        if (
            entry.kind is EntryKind.PLAN_REGISTERED
            and entry.key == spec.key
            and entry.author == creator
            and entry.body.get("spec_hash") == wanted
        ):
            return
    raise HTTPException(
        status.HTTP_422_UNPROCESSABLE_CONTENT,
        f"plan {spec.key} (spec hash {wanted[:12]}...) is not registered on the "
        f"ledger by its creator {creator}; submit it with 'airfed plan submit' "
        "or Client.submit, which register it first",
    )
