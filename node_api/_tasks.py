"""Tasks on the node: accept, check, stage, execute, store, sign.

``POST /tasks`` stores a task as *waiting* (a key already stored returns the
existing task, so retries are safe). A dispatcher thread claims waiting tasks
up to ``task_concurrency`` at a time and runs each one:

1. check permissions: the function's process permission must allow this
   node's organization (the worker); for every dataset and data sample input,
   the dataset's process permission must allow the function's owner; every
   input model's process permission must allow the worker;
2. stage the workdir (contract B): the function's code, the dataset's opener,
   the data samples, and the input models: local ones are decrypted from the
   store, outputs of parents that ran elsewhere are fetched from the parent's
   node over mutual TLS (``GET /tasks/{parent}``, then ``GET /models/{key}``)
   and their checksum verified;
3. execute the function in an isolated process (``_executor.execute``);
4. store model outputs encrypted with the permissions the task names, record
   performances, sign the receipt, set the status; delete the workdir.

A task ends *done*, *failed* (the error says why) or *canceled*.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import ssl
import tempfile
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pydantic
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from airfed.node_api._archive import ArchiveError, safe_extract
from airfed.node_api._auth import Caller
from airfed.node_api._context import NodeContext
from airfed.node_api._db import (
    DataSample,
    Dataset,
    Function,
    Model,
    ModelAccess,
    Performance,
    Task,
    utcnow,
)
from airfed.node_api._endings import TaskEndings
from airfed.node_api._store import AssetStore, permissions_of
from airfed.node_api._transient import TransientOutputs
from airfed.node_api.errors import (
    BadRequest,
    Conflict,
    NodeError,
    NotFound,
    PermissionDenied,
    TaskFailed,
)
from airfed.sdk.errors import AirfedError, NodeRequestError
from airfed.sdk.spec import InputRef, OutputSpec, Permission, TaskSpec

if TYPE_CHECKING:
    from airfed.sdk.node_client import NodeClient

__all__ = ["TaskService", "task_out"]

logger = logging.getLogger(__name__)

WAITING, EXECUTING, DONE, FAILED, CANCELED = (
    "waiting",
    "executing",
    "done",
    "failed",
    "canceled",
)
_FINAL = frozenset({DONE, FAILED, CANCELED})
_POLL_SECONDS = 1.0


def task_out(row: Task) -> dict[str, Any]:
    return {
        "key": row.key,
        "plan_key": row.plan_key,
        "worker": row.spec.get("worker"),
        "function_key": row.spec.get("function_key"),
        "round": row.spec.get("round"),
        "rank": row.spec.get("rank"),
        "category": row.spec.get("category"),
        "metadata": row.spec.get("metadata") or {},
        "status": row.status,
        "outputs": row.outputs,
        "performances": row.performances,
        "receipt": row.receipt,
        "error": row.error,
        "created_at": row.created_at.isoformat(),
        "started_at": row.started_at.isoformat() if row.started_at else None,
        "ended_at": row.ended_at.isoformat() if row.ended_at else None,
    }


def _describe(error: pydantic.ValidationError) -> str:
    first = error.errors()[0]
    location = ".".join(str(part) for part in first["loc"]) or "(top level)"
    return f"field {location}: {first['msg']}"


@dataclass
class _Staged:
    """What staging found out: hashes for the receipt, the dataset used."""

    function: Function
    input_hashes: dict[str, str] = field(default_factory=dict)
    inputs: dict[str, list[str]] = field(default_factory=dict)
    opener: str | None = None
    dataset_key: str | None = None


class TaskService:
    """Stores tasks and runs them in the background."""

    def __init__(self, context: NodeContext, store: AssetStore) -> None:
        self.ctx = context
        self.store = store
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._cancels: dict[str, threading.Event] = {}
        self._lock = threading.Lock()
        self._running = 0
        self._pool: ThreadPoolExecutor | None = None
        self._dispatcher: threading.Thread | None = None
        self.endings = TaskEndings()
        self._clients_lock = threading.Lock()
        self._ssl_context: ssl.SSLContext | None = None
        self._partners: dict[str, NodeClient] = {}
        # Called with the task key before a task is staged; raises to refuse it
        # (the node's ledger checks that the task's plan is recorded).
        self.before_run: Callable[[str], None] | None = None
        self.transient = TransientOutputs(context, self.node_ssl_context)

    # -- API

    def submit(self, caller: Caller, body: Any) -> tuple[dict[str, Any], bool]:
        """Store a task; return it and whether it is new."""
        spec, plan, parents = self._parse(body)
        if spec.worker != self.ctx.organization:
            raise BadRequest(
                f"task {spec.key} is for worker {spec.worker}; this node is "
                f"{self.ctx.organization}"
            )
        spec_json = spec.model_dump(mode="json")
        existing = self._existing(spec.key, spec_json)
        if existing is not None:
            return existing, False
        row = Task(
            key=spec.key,
            plan_key=spec.plan_key,
            spec=spec_json,
            plan={**plan, "parents": parents},
            submitter=caller.id,
            status=WAITING,
            outputs={},
            performances={},
        )
        try:
            with self.ctx.db.session() as session:
                session.add(row)
        except Conflict:
            existing = self._existing(spec.key, spec_json)
            if existing is None:
                raise
            return existing, False
        logger.info(
            "task accepted task=%s plan=%s by=%s", spec.key, spec.plan_key, caller.id
        )
        self._wake.set()
        return task_out(row), True

    @staticmethod
    def _parse(body: Any) -> tuple[TaskSpec, dict[str, Any], dict[str, str]]:
        if not isinstance(body, dict):
            raise BadRequest("the task must be a JSON object (a TaskSpec)")
        body = dict(body)
        plan = body.pop("plan", None) or {}
        parents = body.pop("parents", None) or plan.get("parents") or {}
        if not isinstance(plan, dict) or not isinstance(parents, dict):
            raise BadRequest("'plan' and 'parents' must be JSON objects")
        try:
            spec = TaskSpec.model_validate(body)
        except pydantic.ValidationError as exc:
            raise BadRequest(f"task: {_describe(exc)}") from exc
        return spec, plan, {str(k): str(v) for k, v in parents.items()}

    def _existing(self, key: str, spec_json: dict[str, Any]) -> dict[str, Any] | None:
        with self.ctx.db.session() as session:
            row = session.get(Task, key)
            if row is None:
                return None
            if row.spec != spec_json:
                raise Conflict(f"task key {key} already names a different task")
            return task_out(row)

    def get(self, key: str) -> dict[str, Any]:
        with self.ctx.db.session() as session:
            return task_out(self._task(session, key))

    async def wait_for_end(self, key: str, seconds: float) -> dict[str, Any]:
        """Task ``key`` once it has ended, or as it is after ``seconds``.

        Answers early when the node stops. Holds no thread while it waits.
        """
        import anyio.to_thread

        with self.endings.watch(key) as ended:
            task = await anyio.to_thread.run_sync(self.get, key)
            if task["status"] in _FINAL:
                return task
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ended.wait(), seconds)
        return await anyio.to_thread.run_sync(self.get, key)

    @staticmethod
    def _task(session: Session, key: str) -> Task:
        row = session.get(Task, key)
        if row is None:
            raise NotFound(f"no task {key} on this node")
        return row

    def list(self, plan_key: str | None) -> list[dict[str, Any]]:
        with self.ctx.db.session() as session:
            query = select(Task).order_by(Task.created_at)
            if plan_key:
                query = query.where(Task.plan_key == plan_key)
            return [task_out(row) for row in session.scalars(query)]

    def cancel(self, caller: Caller, key: str) -> dict[str, Any]:
        with self.ctx.db.session() as session:
            row = self._task(session, key)
            allowed = {self.ctx.organization, row.submitter.split("/")[0]}
            if row.plan.get("creator"):
                allowed.add(str(row.plan["creator"]))
            if caller.organization not in allowed:
                raise PermissionDenied(f"{caller.id} may not cancel task {key}")
            canceled_now = row.status == WAITING
            if canceled_now:
                row.status = CANCELED
                row.ended_at = utcnow()
            elif row.status == EXECUTING:
                row.cancel_requested = True
        if canceled_now:
            self.endings.ended(key)
            self.transient.release_parents(key)
        event = self._cancels.get(key)
        if event is not None:
            event.set()
        logger.info("task cancel requested task=%s by=%s", key, caller.id)
        return self.get(key)

    def logs(self, caller: Caller, key: str) -> str:
        with self.ctx.db.session() as session:
            row = self._task(session, key)
            self._require_logs_permission(session, caller, row)
            sealed, plain = row.sealed_logs, row.logs
        if sealed is not None:
            return self.ctx.objects.unseal(sealed).decode(errors="replace")
        return plain or ""

    def _require_logs_permission(self, session: Any, caller: Caller, row: Task) -> None:
        if row.dataset_key:
            dataset = session.get(Dataset, row.dataset_key)
            permission = Permission.model_validate(dataset.logs_permission)
            caller.require(permission, dataset.owner, "read this task's logs")
            return
        owners = {self.ctx.organization, row.function_owner}
        if caller.organization not in owners:
            raise PermissionDenied(
                f"{caller.id} is not permitted to read this task's logs"
            )

    # -- dispatcher

    def start(self) -> None:
        self._fail_interrupted()
        self._seal_plain_logs()
        concurrency = self.ctx.options.task_concurrency
        self._pool = ThreadPoolExecutor(concurrency, thread_name_prefix="task")
        self._dispatcher = threading.Thread(
            target=self._dispatch, name="task-dispatcher", daemon=True
        )
        self._dispatcher.start()

    def stop(self) -> None:
        self._stop.set()
        self.endings.close()
        self._wake.set()
        for event in list(self._cancels.values()):
            event.set()
        if self._dispatcher is not None:
            self._dispatcher.join(timeout=10)
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        with self._clients_lock:
            partners, self._partners = list(self._partners.values()), {}
        for client in partners:
            client.close()

    def _fail_interrupted(self) -> None:
        with self.ctx.db.session() as session:
            session.execute(
                update(Task)
                .where(Task.status == EXECUTING)
                .values(
                    status=FAILED,
                    error="the node stopped while the task ran; submit it again "
                    "under a new key",
                    ended_at=utcnow(),
                )
            )

    def _seal_plain_logs(self) -> None:
        """Encrypt logs that a node of an earlier version stored in plaintext."""
        with self.ctx.db.session() as session:
            rows = session.scalars(select(Task).where(Task.logs.is_not(None)))
            count = 0
            for row in rows:
                row.sealed_logs = self.ctx.objects.seal((row.logs or "").encode())
                row.logs = None
                count += 1
        if count:
            logger.info("plaintext task logs sealed count=%d", count)

    def _dispatch(self) -> None:
        while not self._stop.is_set():
            while self._running < self.ctx.options.task_concurrency:
                key = self._claim_next()
                if key is None:
                    break
                with self._lock:
                    self._running += 1
                    self._cancels[key] = threading.Event()
                assert self._pool is not None
                self._pool.submit(self._run_guarded, key)
            self._wake.wait(_POLL_SECONDS)
            self._wake.clear()

    def _claim_next(self) -> str | None:
        with self.ctx.db.session() as session:
            key = session.scalar(
                select(Task.key)
                .where(Task.status == WAITING)
                .order_by(Task.created_at)
                .limit(1)
            )
            if key is None:
                return None
            claimed = session.execute(
                update(Task)
                .where(Task.key == key, Task.status == WAITING)
                .values(status=EXECUTING, started_at=utcnow())
            )
            return key if _rowcount(claimed) == 1 else None

    def _run_guarded(self, key: str) -> None:
        try:
            _TaskRun(self, key).run()
        except Exception:
            logger.exception("task crashed task=%s", key)
            self._finish(key, FAILED, error="the node failed while running the task")
        finally:
            with self._lock:
                self._running -= 1
                self._cancels.pop(key, None)
            self._wake.set()

    def _finish(
        self, key: str, status: str, *, rows: tuple[Any, ...] = (), **values: Any
    ) -> None:
        """Set the task's final status and ``values``; add ``rows`` with them."""
        if "logs" in values:
            log_text = str(values.pop("logs") or "")
            values["sealed_logs"] = self.ctx.objects.seal(log_text.encode())
        with self.ctx.db.session() as session:
            row = self._task(session, key)
            if row.status in _FINAL:
                return
            session.add_all(rows)
            row.status = status
            row.ended_at = utcnow()
            for name, value in values.items():
                setattr(row, name, value)
        logger.info("task ended task=%s status=%s", key, status)
        self.endings.ended(key)
        # Consumers may have released this task's outputs before it finished.
        self.transient.collect(key)
        self.transient.release_parents(key)

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def cancel_event(self, key: str) -> threading.Event:
        return self._cancels.setdefault(key, threading.Event())

    def node_ssl_context(self) -> ssl.SSLContext:
        """The node's TLS identity as a client of other nodes, built once."""
        with self._clients_lock:
            if self._ssl_context is None:
                self._ssl_context = _client_context(self.ctx)
            return self._ssl_context

    def partner(self, organization: str) -> NodeClient:
        """A client of ``organization``'s node whose connections stay open."""
        from airfed.sdk.node_client import NodeClient

        context = self.node_ssl_context()
        with self._clients_lock:
            client = self._partners.get(organization)
            if client is None:
                url = self.ctx.config.network.organization(organization).node_url
                client = self._partners[organization] = NodeClient(url, context)
            return client


