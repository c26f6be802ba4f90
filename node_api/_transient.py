"""Transient outputs: a model deleted once the tasks that consume it are done.

A task output marked ``transient`` (an intermediate state, a local model
that only the next round reads) must not outlive its use. The mechanism:

1. The consumers are named in the producing task's spec: compiling a plan
   fills ``OutputSpec.consumers`` with the keys of the child tasks that take
   the output as an input. The producing node stores them with the model, so
   it alone decides, without asking the orchestrator.
2. When a task reaches a final status (done, failed or canceled) its node
   releases each of its parents: ``POST /tasks/{parent}/release`` on the
   parent's node over mutual TLS (the parent's worker comes from the plan's
   ``parents``), or directly when the parent ran on the same node. A release
   is recorded per (producing task, consumer), so it may arrive before the
   parent has finished, and repeating it changes nothing.
3. A transient model whose consumers have all released it is deleted: its
   encrypted file goes, its row stays with ``deleted_at`` set, its metadata
   and checksum intact (receipts and the ledger still name it). Fetching it
   afterwards answers 410 Gone.
4. In any case, when the plan ends or is canceled, ``POST /plans/{key}/end``
   deletes every transient model of the plan left on the node: a consumer
   whose node was down when it finished, or an output that no task consumes,
   is not kept forever.

Why consumers report to the producer rather than the producer counting
fetches: a consumer that fails or is canceled before it fetches must still
count, and a consumer on the producer's own node fetches nothing over HTTP.

Who may release: the node's own organization, or an organization that the
output's process permission names (every remote consumer's worker needs that
permission to fetch it). A release that names no consumer of a transient
output of the task is answered and records nothing: consumers release every
parent, and most outputs are not transient.
"""

from __future__ import annotations

import logging
import ssl
import threading
from collections.abc import Callable, Iterable
from typing import Any

from sqlalchemy import select

from airfed.node_api._auth import Caller
from airfed.node_api._context import NodeContext
from airfed.node_api._db import Model, OutputRelease, Task, utcnow
from airfed.node_api._store import permissions_of
from airfed.node_api.errors import Conflict, NotFound, PermissionDenied
from airfed.sdk.errors import AirfedError

__all__ = ["TransientOutputs"]

logger = logging.getLogger(__name__)


def _transient_consumers(spec: dict[str, Any]) -> dict[str, list[str]]:
    """Output identifier -> consumers, for the transient outputs of a spec."""
    outputs = spec.get("outputs") or {}
    return {
        str(name): [str(c) for c in output.get("consumers") or ()]
        for name, output in outputs.items()
        if output.get("transient")
    }


