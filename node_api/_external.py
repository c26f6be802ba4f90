"""Tasks that run outside the node: prepared on its storage, collected after.

A task posted with ``"runner": "pod"`` runs as a pod on the organization's
Kubernetes cluster (the orchestrator's ``NodeTaskPodOperator``) instead of
in the node's sandboxed subprocess. The node still does everything around
the run, with the same code as for the tasks it runs itself:

1. ``POST /tasks`` stores the task and prepares it in the background: the
   ledger and permission checks, then the staging of contract B (function
   code, opener, data samples, input models, parents' models fetched from
   their nodes over mutual TLS) into ``<storage>/tasks/<key>/``, the folder
   the pod mounts at ``/airfed/task``. The task is then *prepared*;
2. the pod runs ``airfed task run --workdir /airfed/task``, which writes
   ``outputs/`` and ``result.json`` there;
3. ``POST /tasks/{key}/collect`` reads ``result.json``, stores the model
   outputs encrypted, records the performances, signs the receipt and
   deletes the workdir: the task ends *done* or *failed* as a task the node
   ran would. Collecting an ended task returns it unchanged.

What preparation established (the input hashes the receipt signs) stays in
the node's database, never in the workdir: the pod's function can write
there. A workdir whose task is no longer prepared is deleted when the node
starts, so decrypted inputs never outlive their task across restarts.

Known shortcomings: the function's log stays with the pod (Airflow shows it
in the task's log), so ``GET /tasks/{key}/logs`` holds only the node's note
of a failure; and a prepared task that is never collected nor canceled keeps
its decrypted inputs on the node's storage until it is.
"""

from __future__ import annotations

import json
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from airfed.node_api._auth import Caller
from airfed.node_api._context import NodeContext
from airfed.node_api._db import Function, Task
from airfed.node_api._executor import cleanup
from airfed.node_api._task_run import (
    CANCELED,
    DONE,
    EXECUTING,
    FAILED,
    POD,
    RUNNERS,
    SUBPROCESS,
    Staged,
    TaskRun,
    runner_of,
)
from airfed.node_api._tasks import TaskService
from airfed.node_api.errors import (
    BadRequest,
    Conflict,
    NodeError,
    PermissionDenied,
    TaskFailed,
)
from airfed.sdk.errors import AirfedError
from airfed.sdk.function import RESULT_FILE

__all__ = [
    "POD",
    "PREPARED",
    "RUNNERS",
    "SUBPROCESS",
    "ExternalTasks",
    "external_workdir",
    "split_runner",
]

logger = logging.getLogger(__name__)

# Staged on the node's storage, waiting for its pod to run and be collected.
PREPARED = "prepared"
_FINAL = frozenset({DONE, FAILED, CANCELED})
# The key of the task row's ``plan`` that records the staging (never served).
_PREPARED_FIELD = "prepared"


def external_workdir(context: NodeContext, key: str) -> Path:
    """Where the task ``key`` is prepared for a pod: ``<storage>/tasks/<key>``."""
    return Path(context.config.storage_dir) / "tasks" / key


def split_runner(body: Any) -> tuple[str, Any]:
    """The runner a ``POST /tasks`` body asks for (``subprocess`` by default)
    and the body without it."""
    if not isinstance(body, dict) or "runner" not in body:
        return SUBPROCESS, body
    runner = body["runner"]
    if runner not in RUNNERS:
        raise BadRequest(f"field runner: must be one of {', '.join(RUNNERS)}")
    return str(runner), {
        name: value for name, value in body.items() if name != "runner"
    }


