"""The data scientist's client: assets on nodes, compute plans on Airflow.

:class:`Client` speaks for one organization (and optionally one of its
users), read from a profile folder (:mod:`airfed.sdk.profile`). It registers
datasets, data samples and functions on the organization's own node, lists
assets across every node of the network, and builds, checks, submits and
follows compute plans through the orchestrator::

    client = Client(Path("net/a"), token=token)
    dataset = client.register_dataset("cancer a", Path("opener.py"))
    client.add_samples(dataset["key"], [Path("train"), Path("test")])
    builder = client.plan("fedavg", strategy="fedavg")
    ...
    status = client.submit(builder)
    client.wait(status["plan_key"])

Every call may raise :class:`~airfed.sdk.errors.AirfedError`: a
:class:`~airfed.sdk.errors.NodeRequestError` when a node refuses,
:class:`~airfed.sdk.errors.OrchestratorError` when Airflow does,
:class:`~airfed.sdk.errors.PlanError` when a plan is invalid.
"""

from __future__ import annotations

import logging
import re
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from airfed.node_api._archive import pack_folder
from airfed.sdk.catalog import Catalog, NodeListing, Performance
from airfed.sdk.errors import (
    AirfedError,
    ConfigError,
    NodeRequestError,
    OrchestratorError,
)
from airfed.sdk.node_client import NodeClient
from airfed.sdk.orchestrator import FINAL_PLAN_STATUSES, OrchestratorClient
from airfed.sdk.performance import PerformanceTable, performance_table
from airfed.sdk.plan import ComputePlanBuilder
from airfed.sdk.profile import Profile, load_profile
from airfed.sdk.spec import Permission, Permissions, PlanSpec

__all__ = [
    "Client",
    "ListableKind",
    "PlanProgress",
    "function_metadata",
]

logger = logging.getLogger(__name__)

ListableKind = Literal["dataset", "datasample", "function", "model"]
_T = TypeVar("_T")
# Airflow task instance states in airfed's words for a task.
_TASK_STATES = {
    "success": "done",
    "failed": "failed",
    "upstream_failed": "failed",
    "running": "executing",
    "deferred": "executing",
    "up_for_retry": "executing",
    "up_for_reschedule": "executing",
    "restarting": "executing",
    "skipped": "canceled",
    "removed": "canceled",
}
_TASK_ID_ROUND = re.compile(r"^r(\d+)_")


@dataclass(frozen=True)
class PlanProgress:
    """A compute plan's status and its tasks' states counted per round."""

    status: Mapping[str, Any]
    by_round: Mapping[int, Mapping[str, int]]

    @property
    def state(self) -> str:
        return str(self.status.get("status") or "unknown")

    @property
    def total(self) -> int:
        return sum(sum(counts.values()) for counts in self.by_round.values())

    @property
    def done(self) -> int:
        return sum(counts.get("done", 0) for counts in self.by_round.values())

    def summary(self) -> str:
        """``round 3: 2 executing, 1 failed``: the earliest unfinished round."""
        for round_, counts in sorted(self.by_round.items()):
            pending = {k: v for k, v in counts.items() if k != "done" and v}
            if pending:
                parts = ", ".join(f"{v} {k}" for k, v in sorted(pending.items()))
                return f"round {round_}: {parts}"
        return self.state


_ENTRYPOINT = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
_INPUT_KINDS = ("dataset", "datasamples", "model")
_OUTPUT_KINDS = ("model", "performance")