class TransientOutputs:
    """Releases, deletions and the plan's end for one node."""

    def __init__(
        self, context: NodeContext, ssl_context: Callable[[], ssl.SSLContext]
    ) -> None:
        self.ctx = context
        self._ssl_context = ssl_context

    # -- producer side

    def release(
        self, caller: Caller, task_key: str, consumer_key: str
    ) -> dict[str, Any]:
        """Record that ``consumer_key`` finished with ``task_key``'s outputs."""
        with self.ctx.db.session() as session:
            task = session.get(Task, task_key)
            if task is None:
                raise NotFound(f"no task {task_key} on this node")
            consumers = _transient_consumers(task.spec)
            named = sorted(n for n, keys in consumers.items() if consumer_key in keys)
            if not named:
                # Consumers release every parent; most outputs are not transient.
                return {"task_key": task_key, "consumer": consumer_key, "released": []}
            self._require_releaser(caller, task, named)
        self._record_release(caller, task_key, consumer_key)
        deleted = self.collect(task_key)
        logger.info(
            "outputs released task=%s consumer=%s by=%s deleted=%d",
            task_key,
            consumer_key,
            caller.id,
            len(deleted),
        )
        return {
            "task_key": task_key,
            "consumer": consumer_key,
            "released": named,
            "deleted": deleted,
        }

    def _record_release(self, caller: Caller, task_key: str, consumer_key: str) -> None:
        try:
            with self.ctx.db.session() as session:
                if session.get(OutputRelease, (task_key, consumer_key)) is None:
                    session.add(
                        OutputRelease(
                            task_key=task_key,
                            consumer_key=consumer_key,
                            organization=caller.organization,
                        )
                    )
        except Conflict:
            pass  # the same release arrived twice at once; one row is enough

    def _require_releaser(self, caller: Caller, task: Task, named: list[str]) -> None:
        if caller.organization == self.ctx.organization:
            return
        outputs = task.spec.get("outputs") or {}
        for name in named:
            process = permissions_of(outputs[name].get("permissions") or {}).process
            if caller.may(process):
                return
        raise PermissionDenied(
            f"{caller.id} may not release the outputs of task {task.key}"
        )

    def collect(self, task_key: str) -> list[str]:
        """Delete the transient models of ``task_key`` that all consumers released."""
        with self.ctx.db.session() as session:
            released = set(
                session.scalars(
                    select(OutputRelease.consumer_key).where(
                        OutputRelease.task_key == task_key
                    )
                )
            )
            models = session.scalars(
                select(Model).where(
                    Model.task_key == task_key,
                    Model.transient.is_(True),
                    Model.deleted_at.is_(None),
                )
            )
            done = [m for m in models if m.consumers and set(m.consumers) <= released]
            objects = self._mark_deleted(done)
        return self._delete_objects(objects)

    def end_plan(self, caller: Caller, plan_key: str) -> dict[str, Any]:
        """Delete every transient model of the plan still on this node."""
        with self.ctx.db.session() as session:
            tasks = list(session.scalars(select(Task).where(Task.plan_key == plan_key)))
            if not tasks:
                raise NotFound(f"no task of plan {plan_key} on this node")
            self._require_plan_party(caller, plan_key, tasks)
            models = session.scalars(
                select(Model).where(
                    Model.plan_key == plan_key,
                    Model.transient.is_(True),
                    Model.deleted_at.is_(None),
                )
            )
            objects = self._mark_deleted(list(models))
        deleted = self._delete_objects(objects)
        logger.info(
            "plan ended plan=%s by=%s transient_deleted=%d",
            plan_key,
            caller.id,
            len(deleted),
        )
        return {"plan_key": plan_key, "deleted": deleted}

    def _require_plan_party(
        self, caller: Caller, plan_key: str, tasks: Iterable[Task]
    ) -> None:
        allowed = {self.ctx.organization}
        for task in tasks:
            allowed.add(task.submitter.split("/")[0])
            if task.plan.get("creator"):
                allowed.add(str(task.plan["creator"]))
        if caller.organization not in allowed:
            raise PermissionDenied(f"{caller.id} may not end plan {plan_key}")

    @staticmethod
    def _mark_deleted(models: list[Model]) -> dict[str, str]:
        """Set ``deleted_at``; the files go once the transaction committed."""
        now = utcnow()
        for model in models:
            model.deleted_at = now
        return {model.key: model.object_id for model in models}

    def _delete_objects(self, objects: dict[str, str]) -> list[str]:
        for key, object_id in objects.items():
            self.ctx.objects.delete(object_id)
            logger.info("transient model deleted key=%s", key)
        return sorted(objects)

    # -- consumer side

    def release_parents(self, task_key: str) -> None:
        """After ``task_key`` ended: release its parents, in a thread.

        A thread, because a parent's node may be slow or down and the task's
        end must not wait for it.
        """
        with self.ctx.db.session() as session:
            task = session.get(Task, task_key)
            if task is None:
                return
            parents = self._parent_keys(task.spec)
            workers: dict[str, str] = dict(task.plan.get("parents") or {})
            local = [p for p in parents if session.get(Task, p) is not None]
        remote = [(p, workers[p]) for p in parents if p not in local and p in workers]
        if not local and not remote:
            return
        threading.Thread(
            target=self._release_all,
            args=(task_key, local, remote),
            name=f"release-{task_key[:8]}",
            daemon=True,
        ).start()

    @staticmethod
    def _parent_keys(spec: dict[str, Any]) -> list[str]:
        keys = [ref.get("parent_task_key") for ref in spec.get("inputs") or ()]
        return sorted({str(k) for k in keys if k})

    def _release_all(
        self, consumer: str, local: list[str], remote: list[tuple[str, str]]
    ) -> None:
        me = Caller(self.ctx.organization)
        for parent in local:
            try:
                self.release(me, parent, consumer)
            except Exception:
                logger.exception(
                    "release failed parent=%s consumer=%s", parent, consumer
                )
        for parent, worker in remote:
            self._release_remote(parent, worker, consumer)

    def _release_remote(self, parent: str, worker: str, consumer: str) -> None:
        from airfed.sdk.node_client import NodeClient

        try:
            url = self.ctx.config.network.organization(worker).node_url
            with NodeClient(url, self._ssl_context()) as client:
                client.release_task_outputs(parent, consumer)
        except AirfedError as exc:
            # The plan's end deletes what this release would have.
            logger.warning(
                "release failed parent=%s node=%s consumer=%s status=%s",
                parent,
                worker,
                consumer,
                getattr(exc, "status", 0),
            )
