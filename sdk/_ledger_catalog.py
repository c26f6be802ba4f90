"""The catalog as the ledger records it: assets derived from signed entries.

:func:`ledger_catalog` replays the log's entries (checking every signature
against the network's identity keys; an entry that does not verify is left
out with a warning) and builds a :class:`~airfed.sdk.catalog.Catalog` of the
datasets, data samples and functions registered on the network, with their
latest permissions. Each asset's ``nodes`` are the organizations whose node
signed its registration; ``data`` holds what the entry says (hashes,
permissions, the entry's index) and never more. Models and performances are
not in it: the ledger holds their hashes in task receipts, not their
listings.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any, cast

import pydantic

from airfed.sdk.catalog import Asset, AssetKind, Catalog
from airfed.sdk.spec import Permissions

__all__ = ["ledger_assets", "ledger_catalog"]

logger = logging.getLogger(__name__)

_KINDS: dict[str, AssetKind] = {
    "dataset_registered": "dataset",
    "data_sample_registered": "datasample",
    "function_registered": "function",
}
_PAGE = 5000


def _entries(client: Any) -> Iterator[tuple[int, Any]]:
    """Every entry of the log whose signature verifies, with its index."""
    from airfed.ledger._network import key_ring
    from airfed.ledger.entries import parse_entry, verify_entry
    from airfed.ledger.errors import EntryError

    keys = key_ring(client.network)
    start = 0
    while page := client.entries_page(start, start + _PAGE):
        for index, data in page:
            try:
                entry = parse_entry(data)
                verify_entry(entry, keys)
            except EntryError as exc:
                logger.warning("ledger entry left out index=%d error=%s", index, exc)
                continue
            yield index, entry
        start = page[-1][0] + 1


def ledger_assets(client: Any) -> list[Asset]:
    """Datasets, data samples and functions as the ledger's entries record them."""
    found: dict[str, dict[str, Any]] = {}
    nodes: dict[str, set[str]] = {}
    for index, entry in _entries(client):
        kind = str(entry.kind)
        body = dict(entry.body)
        if kind in _KINDS:
            known = found.setdefault(
                entry.key, {"kind": _KINDS[kind], "key": entry.key, **body}
            )
            known["ledger_index"] = known.get("ledger_index", index)
            nodes.setdefault(entry.key, set()).add(entry.author)
        elif kind == "permissions_changed" and entry.author in nodes.get(entry.key, ()):
            found[entry.key].update(
                {k: v for k, v in body.items() if k != "asset_kind"}
            )
    return [_asset(item, nodes[key]) for key, item in found.items()]


def _asset(item: dict[str, Any], nodes: set[str]) -> Asset:
    try:
        permissions = Permissions.model_validate(item.get("permissions") or {})
    except pydantic.ValidationError:
        permissions = Permissions()
    owner = str(item.get("owner") or min(nodes))
    return Asset(
        kind=cast(AssetKind, item["kind"]),
        key=str(item["key"]),
        owner=owner,
        name=str(item.get("name") or ""),
        permissions=permissions,
        data={**item, "owner": owner, "nodes": sorted(nodes)},
        nodes=tuple(sorted(nodes)),
    )


def ledger_catalog(client: Any) -> Catalog:
    """The catalog that the ledger's entries describe (see the module)."""
    partners = [org.id for org in client.network.partners]
    return Catalog(ledger_assets(client), organizations=partners)