def _client_context(context: NodeContext) -> ssl.SSLContext:
    config = context.config
    client = ssl.create_default_context(
        ssl.Purpose.SERVER_AUTH, cafile=str(config.ca_file)
    )
    client.load_cert_chain(str(config.cert_file), str(config.key_file))
    client.minimum_version = ssl.TLSVersion.TLSv1_2
    return client


class _TaskRun:
    """One execution of one task, from staging to the signed receipt."""

    def __init__(self, service: TaskService, key: str) -> None:
        self.service = service
        self.ctx = service.ctx
        self.key = key
        self.cancel = service.cancel_event(key)
        with self.ctx.db.session() as session:
            row = service._task(session, key)
            self.spec = TaskSpec.model_validate(row.spec)
            self.parents: dict[str, str] = dict(row.plan.get("parents") or {})
        self.workdir = self.ctx.work_dir / key

    def run(self) -> None:
        logger.info("task started task=%s plan=%s", self.key, self.spec.plan_key)
        shutil.rmtree(self.workdir, ignore_errors=True)
        self.workdir.mkdir(parents=True, mode=0o700)
        staged: _Staged | None = None
        try:
            if self.service.before_run is not None:
                self.service.before_run(self.key)
            staged = self._stage()
            self._record_context(staged)
            if self.cancel.is_set():
                self._finish(CANCELED, error="canceled before it ran")
                return
            self._execute(staged)
        except (NodeError, AirfedError) as exc:
            self._finish(FAILED, error=str(exc))
        finally:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def _finish(self, status: str, **values: Any) -> None:
        """End the task: its workdir (the function's code, its inputs) is gone
        before anyone can see the task's final status."""
        shutil.rmtree(self.workdir, ignore_errors=True)
        self.service._finish(self.key, status, **values)

    def _record_context(self, staged: _Staged) -> None:
        with self.ctx.db.session() as session:
            row = self.service._task(session, self.key)
            row.dataset_key = staged.dataset_key
            row.function_owner = staged.function.owner

    # -- staging

    def _stage(self) -> _Staged:
        function = self._function()
        staged = _Staged(function=function)
        declared = {item["identifier"]: item for item in function.inputs}
        for ref in self.spec.inputs:
            item = declared.get(ref.identifier)
            if item is None:
                raise TaskFailed(
                    f"input {ref.identifier!r} is not declared by function "
                    f"{function.key}"
                )
            self._stage_input(staged, ref, item["kind"])
        self._check_arity(staged, declared)
        self._extract(function.object_id, self.workdir / "function")
        (self.workdir / "outputs").mkdir()
        self._write_task_file(staged)
        return staged

    def _function(self) -> Function:
        with self.ctx.db.session() as session:
            function = session.get(Function, self.spec.function_key)
            if function is None:
                raise TaskFailed(
                    f"function {self.spec.function_key} is not registered on the "
                    f"node of {self.ctx.organization}"
                )
            permission = permissions_of(function.permissions).process
            Caller(self.ctx.organization).require(
                permission, function.owner, f"run function {function.key}"
            )
            return function

    def _check_arity(self, staged: _Staged, declared: dict[str, Any]) -> None:
        for identifier, item in declared.items():
            count = len(staged.inputs.get(identifier, []))
            if count == 0 and not item.get("optional"):
                raise TaskFailed(f"the task lacks the required input {identifier!r}")
            if count > 1 and not item.get("multiple"):
                raise TaskFailed(f"input {identifier!r} takes one item, got {count}")

    def _slot(self, staged: _Staged, identifier: str) -> tuple[str, Path]:
        paths = staged.inputs.setdefault(identifier, [])
        relative = f"inputs/{identifier}/{len(paths)}"
        paths.append(relative)
        target = self.workdir / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        return relative, target

    def _stage_input(self, staged: _Staged, ref: InputRef, kind: str) -> None:
        if kind == "dataset":
            self._stage_opener(staged, ref)
        elif kind == "datasamples":
            self._stage_sample(staged, ref)
        elif ref.asset_key is not None:
            self._stage_local_model(staged, ref, ref.asset_key)
        else:
            self._stage_parent_output(staged, ref)

    def _dataset_for(self, staged: _Staged, dataset_key: str) -> Dataset:
        with self.ctx.db.session() as session:
            dataset = session.get(Dataset, dataset_key)
            if dataset is None:
                raise TaskFailed(f"dataset {dataset_key} is not on this node")
        owner = staged.function.owner
        permission = permissions_of(dataset.permissions).process
        Caller(owner).require(
            permission,
            dataset.owner,
            f"process dataset {dataset.key} with its function",
        )
        staged.dataset_key = dataset.key
        return dataset

    def _stage_opener(self, staged: _Staged, ref: InputRef) -> None:
        dataset = self._dataset_for(staged, ref.asset_key or "")
        relative = "inputs/opener/opener.py"
        target = self.workdir / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        self.ctx.objects.decrypt_to(dataset.opener_object, target)
        staged.inputs.setdefault(ref.identifier, []).append(relative)
        staged.opener = relative
        staged.input_hashes[ref.identifier] = dataset.opener_checksum

    def _stage_sample(self, staged: _Staged, ref: InputRef) -> None:
        with self.ctx.db.session() as session:
            sample = session.get(DataSample, ref.asset_key or "")
            if sample is None:
                raise TaskFailed(f"data sample {ref.asset_key} is not on this node")
        self._dataset_for(staged, sample.dataset_key)
        relative, target = self._slot(staged, ref.identifier)
        self._extract(sample.object_id, target)
        staged.input_hashes[relative.removeprefix("inputs/")] = sample.checksum

    def _extract(self, object_id: str, target: Path) -> None:
        options = self.ctx.options
        with tempfile.TemporaryDirectory(dir=self.ctx.objects.tmp_dir) as scratch:
            archive = Path(scratch) / "archive"
            self.ctx.objects.decrypt_to(object_id, archive)
            try:
                safe_extract(
                    archive,
                    target,
                    max_bytes=options.archive_max_bytes,
                    max_files=options.archive_max_files,
                )
            except ArchiveError as exc:
                raise TaskFailed(
                    f"a stored archive could not be unpacked: {exc}"
                ) from exc

    def _stage_local_model(
        self, staged: _Staged, ref: InputRef, model_key: str
    ) -> None:
        with self.ctx.db.session() as session:
            model = session.get(Model, model_key)
            if model is None:
                raise TaskFailed(f"model {model_key} is not on this node")
            if model.deleted_at is not None:
                raise TaskFailed(
                    f"model {model_key} was transient and has been deleted; "
                    "its consumers had all finished"
                )
            permission = permissions_of(model.permissions).process
            Caller(self.ctx.organization).require(
                permission, model.owner, f"process model {model_key}"
            )
            session.add(
                ModelAccess(
                    model_key=model_key,
                    organization=self.ctx.organization,
                    user=None,
                    purpose="process",
                )
            )
        relative, target = self._slot(staged, ref.identifier)
        self.ctx.objects.decrypt_to(model.object_id, target)
        staged.input_hashes[relative.removeprefix("inputs/")] = model.checksum

    def _stage_parent_output(self, staged: _Staged, ref: InputRef) -> None:
        parent_key = ref.parent_task_key or ""
        with self.ctx.db.session() as session:
            local = session.get(Task, parent_key)
            local_outputs = dict(local.outputs) if local is not None else None
            local_status = local.status if local is not None else None
        if local_outputs is not None:
            output = self._parent_output(parent_key, local_status, local_outputs, ref)
            self._stage_local_model(staged, ref, str(output["model_key"]))
            return
        self._fetch_remote(staged, ref, parent_key)

    @staticmethod
    def _parent_output(
        parent_key: str, status: str | None, outputs: dict[str, Any], ref: InputRef
    ) -> dict[str, Any]:
        if status != DONE:
            raise TaskFailed(f"parent task {parent_key} is {status}, not done")
        output = outputs.get(ref.parent_output or "")
        if not output or output.get("kind") != "model":
            raise TaskFailed(
                f"parent task {parent_key} has no model output {ref.parent_output!r}"
            )
        return dict(output)

    def _fetch_remote(self, staged: _Staged, ref: InputRef, parent_key: str) -> None:
        for organization in self._parent_candidates(parent_key):
            client = self.service.partner(organization)
            try:
                parent = _get_task(client, parent_key)
            except NodeRequestError as exc:
                if exc.status == 404:
                    continue
                raise TaskFailed(
                    f"node {organization} did not give parent task "
                    f"{parent_key}: {exc.detail}"
                ) from exc
            output = self._parent_output(
                parent_key, parent.get("status"), parent.get("outputs") or {}, ref
            )
            relative, target = self._slot(staged, ref.identifier)
            try:
                checksum = client.download_model(str(output["model_key"]), target)
            except NodeRequestError as exc:
                raise TaskFailed(
                    f"node {organization} refused model {output['model_key']}: "
                    f"{exc.detail}"
                ) from exc
            if checksum != output.get("checksum"):
                raise TaskFailed(f"model {output['model_key']} failed its checksum")
            staged.input_hashes[relative.removeprefix("inputs/")] = checksum
            return
        raise TaskFailed(f"no node of the network knows parent task {parent_key}")

    def _parent_candidates(self, parent_key: str) -> list[str]:
        named = self.parents.get(parent_key)
        if named:
            return [named]
        return [
            org.id
            for org in self.ctx.config.network.partners
            if org.id != self.ctx.organization
        ]

    def _write_task_file(self, staged: _Staged) -> None:
        import json

        function = staged.function
        document = {
            "task": self.spec.model_dump(mode="json"),
            "function": {
                "key": function.key,
                "name": function.name,
                "description": function.description,
                "entrypoint": function.entrypoint,
                "inputs": function.inputs,
                "outputs": function.outputs,
                "permissions": function.permissions,
            },
            "inputs": staged.inputs,
            "opener": staged.opener,
        }
        (self.workdir / "task.json").write_text(json.dumps(document, indent=1))

    # -- execution and results

    def _execute(self, staged: _Staged) -> None:
        from airfed.node_api import _executor

        config = self.ctx.config
        limits = _executor.Limits(
            cpu_seconds=int(config.task_cpu_seconds),
            memory_bytes=int(config.task_memory_bytes),
            wall_seconds=float(config.task_wall_seconds),
            max_output_bytes=int(config.max_upload_bytes),
        )
        outcome = _executor.execute(
            self.workdir,
            limits,
            self.cancel,
            launcher=self.ctx.options.task_launcher,
        )
        log_text = str(outcome.log or "")
        status = str(outcome.status)
        result = dict(outcome.result or {})
        if self.service.stopping:
            stopped = "the node stopped while the task ran; submit it again"
            self._finish(FAILED, logs=log_text, error=stopped)
            return
        if self.cancel.is_set() or status == CANCELED:
            self._finish(CANCELED, logs=log_text, error="canceled")
            return
        if status != DONE:
            error = outcome.error or result.get("error")
            self._end(
                staged, FAILED, {}, {}, log_text, str(error or "the function failed")
            )
            return
        outputs, performances, rows = self._store_outputs(staged, result)
        self._end(staged, DONE, outputs, performances, log_text, None, rows)

    def _store_outputs(
        self, staged: _Staged, result: dict[str, Any]
    ) -> tuple[dict[str, Any], dict[str, float], tuple[Any, ...]]:
        outputs: dict[str, Any] = {}
        performances: dict[str, float] = {}
        reported = dict(result.get("performances") or {})
        for item in staged.function.outputs:
            identifier = item["identifier"]
            if item["kind"] == "performance":
                if identifier in reported:
                    value = float(reported[identifier])
                    performances[identifier] = value
                    outputs[identifier] = {"kind": "performance", "value": value}
                continue
            outputs[identifier] = self._store_model(identifier)
        return outputs, performances, self._rows(outputs, performances)

    def _store_model(self, identifier: str) -> dict[str, Any]:
        path = (self.workdir / "outputs" / identifier).resolve()
        if not path.is_file() or self.workdir.resolve() not in path.parents:
            raise TaskFailed(f"the function wrote no file for output {identifier!r}")
        stored = self.ctx.objects.put_file(path)
        spec = self.spec.outputs.get(identifier) or OutputSpec()
        return {
            "kind": "model",
            "model_key": str(uuid.uuid4()),
            "checksum": stored.checksum,
            "size": stored.size,
            "object_id": stored.object_id,
            "permissions": spec.permissions.model_dump(mode="json"),
            "transient": spec.transient,
            "consumers": list(spec.consumers),
        }

    def _rows(
        self, outputs: dict[str, Any], performances: dict[str, float]
    ) -> tuple[Any, ...]:
        """The models and performances to record with the task's end."""
        rows: list[Any] = [
            Model(
                key=output["model_key"],
                owner=self.ctx.organization,
                plan_key=self.spec.plan_key,
                task_key=self.spec.key,
                identifier=identifier,
                permissions=output.pop("permissions"),
                transient=output.pop("transient"),
                consumers=output.pop("consumers"),
                object_id=output.pop("object_id"),
                checksum=output["checksum"],
                size=output.pop("size"),
            )
            for identifier, output in outputs.items()
            if output["kind"] == "model"
        ]
        rows.extend(
            Performance(
                task_key=self.spec.key,
                plan_key=self.spec.plan_key,
                round=self.spec.round,
                worker=self.ctx.organization,
                identifier=identifier,
                value=value,
            )
            for identifier, value in performances.items()
        )
        return tuple(rows)

    def _end(
        self,
        staged: _Staged,
        status: str,
        outputs: dict[str, Any],
        performances: dict[str, float],
        log_text: str,
        error: str | None,
        rows: tuple[Any, ...] = (),
    ) -> None:
        from airfed.node_api._receipt import sign_receipt

        receipt = sign_receipt(
            self.ctx.identity_key,
            task_key=self.key,
            function_hash=staged.function.checksum,
            input_hashes=staged.input_hashes,
            output_hashes={
                name: out["checksum"]
                for name, out in outputs.items()
                if out["kind"] == "model"
            },
            status=status,
            signer=self.ctx.organization,
        )
        self._finish(
            status,
            outputs=outputs,
            performances=performances,
            receipt=receipt,
            logs=log_text,
            error=error,
            rows=rows,
        )


def _get_task(client: NodeClient, key: str) -> dict[str, Any]:
    """``GET /tasks/{key}``, once more if a kept-alive connection had closed."""
    try:
        return client.get_task(key)
    except NodeRequestError as exc:
        if exc.status != 0:
            raise
    return client.get_task(key)


def _rowcount(result: Any) -> int:
    """Rows an UPDATE touched (``CursorResult.rowcount``)."""
    return int(result.rowcount)
