"""Tasks on the node: accept, list, cancel, and run them in the background.

``POST /tasks`` stores a task as *waiting* (a key already stored returns the
existing task, so retries are safe). A dispatcher thread claims waiting tasks
up to ``task_concurrency`` at a time and runs each one
(``airfed.node_api._task_run``: check permissions, stage, execute, store,
sign). A task ends *done*, *failed* (the error says why) or *canceled*.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import pydantic
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from airfed.node_api._auth import Caller
from airfed.node_api._context import NodeContext
from airfed.node_api._db import (
    Dataset,
    Task,
    utcnow,
)
from airfed.node_api._endings import TaskEndings
from airfed.node_api._store import AssetStore
from airfed.node_api._task_run import (
    CANCELED,
    DONE,
    EXECUTING,
    FAILED,
    POD,
    RUNNER_FIELD,
    SUBPROCESS,
    WAITING,
    TaskRun,
    runner_of,
)
from airfed.node_api._transient import TransientOutputs
from airfed.node_api.errors import (
    BadRequest,
    Conflict,
    NotFound,
    PermissionDenied,
)
from airfed.sdk.spec import Permission, TaskSpec

if TYPE_CHECKING:
    from airfed.sdk.node_client import NodeClient

__all__ = ["TaskService", "task_out"]

logger = logging.getLogger(__name__)

_FINAL = frozenset({DONE, FAILED, CANCELED})
_POLL_SECONDS = 1.0
_WHERE = {SUBPROCESS: "on the node", POD: "as a pod"}
# A task interrupted by the node's stop runs again at the next start, this many
# times at most; the count is kept in the task row's ``plan``.
_MAX_RESTARTS = 2
_RESTARTS_FIELD = "restarts"


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
        row, existing = self.admit(caller, body, SUBPROCESS)
        if existing is not None:
            return existing, False
        existing = self.insert(row, SUBPROCESS)
        if existing is not None:
            return existing, False
        logger.info(
            "task accepted task=%s plan=%s by=%s", row.key, row.plan_key, caller.id
        )
        self._wake.set()
        return task_out(row), True

    def admit(
        self, caller: Caller, body: Any, runner: str
    ) -> tuple[Task, dict[str, Any] | None]:
        """A new waiting row for the task that ``body`` posts to ``runner``,
        and the task already stored under its key, if any.

        A key already stored answers with that task when it is the same task
        posted to the same runner (retries are safe), and is a conflict
        otherwise.
        """
        spec, plan, parents = self._parse(body)
        if spec.worker != self.ctx.organization:
            raise BadRequest(
                f"task {spec.key} is for worker {spec.worker}; this node is "
                f"{self.ctx.organization}"
            )
        spec_json = spec.model_dump(mode="json")
        how = {} if runner == SUBPROCESS else {RUNNER_FIELD: runner}
        row = Task(
            key=spec.key,
            plan_key=spec.plan_key,
            spec=spec_json,
            plan={**plan, "parents": parents, **how},
            submitter=caller.id,
            status=WAITING,
            outputs={},
            performances={},
        )
        return row, self._existing(spec.key, spec_json, runner)

    def insert(
        self, row: Task, runner: str, *, claim: bool = False
    ) -> dict[str, Any] | None:
        """Store the new ``row``; None, or the task that a concurrent post of
        the same key stored first. ``claim`` marks it executing in the same
        transaction, so that the dispatcher never sees it waiting."""
        try:
            with self.ctx.db.session() as session:
                session.add(row)
                if claim:
                    session.flush()
                    session.execute(
                        update(Task)
                        .where(Task.key == row.key)
                        .values(status=EXECUTING, started_at=utcnow())
                    )
        except Conflict:
            existing = self._existing(row.key, row.spec, runner)
            if existing is None:
                raise
            return existing
        return None

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

    def _existing(
        self, key: str, spec_json: dict[str, Any], runner: str
    ) -> dict[str, Any] | None:
        with self.ctx.db.session() as session:
            row = session.get(Task, key)
            if row is None:
                return None
            if row.spec != spec_json:
                raise Conflict(f"task key {key} already names a different task")
            stored = runner_of(row)
            if stored != runner:
                raise Conflict(
                    f"task {key} was posted to run {_WHERE[stored]}, "
                    f"not {_WHERE[runner]}"
                )
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
        self._resume_interrupted()
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

    def _resume_interrupted(self) -> None:
        """Tasks that were executing when the node stopped, or died.

        A task run on the node waits to run again from the start (its outputs
        were never stored), at most ``_MAX_RESTARTS`` times: a function that
        keeps bringing the node down then fails. A pod task being prepared
        fails; it is posted again under a new key.
        """
        with self.ctx.db.session() as session:
            for row in session.scalars(select(Task).where(Task.status == EXECUTING)):
                on_node = runner_of(row) == SUBPROCESS
                restarts = int((row.plan or {}).get(_RESTARTS_FIELD, 0)) + 1
                if on_node and restarts <= _MAX_RESTARTS:
                    # Its stale workdir goes when the task is staged again.
                    row.plan = {**(row.plan or {}), _RESTARTS_FIELD: restarts}
                    row.status, row.started_at = WAITING, None
                    logger.warning("task interrupted, runs again task=%s", row.key)
                    continue
                times = f", {restarts} times" if on_node else ""
                row.status, row.ended_at = FAILED, utcnow()
                row.error = (
                    f"the node stopped while the task ran{times}; "
                    "submit it again under a new key"
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
            TaskRun(self, key).run()
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


def _rowcount(result: Any) -> int:
    """Rows an UPDATE touched (``CursorResult.rowcount``)."""
    return int(result.rowcount)
