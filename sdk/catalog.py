"""The catalog: what the network holds, as a data scientist sees it.

A :class:`Catalog` is a read-only snapshot of the network's asset metadata:
datasets, data samples, functions, models and performances, each tagged with
the organization whose node holds it. The plan builder checks a compute plan
against it (does every input exist, may the worker use it) and the CLI lists
from it.

Today the snapshot is gathered from every node's list endpoints
(:func:`gather_catalog`); it only ever holds metadata, never content. The
interface is kept narrow (:meth:`Catalog.get`, :meth:`Catalog.assets`,
:meth:`Catalog.performances`) so that the source can later become the ledger's
entries without changing its readers.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, cast

import pydantic

from airfed.sdk.errors import AirfedError
from airfed.sdk.spec import Permissions

__all__ = [
    "Asset",
    "AssetKind",
    "Catalog",
    "FunctionInput",
    "FunctionOutput",
    "NodeListing",
    "Performance",
    "gather_catalog",
]

logger = logging.getLogger(__name__)

AssetKind = Literal["dataset", "datasample", "function", "model"]
ASSET_KINDS: tuple[AssetKind, ...] = ("dataset", "datasample", "function", "model")


@dataclass(frozen=True)
class FunctionInput:
    """An input a function declares (contract A)."""

    identifier: str
    kind: Literal["dataset", "datasamples", "model"]
    multiple: bool = False
    optional: bool = False


@dataclass(frozen=True)
class FunctionOutput:
    """An output a function declares (contract A)."""

    identifier: str
    kind: Literal["model", "performance"]


@dataclass(frozen=True)
class Asset:
    """Metadata of one asset, as the node that holds it lists it.

    ``owner`` is the organization that registered the asset; ``nodes`` are
    the organizations whose nodes hold it (a function is registered on every
    node that runs it; data and models stay on their owner's node). ``data``
    is the node's metadata as listed, for fields this class does not name.
    """

    kind: AssetKind
    key: str
    owner: str
    name: str = ""
    permissions: Permissions = field(default_factory=Permissions)
    data: Mapping[str, Any] = field(default_factory=dict)
    nodes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.nodes:
            object.__setattr__(self, "nodes", (self.owner,))

    def may_process(self, organization: str, user: str | None = None) -> bool:
        """Whether ``organization`` (or its ``user``) may process the asset."""
        if organization == self.owner:
            return True
        return bool(self.permissions.process.allows(organization, user))

    def may_download(self, organization: str, user: str | None = None) -> bool:
        """Whether ``organization`` (or its ``user``) may download the asset."""
        if organization == self.owner and user is None:
            return True
        return bool(self.permissions.download.allows(organization, user))

    @property
    def dataset_key(self) -> str | None:
        """For a data sample: the dataset it belongs to, when the node says."""
        value = self.data.get("dataset_key") or self.data.get("dataset")
        return str(value) if value else None

    @property
    def function_inputs(self) -> tuple[FunctionInput, ...]:
        """For a function: its declared inputs."""
        return tuple(
            FunctionInput(
                identifier=str(item["identifier"]),
                kind=item["kind"],
                multiple=bool(item.get("multiple", False)),
                optional=bool(item.get("optional", False)),
            )
            for item in self.data.get("inputs", ())
        )

    @property
    def function_outputs(self) -> tuple[FunctionOutput, ...]:
        """For a function: its declared outputs."""
        return tuple(
            FunctionOutput(identifier=str(item["identifier"]), kind=item["kind"])
            for item in self.data.get("outputs", ())
        )


@dataclass(frozen=True)
class Performance:
    """One metric value a test task recorded."""

    plan_key: str
    task_key: str
    round: int
    worker: str
    identifier: str
    value: float
    data: Mapping[str, Any] = field(default_factory=dict)


class Catalog:
    """A read-only snapshot of the network's asset metadata."""

    def __init__(
        self,
        assets: Iterable[Asset] = (),
        performances: Iterable[Performance] = (),
        organizations: Iterable[str] = (),
    ) -> None:
        self._assets: dict[str, Asset] = {}
        for asset in assets:
            known = self._assets.get(asset.key)
            if known is not None:
                nodes = tuple(sorted({*known.nodes, *asset.nodes}))
                asset = dataclasses.replace(known, nodes=nodes)
            self._assets[asset.key] = asset
        self._performances = tuple(performances)
        owners = {asset.owner for asset in self._assets.values()}
        self._organizations = tuple(sorted(owners | set(organizations)))

    def __len__(self) -> int:
        return len(self._assets)

    @property
    def organizations(self) -> tuple[str, ...]:
        """Organizations the snapshot was gathered from."""
        return self._organizations

    def get(self, key: str, kind: AssetKind | None = None) -> Asset | None:
        """The asset with ``key`` (of ``kind`` when given), or ``None``."""
        asset = self._assets.get(key)
        if asset is None or (kind is not None and asset.kind != kind):
            return None
        return asset

    def assets(
        self, kind: AssetKind | None = None, owner: str | None = None
    ) -> tuple[Asset, ...]:
        """Every asset, optionally of one kind and held by one organization."""
        return tuple(
            asset
            for asset in self._assets.values()
            if (kind is None or asset.kind == kind)
            and (owner is None or asset.owner == owner)
        )

    def performances(self, plan_key: str | None = None) -> tuple[Performance, ...]:
        """Recorded performances, optionally of one compute plan."""
        if plan_key is None:
            return self._performances
        return tuple(p for p in self._performances if p.plan_key == plan_key)

    @classmethod
    def from_ledger(cls, client: Any) -> Catalog:
        """Build a catalog from the ledger's entries, read with a ``LedgerClient``.

        Datasets, data samples and functions as their nodes registered them
        (signatures checked), with their latest permissions; no models or
        performances (see :mod:`airfed.sdk._ledger_catalog`).
        """
        from airfed.sdk._ledger_catalog import ledger_catalog

        catalog: Catalog = ledger_catalog(client)
        return catalog

    @classmethod
    def from_listings(cls, listings: Mapping[str, NodeListing]) -> Catalog:
        """Build a catalog from what each organization's node listed."""
        assets: list[Asset] = []
        performances: list[Performance] = []
        for organization, listing in listings.items():
            for kind, items in (
                ("dataset", listing.datasets),
                ("datasample", listing.samples),
                ("function", listing.functions),
                ("model", listing.models),
            ):
                assets.extend(
                    _asset(cast(AssetKind, kind), organization, item) for item in items
                )
            performances.extend(
                _performance(organization, item) for item in listing.performances
            )
        return cls(assets, performances, organizations=listings)


@dataclass(frozen=True)
class NodeListing:
    """The metadata one node listed, as JSON objects."""

    datasets: tuple[Mapping[str, Any], ...] = ()
    samples: tuple[Mapping[str, Any], ...] = ()
    functions: tuple[Mapping[str, Any], ...] = ()
    models: tuple[Mapping[str, Any], ...] = ()
    performances: tuple[Mapping[str, Any], ...] = ()


class _ListingNode(Protocol):
    def list_datasets(self) -> list[dict[str, Any]]: ...
    def list_samples(self) -> list[dict[str, Any]]: ...
    def list_functions(self) -> list[dict[str, Any]]: ...
    def list_models(self) -> list[dict[str, Any]]: ...
    def list_performances(self) -> list[dict[str, Any]]: ...


def gather_catalog(nodes: Mapping[str, _ListingNode]) -> Catalog:
    """Ask every organization's node for its metadata and build a catalog."""
    listings = {}
    for organization, node in nodes.items():
        listings[organization] = NodeListing(
            datasets=tuple(node.list_datasets()),
            samples=tuple(node.list_samples()),
            functions=tuple(node.list_functions()),
            models=tuple(node.list_models()),
            performances=tuple(node.list_performances()),
        )
        logger.debug("catalog listed node=%s", organization)
    return Catalog.from_listings(listings)


def _asset(kind: AssetKind, organization: str, item: Mapping[str, Any]) -> Asset:
    try:
        permissions = Permissions.model_validate(item.get("permissions") or {})
    except pydantic.ValidationError as exc:
        raise AirfedError(
            f"node {organization} listed {kind} {item.get('key')} with unreadable "
            "permissions"
        ) from exc
    return Asset(
        kind=kind,
        key=str(item["key"]),
        owner=str(item.get("owner") or organization),
        name=str(item.get("name") or ""),
        permissions=permissions,
        data=item,
        nodes=(organization,),
    )


def _performance(organization: str, item: Mapping[str, Any]) -> Performance:
    return Performance(
        plan_key=str(item.get("plan_key", "")),
        task_key=str(item.get("task_key", "")),
        round=int(item.get("round", 0)),
        worker=str(item.get("worker") or organization),
        identifier=str(item.get("identifier", "")),
        value=float(item["value"]),
        data=item,
    )
