"""One run of one task on the node: stage, execute, store, sign.

:class:`TaskService` (``airfed.node_api._tasks``) claims a waiting task and
hands it to a :class:`TaskRun`, which

1. checks permissions: the function's process permission must allow this
   node's organization (the worker); for every dataset and data sample input,
   the dataset's process permission must allow the function's owner; every
   input model's process permission must allow the worker;
2. stages the workdir (contract B): the function's code, the dataset's
   opener, the data samples, and the input models: local ones are decrypted
   from the store, outputs of parents that ran elsewhere are fetched from the
   parent's node over mutual TLS (``GET /tasks/{parent}``, then
   ``GET /models/{key}``) and their checksum verified;
3. executes the function in an isolated process (``_executor.execute``);
4. stores model outputs encrypted with the permissions the task names,
   records performances, signs the receipt and deletes the workdir, then
   sets the final status.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airfed.node_api._archive import ArchiveError, safe_extract
from airfed.node_api._auth import Caller
from airfed.node_api._db import (
    DataSample,
    Dataset,
    Function,
    Model,
    ModelAccess,
    Performance,
    Task,
)
from airfed.node_api._store import permissions_of
from airfed.node_api.errors import NodeError, TaskFailed
from airfed.sdk.errors import AirfedError, NodeRequestError
from airfed.sdk.spec import InputRef, OutputSpec, TaskSpec

if TYPE_CHECKING:
    from airfed.node_api._tasks import TaskService
    from airfed.sdk.node_client import NodeClient

__all__ = [
    "CANCELED",
    "DONE",
    "EXECUTING",
    "FAILED",
    "POD",
    "RUNNERS",
    "RUNNER_FIELD",
    "SUBPROCESS",
    "WAITING",
    "Staged",
    "TaskRun",
    "runner_of",
]

logger = logging.getLogger(__name__)

WAITING, EXECUTING, DONE, FAILED, CANCELED = (
    "waiting",
    "executing",
    "done",
    "failed",
    "canceled",
)


# How a task runs: in the node's sandbox, or as a pod on the partner's cluster.
SUBPROCESS, POD = "subprocess", "pod"
RUNNERS = (SUBPROCESS, POD)
# The key of the task row's ``plan`` that names a pod task's runner.
RUNNER_FIELD = "runner"


def runner_of(row: Task) -> str:
    """How the stored task ``row`` was posted to run."""
    return str((row.plan or {}).get(RUNNER_FIELD) or SUBPROCESS)


@dataclass
class Staged:
    """What staging found out: hashes for the receipt, the dataset used."""

    function: Function
    input_hashes: dict[str, str] = field(default_factory=dict)
    inputs: dict[str, list[str]] = field(default_factory=dict)
    opener: str | None = None
    dataset_key: str | None = None


class TaskRun:
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
        staged: Staged | None = None
        try:
            if self.service.before_run is not None:
                self.service.before_run(self.key)
            staged = self._stage()
            self._record_context(staged)
            if self.service.stopping:
                return  # runs again when the node starts
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

    def _record_context(self, staged: Staged) -> None:
        with self.ctx.db.session() as session:
            row = self.service._task(session, self.key)
            row.dataset_key = staged.dataset_key
            row.function_owner = staged.function.owner

    # -- staging

    def _stage(self) -> Staged:
        function = self._function()
        staged = Staged(function=function)
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

    def _check_arity(self, staged: Staged, declared: dict[str, Any]) -> None:
        for identifier, item in declared.items():
            count = len(staged.inputs.get(identifier, []))
            if count == 0 and not item.get("optional"):
                raise TaskFailed(f"the task lacks the required input {identifier!r}")
            if count > 1 and not item.get("multiple"):
                raise TaskFailed(f"input {identifier!r} takes one item, got {count}")

    def _slot(self, staged: Staged, identifier: str) -> tuple[str, Path]:
        paths = staged.inputs.setdefault(identifier, [])
        relative = f"inputs/{identifier}/{len(paths)}"
        paths.append(relative)
        target = self.workdir / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        return relative, target

    def _stage_input(self, staged: Staged, ref: InputRef, kind: str) -> None:
        if kind == "dataset":
            self._stage_opener(staged, ref)
        elif kind == "datasamples":
            self._stage_sample(staged, ref)
        elif ref.asset_key is not None:
            self._stage_local_model(staged, ref, ref.asset_key)
        else:
            self._stage_parent_output(staged, ref)

    def _dataset_for(self, staged: Staged, dataset_key: str) -> Dataset:
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

    def _stage_opener(self, staged: Staged, ref: InputRef) -> None:
        dataset = self._dataset_for(staged, ref.asset_key or "")
        relative = "inputs/opener/opener.py"
        target = self.workdir / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        self.ctx.objects.decrypt_to(dataset.opener_object, target)
        staged.inputs.setdefault(ref.identifier, []).append(relative)
        staged.opener = relative
        staged.input_hashes[ref.identifier] = dataset.opener_checksum

    def _stage_sample(self, staged: Staged, ref: InputRef) -> None:
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

    def _stage_local_model(self, staged: Staged, ref: InputRef, model_key: str) -> None:
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

    def _stage_parent_output(self, staged: Staged, ref: InputRef) -> None:
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

    def _fetch_remote(self, staged: Staged, ref: InputRef, parent_key: str) -> None:
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

    def _write_task_file(self, staged: Staged) -> None:
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

    def _execute(self, staged: Staged) -> None:
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
            return  # left executing: it runs again when the node starts
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
        self, staged: Staged, result: dict[str, Any]
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
        staged: Staged,
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