class Client:
    """One organization's (or user's) view of the network; see the module."""

    def __init__(
        self,
        profile: Path,
        token: str | None = None,
        orchestrator_url: str | None = None,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        self.profile: Profile = load_profile(profile)
        self.token = token if token is not None else self.profile.token
        self._orchestrator_url = orchestrator_url or self.profile.orchestrator_url
        self._username = username or self.profile.orchestrator_username
        self._password = password or self.profile.orchestrator_password
        self._nodes: dict[str, NodeClient] = {}
        self._orchestrator: OrchestratorClient | None = None
        self._closed = False

    @property
    def organization(self) -> str:
        return str(self.profile.organization)

    @property
    def partners(self) -> tuple[str, ...]:
        """Organizations of the network that run a node."""
        return tuple(self.profile.partners)

    def close(self) -> None:
        self._closed = True
        for node in self._nodes.values():
            node.close()
        self._nodes.clear()
        if self._orchestrator is not None:
            self._orchestrator.close()
            self._orchestrator = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def node(self, organization: str | None = None) -> NodeClient:
        """Client of ``organization``'s node (the profile's own by default).

        The user token goes to the organization's own node only: a node
        knows the tokens it issued, and other nodes see the organization.
        """
        organization = organization or self.organization
        if self._closed:
            raise AirfedError("this client is closed; create a new Client")
        if organization not in self._nodes:
            token = self.token if organization == self.organization else None
            self._nodes[organization] = NodeClient(
                self.profile.node_url(organization), self.profile.ssl_context(), token
            )
        return self._nodes[organization]

    # -- registering assets on the organization's own node ---------------------

    def register_dataset(
        self,
        name: str,
        opener: Path,
        *,
        description: str = "",
        permissions: Permissions | None = None,
        logs_permission: Permission | None = None,
    ) -> dict[str, Any]:
        """Register a dataset (its opener file) on the organization's node."""
        opener = Path(opener)
        if not opener.is_file():
            raise ConfigError(f"opener {opener} is not a file")
        metadata = {
            "name": _non_empty(name, "dataset name"),
            "description": description,
            "permissions": _dump(permissions or Permissions()),
            "logs_permission": (logs_permission or Permission()).model_dump(),
        }
        dataset = self.node().create_dataset(metadata, opener)
        logger.info("dataset registered key=%s", dataset.get("key"))
        return dict(dataset)

    def add_samples(
        self,
        dataset_key: str,
        folders: Sequence[Path] = (),
        *,
        node_paths: Sequence[str] = (),
    ) -> list[dict[str, Any]]:
        """Add data samples: local folders (uploaded) or paths on the node.

        Every local folder is checked before the first upload starts.
        """
        local = [Path(folder) for folder in folders]
        for folder in local:
            if not folder.is_dir():
                raise ConfigError(f"data sample {folder} is not a folder")
        for path in node_paths:
            if not path.startswith("/"):
                raise ConfigError(f"path on the node {path!r} must be absolute")
        if not local and not node_paths:
            raise ConfigError("give at least one data sample folder or node path")
        node = self.node()
        samples = [node.add_sample_folder(dataset_key, folder) for folder in local]
        samples += [node.add_sample_path(dataset_key, path) for path in node_paths]
        logger.info("samples added dataset=%s count=%d", dataset_key, len(samples))
        return samples

    def register_function(
        self,
        folder: Path,
        *,
        name: str,
        entrypoint: str,
        inputs: Sequence[Mapping[str, Any]],
        outputs: Sequence[Mapping[str, Any]],
        description: str = "",
        permissions: Permissions | None = None,
        nodes: Sequence[str] | None = None,
        key: str | None = None,
    ) -> dict[str, Any]:
        """Register a function: the code in ``folder`` and its metadata.

        A node runs only functions registered on it, so the function goes to
        every node of the network (or to ``nodes``) under one key. Every node
        is asked for its health first; should one refuse the function after
        others took it, the error names the key and the nodes that lack it.
        """
        metadata = function_metadata(
            folder,
            name=name,
            entrypoint=entrypoint,
            inputs=inputs,
            outputs=outputs,
            description=description,
            permissions=permissions,
        )
        metadata["key"] = key or str(uuid.uuid4())
        targets = list(nodes) if nodes else list(self.partners)
        for org in targets:
            self.node(org).health()
        with tempfile.TemporaryDirectory(prefix="airfed-function-") as tmp:
            archive = pack_folder(Path(folder), Path(tmp) / "function.tar.gz")
            function = self._register_everywhere(metadata, archive, targets)
        logger.info(
            "function registered key=%s nodes=%d", metadata["key"], len(targets)
        )
        return function

    def _register_everywhere(
        self, metadata: Mapping[str, Any], archive: Path, targets: Sequence[str]
    ) -> dict[str, Any]:
        answers: dict[str, dict[str, Any]] = {}
        for org in targets:
            try:
                answers[org] = dict(self.node(org).create_function(metadata, archive))
            except NodeRequestError as exc:
                if not answers:
                    raise
                missing = ",".join(o for o in targets if o not in answers)
                raise NodeRequestError(
                    exc.status,
                    f"function {metadata['key']} is registered on "
                    f"{', '.join(answers)} but node {org} refused it: {exc.detail}; "
                    f"add it there with 'airfed function add FOLDER --key "
                    f"{metadata['key']} --nodes {missing}'",
                ) from exc
        first = answers[targets[0]]
        return {**first, "nodes": list(answers)}

    # -- reading the network -----------------------------------------------------

    def organizations(self) -> list[dict[str, Any]]:
        """Members of the network, as the organization's node lists them."""
        return list(self.node().organizations())

    def catalog(self, plan_key: str | None = None) -> Catalog:
        """Metadata of every node's assets and performances, gathered now."""

        def listing(org: str) -> NodeListing:
            node = self.node(org)
            return NodeListing(
                datasets=tuple(node.list_datasets()),
                samples=tuple(node.list_samples()),
                functions=tuple(node.list_functions()),
                models=tuple(node.list_models(plan_key=plan_key)),
                performances=tuple(node.list_performances(plan_key=plan_key)),
            )

        return Catalog.from_listings(self._each_node(listing))

    def list_assets(
        self,
        kind: ListableKind,
        *,
        query: str | None = None,
        plan_key: str | None = None,
    ) -> list[dict[str, Any]]:
        """Metadata of every asset of ``kind`` on every node, with its owner."""

        def listing(org: str) -> list[dict[str, Any]]:
            node = self.node(org)
            if kind == "dataset":
                return list(node.list_datasets(q=query))
            if kind == "datasample":
                return list(node.list_samples())
            if kind == "function":
                return list(node.list_functions(q=query))
            return list(node.list_models(plan_key=plan_key))

        return _merge_copies(self._each_node(listing))

    def show_asset(self, kind: ListableKind, key: str) -> dict[str, Any]:
        """Metadata of one asset, from the nodes that hold it."""

        def lookup(org: str) -> list[dict[str, Any]]:
            node = self.node(org)
            try:
                if kind == "dataset":
                    return [dict(node.get_dataset(key))]
                if kind == "function":
                    return [dict(node.get_function(key))]
                if kind == "model":
                    return [dict(node.get_model_metadata(key))]
                return [s for s in node.list_samples() if s.get("key") == key]
            except NodeRequestError as exc:
                if exc.status in (400, 404, 422):
                    return []
                raise

        found = _merge_copies(self._each_node(lookup))
        if not found:
            raise NodeRequestError(404, f"no node holds a {kind} with key {key}")
        return found[0]

    def download_model(self, key: str, dest: Path) -> Path:
        """Download a model its permissions let the caller download."""
        owner = self.show_asset("model", key)["owner"]
        dest = Path(dest)
        if dest.is_dir():
            dest = dest / key
        self.node(owner).download_model(key, dest)
        logger.info("model downloaded key=%s node=%s", key, owner)
        return dest

    def performances(self, plan_key: str) -> list[Performance]:
        """Every performance a compute plan's test tasks recorded, by round."""
        catalog = Catalog.from_listings(
            self._each_node(
                lambda org: NodeListing(
                    performances=tuple(self.node(org).list_performances(plan_key))
                )
            )
        )
        return sorted(
            catalog.performances(plan_key),
            key=lambda p: (p.round, p.identifier, p.worker, p.task_key),
        )

    def list_tasks(self, plan_key: str) -> list[dict[str, Any]]:
        """Every task of a compute plan that a node has received, with status."""
        tasks: list[dict[str, Any]] = []
        for org, items in self._each_node(
            lambda org: self.node(org).list_tasks(plan_key)
        ).items():
            tasks.extend(
                {**item, "worker": item.get("worker") or org} for item in items
            )
        return tasks

    def task_logs(self, task_key: str, worker: str | None = None) -> str:
        """Logs of a task, from its worker's node (under the logs permission)."""
        workers = [worker] if worker else list(self.partners)
        for org in workers:
            try:
                return str(self.node(org).task_logs(task_key))
            except NodeRequestError as exc:
                if exc.status == 404 and worker is None:
                    continue
                raise
        raise NodeRequestError(404, f"no node has run task {task_key}")

    # -- compute plans -------------------------------------------------------------

    def plan(
        self,
        name: str,
        strategy: str = "custom",
        *,
        metadata: Mapping[str, str] | None = None,
        rounds: int | None = None,
    ) -> ComputePlanBuilder:
        """A new compute plan whose creator is the profile's organization."""
        return ComputePlanBuilder(
            name, strategy, self.organization, metadata=metadata, rounds=rounds
        )

    def compile(self, plan: ComputePlanBuilder | PlanSpec) -> PlanSpec:
        """Check a plan against the network's current catalog; return its spec."""
        builder = (
            ComputePlanBuilder.from_spec(plan) if isinstance(plan, PlanSpec) else plan
        )
        builder.compile()  # the plan's own structure, before asking any node
        return builder.compile(self.catalog())

    def submit(self, plan: ComputePlanBuilder | PlanSpec) -> dict[str, Any]:
        """Check a plan and submit it in one piece; Airflow starts it at once.

        The plan is first registered on the ledger, signed by this profile's
        organization (its creator): nodes run only tasks of recorded plans.
        """
        from airfed.sdk._ledger import register_plan

        spec = self.compile(plan)
        register_plan(self.profile.directory, spec)
        answer = self.orchestrator().submit_plan(spec)
        logger.info("plan submitted plan=%s tasks=%d", spec.key, len(spec.tasks))
        return dict(answer)

    def list_plans(self) -> list[dict[str, Any]]:
        return list(self.orchestrator().list_plans())

    def plan_status(self, plan_key: str) -> dict[str, Any]:
        """The plan's status and its tasks' states, as the orchestrator sees them."""
        return dict(self.orchestrator().get_plan(plan_key))

    def cancel(self, plan_key: str) -> dict[str, Any]:
        """Stop the plan's DAG run and the node tasks still running.

        Then every node deletes the plan's transient models it still holds.
        """
        answer = self.orchestrator().cancel_plan(plan_key)
        logger.info("plan canceled plan=%s", plan_key)
        self.end_plan_on_nodes(plan_key)
        return dict(answer)

    def end_plan_on_nodes(self, plan_key: str) -> dict[str, list[str]]:
        """Ask every partner's node to delete the plan's transient models.

        Returns the deleted model keys per organization. A node without tasks
        of the plan is skipped; a node that cannot be reached is logged and
        skipped (calling this again later finishes the job).
        """
        deleted: dict[str, list[str]] = {}
        for organization in self.partners:
            try:
                answer = self.node(organization).end_plan(plan_key)
            except NodeRequestError as exc:
                if exc.status != 404:
                    logger.warning(
                        "plan end not recorded plan=%s node=%s status=%s",
                        plan_key,
                        organization,
                        exc.status,
                    )
                continue
            deleted[organization] = list(answer.get("deleted") or [])
        return deleted

    def wait(
        self,
        plan_key: str,
        *,
        timeout: float | None = None,
        poll_seconds: float = 1.0,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Poll until the plan is done, failed or canceled; return its status.

        ``on_progress`` receives every status read; a ``timeout`` that runs
        out raises :class:`OrchestratorError` (the plan keeps running).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            status = self.plan_status(plan_key)
            if on_progress is not None:
                on_progress(status)
            if plan_state(status) in FINAL_PLAN_STATUSES:
                return status
            if deadline is not None and time.monotonic() >= deadline:
                raise OrchestratorError(
                    f"plan {plan_key} is still {plan_state(status)} after "
                    f"{timeout:.0f} s; it keeps running ('airfed plan wait' again)"
                )
            time.sleep(poll_seconds)

    def progress(
        self, plan_key: str, status: Mapping[str, Any] | None = None
    ) -> PlanProgress:
        """The plan's tasks counted per round and state (waiting, done, ...)."""
        status = dict(status) if status is not None else self.plan_status(plan_key)
        by_round: dict[int, Counter[str]] = defaultdict(Counter)
        for task in status.get("tasks") or ():
            by_round[_task_round(task)][_task_state(task)] += 1
        return PlanProgress(status, {r: dict(c) for r, c in by_round.items()})

    def performance_table(self, plan_key: str) -> PerformanceTable:
        """The plan's metrics per round, federated and local-only models apart.

        Which model a test task evaluated comes from the task's metadata, as
        the worker's node reports it.
        """
        metadata = {
            str(task["key"]): dict(task.get("metadata") or {})
            for task in self.list_tasks(plan_key)
        }
        table: PerformanceTable = performance_table(
            self.performances(plan_key), metadata
        )
        return table

    def orchestrator(self) -> OrchestratorClient:
        """Client of the orchestrator's API (Airflow with airfed's plugin)."""
        if self._orchestrator is None:
            if not self._orchestrator_url:
                raise ConfigError(
                    "no orchestrator URL: pass --orchestrator-url, or set "
                    f"orchestrator.url in {self.profile.directory}/profile.yaml"
                )
            self._orchestrator = OrchestratorClient(
                self._orchestrator_url, self._username or "", self._password or ""
            )
        return self._orchestrator

    # -- internals -------------------------------------------------------------------

    def _each_node(self, call: Callable[[str], _T]) -> dict[str, _T]:
        """Run ``call`` for every partner's node in parallel, keyed by org."""
        partners = self.partners
        for org in partners:
            self.node(org)  # create clients before threads share the cache
        with ThreadPoolExecutor(max_workers=min(8, len(partners) or 1)) as pool:
            results = list(pool.map(call, partners))
        return dict(zip(partners, results, strict=True))


def plan_state(status: Mapping[str, Any]) -> str:
    """The plan's status as the orchestrator says it (queued, success, ...)."""
    return str(status.get("status") or "unknown")


def _task_state(task: Mapping[str, Any]) -> str:
    state = task.get("status") or task.get("state")
    return _TASK_STATES.get(str(state), "waiting") if state else "waiting"


def _task_round(task: Mapping[str, Any]) -> int:
    if isinstance(task.get("round"), int):
        return int(task["round"])
    match = _TASK_ID_ROUND.match(str(task.get("task_id", "")))
    return int(match.group(1)) if match else 0


def function_metadata(
    folder: Path,
    *,
    name: str,
    entrypoint: str,
    inputs: Sequence[Mapping[str, Any]],
    outputs: Sequence[Mapping[str, Any]],
    description: str = "",
    permissions: Permissions | None = None,
) -> dict[str, Any]:
    """Check a function's folder and metadata (contract A); return the metadata."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"function code {folder} is not a folder")
    if not _ENTRYPOINT.match(entrypoint):
        raise ConfigError(
            f"entrypoint {entrypoint!r} must read 'module:callable', e.g. 'algo:train'"
        )
    module = entrypoint.split(":")[0].replace(".", "/")
    if (
        not (folder / f"{module}.py").is_file()
        and not (folder / module / "__init__.py").is_file()
    ):
        raise ConfigError(f"entrypoint module {module}.py is not in {folder}")
    declared = [
        *(_function_io(item, "input", _INPUT_KINDS) for item in inputs),
        *(_function_io(item, "output", _OUTPUT_KINDS) for item in outputs),
    ]
    # Inputs and outputs are separate namespaces (a train function may read
    # its "local" state and write the next one under the same identifier).
    for role, items in (
        ("input", declared[: len(inputs)]),
        ("output", declared[len(inputs) :]),
    ):
        identifiers = [item["identifier"] for item in items]
        for identifier in identifiers:
            if identifiers.count(identifier) > 1:
                raise ConfigError(f"function {role} {identifier!r} is declared twice")
    return {
        "name": _non_empty(name, "function name"),
        "description": description,
        "entrypoint": entrypoint,
        "inputs": declared[: len(inputs)],
        "outputs": declared[len(inputs) :],
        "permissions": _dump(permissions or Permissions()),
    }


def _function_io(
    item: Mapping[str, Any], role: str, kinds: tuple[str, ...]
) -> dict[str, Any]:
    identifier = item.get("identifier")
    kind = item.get("kind")
    if not isinstance(identifier, str) or not identifier:
        raise ConfigError(f"every function {role} needs an identifier")
    if kind not in kinds:
        raise ConfigError(
            f"function {role} {identifier!r}: kind must be one of "
            f"{', '.join(kinds)}, not {kind!r}"
        )
    if role == "output":
        return {"identifier": identifier, "kind": kind}
    return {
        "identifier": identifier,
        "kind": kind,
        "multiple": bool(item.get("multiple", False)),
        "optional": bool(item.get("optional", False)),
    }


def _merge_copies(listings: Mapping[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One item per key; ``nodes`` lists the organizations whose node holds it."""
    merged: dict[str, dict[str, Any]] = {}
    for org, items in listings.items():
        for item in items:
            key = str(item.get("key"))
            if key in merged:
                merged[key]["nodes"].append(org)
            else:
                merged[key] = {
                    **item,
                    "owner": item.get("owner") or org,
                    "nodes": [org],
                }
    return list(merged.values())


def _dump(permissions: Permissions) -> dict[str, Any]:
    dumped: dict[str, Any] = permissions.model_dump(mode="json")
    return dumped


def _non_empty(value: str, what: str) -> str:
    if not value or not value.strip():
        raise AirfedError(f"{what} must not be empty")
    return value
