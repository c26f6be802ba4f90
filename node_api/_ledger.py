"""The node's side of the ledger: what it writes, what it checks, its witness.

A node whose network names a ledger (``ledger_address`` in network.yaml)
works with it unless ``node.yaml`` says ``ledger: off`` (or the environment
sets ``AIRFED_NODE_LEDGER=off``, as unit tests of the node alone do):

- it signs, with its identity key, an entry for every dataset, data sample
  and function registered on it (hashes and permissions), every access to a
  model's content, every permission change and every change of a task's
  status (with its signed receipt once the task ended). Each entry is
  signed and written to the node's database (table ``ledger_outbox``) in
  the transaction of the change it records, so it is durable before the
  operation is acknowledged; a thread sends the outbox to the log, oldest
  first, deletes what the log accepted, and resends the rest (also after a
  restart). No request waits for the log;
- before it runs a task it checks that the task is one of a compute plan
  on the log. The orchestrator gives, in the task's ``plan``, the spec hash,
  the root and size of the plan's task tree, the task's index and its
  inclusion proof (``airfed.sdk._membership``); the node recomputes the
  task's leaf from the task it received and checks the proof against that
  root. The ``plan_registered`` entry must be signed by the plan's creator,
  name this node among the plan's organizations, record that spec hash,
  root and task count, and be included, by an inclusion proof the node
  checks itself, in a checkpoint that ``witness_quorum`` partners cosigned.
  A plan still waiting for its cosignatures is waited for up to
  ``ledger_plan_wait_seconds`` (30 s); a plan the log does not hold fails
  the task at once with "plan ... is not recorded on the ledger", and a
  task whose proof fails, or whose plan key the creator registered with
  other tasks, with "task ... is not part of the plan ... registered on
  the ledger";
- it runs its organization's witness in a thread (``ledger_witness: off``
  turns it off): the replica in ``ledger-replica.db`` next to node.yaml, or
  in the storage folder when node.yaml's folder is not the organization's
  profile (``ledger_replica_database_url`` to move it), synced every
  ``ledger_witness_interval`` seconds (1 s). A split view shows on
  ``GET /health`` as ``"status": "alarm"`` with the witness's alarms. The
  replica is served read-only over gRPC on the organization's
  ``ledger_address`` (``ledger_serve_replica: off`` turns it off), so that
  partners can compare what the log showed each of them.

Known shortcomings: a task failed in bulk when the node restarts is not
written to the ledger.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import event, inspect
from sqlalchemy.orm import Session
from sqlalchemy.orm.util import identity_key

from airfed.node_api._context import NodeContext
from airfed.node_api._db import (
    DataSample,
    Dataset,
    Function,
    Model,
    ModelAccess,
    Task,
)
from airfed.node_api._ledger_outbox import Outbox
from airfed.node_api.errors import TaskFailed
from airfed.sdk._ledger import Statement
from airfed.sdk.errors import ConfigError
from airfed.sdk.network import NodeConfig, load_identity_key

__all__ = [
    "LEDGER_ENV",
    "LedgerSettings",
    "NodeLedger",
    "ledger_profile",
    "ledger_settings",
    "node_ledger",
]

logger = logging.getLogger(__name__)

LEDGER_ENV = "AIRFED_NODE_LEDGER"
_PENDING = "airfed_ledger_outbox_written"
_DRAIN_AT_STOP = 3.0  # seconds to send what is left; the rest waits on disk
_ON = frozenset({"on", "true", "yes", "1"})
_OFF = frozenset({"off", "false", "no", "0"})


@dataclass(frozen=True)
class LedgerSettings:
    enabled: bool
    witness: bool
    witness_interval: float
    plan_wait_seconds: float
    replica_database_url: str | None
    serve_replica: bool


def _switch(value: Any, name: str) -> bool:
    text = str(value).strip().lower()
    if text in _ON:
        return True
    if text in _OFF:
        return False
    raise ConfigError(f"{name} must be on or off, not {value!r}")


def ledger_settings(context: NodeContext) -> LedgerSettings:
    """The node's ledger settings, from node.yaml and the environment."""
    config = context.config
    raw: dict[str, Any] = (
        yaml.safe_load((Path(config.home) / "node.yaml").read_text()) or {}
    )
    wanted = os.environ.get(LEDGER_ENV, raw.get("ledger", "on"))
    enabled = _switch(wanted, "ledger") and bool(config.network.ledger_address)
    return LedgerSettings(
        enabled=enabled,
        witness=enabled and _switch(raw.get("ledger_witness", "on"), "ledger_witness"),
        witness_interval=float(raw.get("ledger_witness_interval", 1.0)),
        plan_wait_seconds=float(raw.get("ledger_plan_wait_seconds", 30.0)),
        replica_database_url=raw.get("ledger_replica_database_url"),
        serve_replica=_switch(raw.get("ledger_serve_replica", "on"), "serve_replica"),
    )