class ExternalTasks:
    """Prepares tasks for pods and collects what the pods wrote."""

    def __init__(self, service: TaskService) -> None:
        self.service = service
        self.ctx = service.ctx
        self._pool: ThreadPoolExecutor | None = None
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}

    # -- lifecycle

    def start(self) -> None:
        """Delete stale workdirs, then accept preparations.

        Call after ``TaskService.start``, which fails the tasks that were
        being prepared when the node stopped.
        """
        self._sweep()
        concurrency = self.ctx.options.task_concurrency
        self._pool = ThreadPoolExecutor(concurrency, thread_name_prefix="prepare")

    def stop(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def _sweep(self) -> None:
        root = external_workdir(self.ctx, "x").parent
        if not root.is_dir():
            return
        for workdir in root.iterdir():
            with self.ctx.db.session() as session:
                row = session.get(Task, workdir.name)
                status = row.status if row is not None else None
            if status != PREPARED:
                cleanup(workdir)
                logger.info("stale task workdir deleted task=%s", workdir.name)

    # -- API

    def submit(self, caller: Caller, body: Any) -> tuple[dict[str, Any], bool]:
        """Store a pod task and start preparing it; return it and whether it is new."""
        row, existing = self.service.admit(caller, body, POD)
        if existing is not None:
            return existing, False
        existing = self.service.insert(row, POD, claim=True)
        if existing is not None:
            return existing, False
        logger.info(
            "pod task accepted task=%s plan=%s by=%s", row.key, row.plan_key, caller.id
        )
        if self._pool is None:
            self.service._finish(
                row.key, FAILED, error="this node does not run tasks; post it again"
            )
        else:
            self._pool.submit(self._prepare_guarded, row.key)
        return self.service.get(row.key), True

    def collect(self, caller: Caller, key: str) -> dict[str, Any]:
        """End a prepared task from what its pod wrote; safe to call again."""
        with self._lock(key):
            with self.ctx.db.session() as session:
                row = self.service._task(session, key)
                self._require_orchestrating(caller, row, "collect")
                status = row.status
            if status in _FINAL:
                return self.service.get(key)
            if status != PREPARED:
                raise Conflict(
                    f"task {key} is {status}; collect it once it is {PREPARED}"
                )
            try:
                _PodTaskRun(self.service, key).collect()
            finally:
                self.service._cancels.pop(key, None)
                self._forget(key)
        return self.service.get(key)

    def cancel(self, caller: Caller, key: str) -> dict[str, Any] | None:
        """Cancel a prepared pod task; None when the task is not one."""
        with self._lock(key):
            with self.ctx.db.session() as session:
                row = self.service._task(session, key)
                if runner_of(row) != POD or row.status != PREPARED:
                    return None
                self._require_orchestrating(caller, row, "cancel")
            cleanup(external_workdir(self.ctx, key))
            self.service._finish(key, CANCELED, error="canceled")
            self._forget(key)
        logger.info("pod task canceled task=%s by=%s", key, caller.id)
        return self.service.get(key)

    def _require_orchestrating(self, caller: Caller, row: Task, action: str) -> None:
        """Only the node, the submitter and the plan's creator steer a task."""
        if runner_of(row) != POD:
            raise Conflict(
                f"task {row.key} runs on the node, not as a pod; there is nothing "
                f"to {action}"
            )
        allowed = {self.ctx.organization, row.submitter.split("/")[0]}
        if row.plan.get("creator"):
            allowed.add(str(row.plan["creator"]).split("/")[0])
        if caller.organization not in allowed:
            raise PermissionDenied(f"{caller.id} may not {action} task {row.key}")

    def _lock(self, key: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(key, threading.Lock())

    def _forget(self, key: str) -> None:
        """Drop an ended task's lock: whoever takes a new one finds it ended."""
        with self._guard:
            self._locks.pop(key, None)

    # -- background preparation

    def _prepare_guarded(self, key: str) -> None:
        try:
            _PodTaskRun(self.service, key).prepare()
        except Exception:
            logger.exception("task preparation crashed task=%s", key)
            cleanup(external_workdir(self.ctx, key))
            self.service._finish(
                key, FAILED, error="the node failed while preparing the task"
            )
        finally:
            self.service._cancels.pop(key, None)


class _PodTaskRun(TaskRun):
    """One pod task: prepared like a node task, ended from its result.json."""

    def __init__(self, service: TaskService, key: str) -> None:
        super().__init__(service, key)
        self.workdir = external_workdir(self.ctx, key)

    def prepare(self) -> None:
        logger.info("task preparing task=%s plan=%s", self.key, self.spec.plan_key)
        if self.workdir.exists():
            cleanup(self.workdir)
        self.workdir.mkdir(parents=True, mode=0o700)
        # The workdir goes before the status changes: whoever sees the task
        # ended finds no decrypted input left.
        try:
            if self.service.before_run is not None:
                self.service.before_run(self.key)
            staged = self._stage()
            self._record_context(staged)
        except (NodeError, AirfedError) as exc:
            cleanup(self.workdir)
            self.service._finish(self.key, FAILED, error=str(exc))
            return
        if self.cancel.is_set():
            cleanup(self.workdir)
            self.service._finish(self.key, CANCELED, error="canceled before it ran")
        elif not self._mark_prepared(staged):
            cleanup(self.workdir)

    def _mark_prepared(self, staged: Staged) -> bool:
        with self.ctx.db.session() as session:
            row = self.service._task(session, self.key)
            if row.status != EXECUTING:
                return False
            record = {"input_hashes": staged.input_hashes}
            row.plan = {**row.plan, _PREPARED_FIELD: record}
            row.status = PREPARED
        logger.info("task prepared task=%s workdir=%s", self.key, self.workdir)
        return True

    def collect(self) -> None:
        staged = self._restaged()
        try:
            result = self._result()
            if result.get("status") == DONE:
                self._check_outputs(staged, result)
                outputs, performances, rows = self._store_outputs(staged, result)
                ending: tuple[Any, ...] = (DONE, outputs, performances, "", None, rows)
            else:
                error = str(result.get("error") or "the function failed")
                ending = (FAILED, {}, {}, f"airfed: {error}\n", error)
        except (NodeError, AirfedError) as exc:
            logger.warning("task result refused task=%s error=%s", self.key, exc)
            ending = (FAILED, {}, {}, f"airfed: {exc}\n", str(exc))
        finally:
            cleanup(self.workdir)
        self._end(staged, *ending)

    def _restaged(self) -> Staged:
        with self.ctx.db.session() as session:
            row = self.service._task(session, self.key)
            record = dict((row.plan or {}).get(_PREPARED_FIELD) or {})
            function = session.get(Function, self.spec.function_key)
        if function is None:
            raise TaskFailed(f"function {self.spec.function_key} is no longer stored")
        return Staged(
            function=function, input_hashes=dict(record.get("input_hashes") or {})
        )

    def _result(self) -> dict[str, Any]:
        path = self.workdir / RESULT_FILE
        if path.is_symlink() or not path.is_file():
            raise TaskFailed(
                f"the pod wrote no {RESULT_FILE}: it did not run, or was stopped "
                "before the function ended"
            )
        try:
            result = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise TaskFailed(f"the pod's {RESULT_FILE} is not valid JSON") from exc
        if not isinstance(result, dict) or result.get("status") not in (DONE, FAILED):
            raise TaskFailed(
                f"the pod's {RESULT_FILE} has no status done or failed; it was "
                "not written by the task runtime"
            )
        return result

    def _check_outputs(self, staged: Staged, result: dict[str, Any]) -> None:
        """Refuse the whole result before anything is stored."""
        reported = result.get("performances") or {}
        if not isinstance(reported, dict):
            raise TaskFailed(f"performances in {RESULT_FILE} must be a JSON object")
        limit = int(self.ctx.config.max_upload_bytes)
        root = self.workdir.resolve()
        # Performances first: a wrong value is named even when files are missing.
        items = sorted(
            staged.function.outputs, key=lambda i: i["kind"] != "performance"
        )
        for item in items:
            identifier = item["identifier"]
            if item["kind"] == "performance":
                value = reported.get(identifier)
                if value is not None and not _is_number(value):
                    raise TaskFailed(f"performance {identifier!r} is not a number")
                continue
            path = self.workdir / "outputs" / identifier
            if (
                path.is_symlink()
                or not path.is_file()
                or root not in path.resolve().parents
            ):
                raise TaskFailed(
                    f"the function wrote no file for output {identifier!r}"
                )
            if path.stat().st_size > limit:
                raise TaskFailed(
                    f"output {identifier!r} is larger than the node's limit of "
                    f"{limit} bytes"
                )


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