def ledger_profile(config: NodeConfig) -> Path:
    """A profile folder (``DIR/<org>``) with the node's keys, for the ledger code.

    The folder of node.yaml is one when the node runs from ``airfed network
    init``'s layout; otherwise (e.g. files mounted one by one in a pod) a
    folder of links to the node's files is made in its storage folder.
    """
    home = Path(config.home)
    wanted = {
        Path("tls/ca.crt"): Path(config.ca_file),
        Path("tls/tls.crt"): Path(config.cert_file),
        Path("tls/tls.key"): Path(config.key_file),
        Path("identity.key"): Path(config.identity_key_file),
        Path("../network.yaml"): config.network.root / "network.yaml",
    }
    if home.name == config.organization and all(
        (home / name).resolve() == target.resolve() for name, target in wanted.items()
    ):
        return home
    view = Path(config.storage_dir) / "ledger-profile" / str(config.organization)
    for name, target in wanted.items():
        link = view.parent / name.name if name.parts[0] == ".." else view / name
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink():
            link.unlink()
        link.symlink_to(target.resolve())
    return view


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _sha256_json(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _without_none(body: Mapping[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in body.items() if value is not None}


# --------------------------------------------------------------------------
# Statements about the node's rows


def dataset_statement(row: Dataset) -> Statement:
    return Statement(
        "dataset_registered",
        row.key,
        {
            "owner": row.owner,
            "opener_checksum": row.opener_checksum,
            "permissions": dict(row.permissions),
            "logs_permission": dict(row.logs_permission),
            "name": row.name[:200],
            "metadata_sha256": _sha256_json(
                {"description": row.description, "metadata": row.metadata_}
            ),
        },
    )


def sample_statement(row: DataSample) -> Statement:
    return Statement(
        "data_sample_registered",
        row.key,
        {"owner": row.owner, "dataset_key": row.dataset_key, "checksum": row.checksum},
    )


def function_statement(row: Function) -> Statement:
    return Statement(
        "function_registered",
        row.key,
        {
            "owner": row.owner,
            "archive_checksum": row.checksum,
            "permissions": dict(row.permissions),
            "name": row.name[:200],
            "metadata_sha256": _sha256_json(
                {
                    "description": row.description,
                    "entrypoint": row.entrypoint,
                    "inputs": row.inputs,
                    "outputs": row.outputs,
                }
            ),
        },
    )


def task_statement(row: Task, status: str | None = None) -> Statement:
    spec = dict(row.spec or {})
    body = {
        "plan_key": row.plan_key,
        "status": status or row.status,
        "worker": spec.get("worker"),
        "function_key": spec.get("function_key"),
        "category": spec.get("category"),
        "round": spec.get("round"),
        "rank": spec.get("rank"),
        "started_at": _iso(row.started_at),
        "ended_at": _iso(row.ended_at),
        "receipt": row.receipt,
    }
    return Statement("task_status", row.key, _without_none(body))


def _access_statement(session: Session, row: ModelAccess) -> Statement:
    accessor = row.organization + (f"/{row.user}" if row.user else "")
    model = session.identity_map.get(identity_key(Model, row.model_key))
    body: dict[str, Any] = {"accessor": accessor, "purpose": row.purpose}
    if isinstance(model, Model):
        body.update(owner=model.owner, checksum=model.checksum, task_key=model.task_key)
    return Statement("model_accessed", row.model_key, body)


def _changed(row: Any, *names: str) -> bool:
    state = inspect(row)
    return any(state.attrs[name].history.has_changes() for name in names)


def _permissions_statement(row: Dataset | Function | Model) -> Statement:
    kind = {Dataset: "dataset", Function: "function", Model: "model"}[type(row)]
    body: dict[str, Any] = {"asset_kind": kind, "permissions": dict(row.permissions)}
    if isinstance(row, Dataset):
        body["logs_permission"] = dict(row.logs_permission)
    return Statement("permissions_changed", row.key, body)


def _permissions_changed(row: Any) -> bool:
    if isinstance(row, Dataset):
        return _changed(row, "permissions", "logs_permission")
    return isinstance(row, Function | Model) and _changed(row, "permissions")


def statements_of_flush(session: Session) -> list[Statement]:
    """What one flush of the node's database says that the ledger records."""
    found: list[Statement] = []
    for row in session.new:
        if isinstance(row, Dataset):
            found.append(dataset_statement(row))
        elif isinstance(row, DataSample):
            found.append(sample_statement(row))
        elif isinstance(row, Function):
            found.append(function_statement(row))
        elif isinstance(row, ModelAccess):
            found.append(_access_statement(session, row))
        elif isinstance(row, Task):
            found.append(task_statement(row))
    for row in session.dirty:
        if isinstance(row, Task) and _changed(row, "status"):
            found.append(task_statement(row))
        elif _permissions_changed(row):
            found.append(_permissions_statement(row))
    return found


# --------------------------------------------------------------------------
# The node's ledger


class NodeLedger:
    """Writes the node's entries, checks plans before tasks, runs the witness."""

    def __init__(self, context: NodeContext, settings: LedgerSettings) -> None:
        self.ctx = context
        self.settings = settings
        self.network = context.config.network
        self.home = ledger_profile(context.config)
        self._engine = context.db.engine
        self._outbox: Outbox | None = None
        self._client: Any = None
        self._client_lock = threading.Lock()
        self._witness: Any = None
        self._witness_client: Any = None
        self._replica: Any = None
        self._witness_stop = threading.Event()
        self._witness_thread: threading.Thread | None = None
        # (plan key, spec hash, tasks root, task count, creator) proven final.
        self._recorded_plans: set[tuple[str, str, str, int, str | None]] = set()

    # -- lifecycle

    def start(self) -> None:
        self._outbox = Outbox(
            self._engine,
            self.home,
            address=self.network.ledger_address,
            author=self.ctx.organization,
            identity_key=load_identity_key(Path(self.ctx.config.identity_key_file)),
        )
        self._outbox.start()
        event.listen(Session, "after_flush", self._after_flush)
        event.listen(Session, "after_commit", self._after_commit)
        event.listen(Session, "after_soft_rollback", self._after_rollback)
        if self.settings.witness:
            self._start_witness()
        logger.info(
            "node ledger on organization=%s log=%s witness=%s",
            self.ctx.organization,
            self.network.ledger_address,
            self.settings.witness,
        )

    def stop(self) -> None:
        for name, handler in (
            ("after_flush", self._after_flush),
            ("after_commit", self._after_commit),
            ("after_soft_rollback", self._after_rollback),
        ):
            if event.contains(Session, name, handler):
                event.remove(Session, name, handler)
        self._witness_stop.set()
        if self._witness_thread is not None:
            self._witness_thread.join(timeout=10)
        if self._replica is not None:
            self._replica.stop()
        if self._witness is not None:
            self._witness.close()
            self._witness_client.close()
        if self._outbox is not None:
            self._outbox.stop(_DRAIN_AT_STOP)
        with self._client_lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    def _client_of_log(self) -> Any:
        from airfed.ledger.client import LedgerClient

        with self._client_lock:
            if self._client is None:
                self._client = LedgerClient(
                    self.network.ledger_address, self.home, timeout=10.0
                )
            return self._client

    # -- what the node records

    def record(self, statement: Statement) -> None:
        """Write one entry to the outbox in a transaction of its own."""
        if self._outbox is None:
            return
        with self._engine.begin() as connection:
            written = self._outbox.write(connection, [statement])
        if written:
            self._outbox.wake()

    def _ours(self, session: Session) -> bool:
        return session.bind is self._engine

    def _after_flush(self, session: Session, _context: Any) -> None:
        if not self._ours(session) or self._outbox is None:
            return
        try:
            found = statements_of_flush(session)
        except Exception:
            logger.warning("ledger statements not collected", exc_info=True)
            return
        # In the flush's own transaction: the entries commit, or roll back,
        # with the change they record.
        if found and self._outbox.write(session.connection(), found):
            session.info[_PENDING] = True

    def _after_commit(self, session: Session) -> None:
        if session.info.pop(_PENDING, False) and self._outbox is not None:
            self._outbox.wake()

    def _after_rollback(self, session: Session, _previous: Any) -> None:
        session.info.pop(_PENDING, None)

    # -- the check before a task runs

    def check_task(self, task_key: str) -> None:
        """Refuse (``TaskFailed``) a task that is not one of a plan on the ledger."""
        with self.ctx.db.session() as session:
            row = session.get(Task, task_key)
            if row is None:
                raise TaskFailed(f"no task {task_key} on this node")
            plan_key, plan = row.plan_key, dict(row.plan or {})
            task = dict(row.spec or {})
            worker = str(task.get("worker") or self.ctx.organization)
        self.check_plan(plan_key, plan, worker, task)
        with self.ctx.db.session() as session:
            row = session.get(Task, task_key)
            if row is not None:
                self.record(task_statement(row, "executing"))

    def check_plan(
        self,
        plan_key: str,
        plan: Mapping[str, Any],
        worker: str,
        task: Mapping[str, Any],
    ) -> None:
        """Refuse ``task`` unless the plan's registration on the ledger holds it.

        The task's inclusion proof is checked every time (it is cheap and
        differs per task); the proof of the plan's entry is kept per plan.
        """
        claim = _MembershipClaim.of(plan_key, plan, task)
        claim.check(task)
        creator = str(plan.get("creator") or "").split("/")[0] or None
        wanted = (plan_key, claim.spec_hash, claim.tasks_root, claim.count, creator)
        if wanted in self._recorded_plans:
            return
        self._prove_plan(claim, creator, worker)
        self._recorded_plans.add(wanted)
        logger.info("plan found on the ledger plan=%s", plan_key)

    def _prove_plan(
        self, claim: _MembershipClaim, creator: str | None, worker: str
    ) -> None:
        from airfed.ledger.entries import Entry, EntryKind
        from airfed.ledger.errors import (
            LedgerError,
            LedgerUnavailable,
            NotRecordedError,
        )
        from airfed.ledger.evidence import prove_entry

        plan_key = claim.plan_key

        def by_creator(entry: Entry) -> bool:
            return (
                entry.kind is EntryKind.PLAN_REGISTERED
                and (creator is None or entry.author == creator)
                and worker in entry.body.get("organizations", [worker])
            )

        def registers_plan(entry: Entry) -> bool:
            body = entry.body
            return (
                by_creator(entry)
                and body.get("spec_hash") == claim.spec_hash
                and body.get("tasks_root") == claim.tasks_root
                and body.get("task_count") == claim.count
            )

        deadline = time.monotonic() + self.settings.plan_wait_seconds
        while True:
            try:
                prove_entry(
                    self._client_of_log(),
                    plan_key,
                    registers_plan,
                    network=self.network,
                )
                return
            except NotRecordedError as exc:
                problem = str(exc)
                waiting = self._registered(plan_key, registers_plan)
                if not waiting and self._registered(plan_key, by_creator):
                    # The creator registered this plan key, with other tasks.
                    raise claim.refusal(
                        "the plan registered under this key records another "
                        "spec hash or task tree"
                    ) from exc
            except LedgerUnavailable as exc:
                problem, waiting = f"the ledger cannot be reached ({exc})", True
            except LedgerError as exc:
                problem, waiting = str(exc), False
            if not waiting or time.monotonic() > deadline:
                raise TaskFailed(
                    f"plan {plan_key} is not recorded on the ledger: {problem}"
                )
            time.sleep(0.5)

    def _registered(self, plan_key: str, accept: Any) -> bool:
        """Whether the log holds the plan's entry, final or not yet."""
        from airfed.ledger.entries import parse_entry
        from airfed.ledger.errors import EntryError

        for _, data in self._client_of_log().find(plan_key):
            try:
                if accept(parse_entry(data)):
                    return True
            except EntryError:
                continue
        return False

    # -- the witness

    def _start_witness(self) -> None:
        from airfed.ledger.client import LedgerClient
        from airfed.ledger.witness import Witness

        self._witness_client = LedgerClient(
            self.network.ledger_address, self.home, timeout=30.0
        )
        self._witness = Witness(
            self.home,
            self._witness_client,
            database_url=self.settings.replica_database_url,
        )
        self._witness_thread = threading.Thread(
            target=self._witness.run,
            args=(self._witness_stop, self.settings.witness_interval),
            name="ledger-witness",
            daemon=True,
        )
        self._witness_thread.start()
        if self.settings.serve_replica:
            self._serve_replica()

    def _serve_replica(self) -> None:
        """Serve the replica read-only on the organization's ledger address."""
        from airfed.ledger.server import serve_replica

        try:
            self._replica = serve_replica(self._witness)
        except ConfigError as exc:
            logger.warning("ledger replica not served error=%s", exc)

    def health(self) -> dict[str, Any]:
        """The ledger's part of ``GET /health``."""
        if self._witness is None:
            return {"status": "ok", "witness": None}
        try:
            witness = dict(self._witness.health())
        except Exception as exc:
            logger.warning("witness health unavailable error=%s", exc)
            return {"status": "unknown", "witness": None}
        return {"status": witness.get("status", "ok"), "witness": witness}


@dataclass(frozen=True)
class _MembershipClaim:
    """What the orchestrator gave to show that a task is one of its plan's."""

    plan_key: str
    task_key: str
    spec_hash: str
    tasks_root: str
    count: int
    index: int
    proof: tuple[str, ...]

    @classmethod
    def of(
        cls, plan_key: str, plan: Mapping[str, Any], task: Mapping[str, Any]
    ) -> _MembershipClaim:
        task_key = str(task.get("key") or "?")
        fields: dict[str, Any] = {}
        for field, kind in _CLAIM_FIELDS.items():
            value = plan.get(field)
            if (
                isinstance(value, bool)
                or not isinstance(value, kind)
                or (isinstance(value, list) and not all(map(_is_str, value)))
            ):
                logger.warning(
                    "task refused, no proof of its plan task=%s plan=%s field=%s",
                    task_key,
                    plan_key,
                    field,
                )
                raise TaskFailed(
                    f"task {task_key} is not shown to be part of the plan "
                    f"{plan_key} registered on the ledger: the submission's "
                    f"plan lacks a valid {field!r}"
                )
            fields[field] = value
        return cls(
            plan_key=plan_key,
            task_key=task_key,
            spec_hash=fields["spec_hash"],
            tasks_root=fields["tasks_root"],
            count=fields["task_count"],
            index=fields["task_index"],
            proof=tuple(fields["task_proof"]),
        )

    def check(self, task: Mapping[str, Any]) -> None:
        """Refuse the task unless its proof leads to the plan's task tree."""
        from airfed.sdk._membership import verify_task

        if not verify_task(task, self.index, self.count, self.proof, self.tasks_root):
            raise self.refusal(
                f"its proof as task {self.index} of {self.count} does not lead "
                "to the plan's task tree"
            )

    def refusal(self, why: str) -> TaskFailed:
        logger.warning(
            "task refused, not part of its plan task=%s plan=%s reason=%s",
            self.task_key,
            self.plan_key,
            why,
        )
        return TaskFailed(
            f"task {self.task_key} is not part of the plan {self.plan_key} "
            f"registered on the ledger: {why}"
        )


def _is_str(value: object) -> bool:
    return isinstance(value, str)


# The fields of a task's ``plan`` that prove the task belongs to the plan.
_CLAIM_FIELDS: dict[str, type] = {
    "spec_hash": str,
    "tasks_root": str,
    "task_count": int,
    "task_index": int,
    "task_proof": list,
}


def node_ledger(context: NodeContext) -> NodeLedger | None:
    """The node's ledger, or None when its configuration turns it off."""
    settings = ledger_settings(context)
    if not settings.enabled:
        return None
    return NodeLedger(context, settings)
