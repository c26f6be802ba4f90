"""Running a plan's task as a pod on the partner's Kubernetes cluster.

:class:`NodeTaskPodOperator` is a KubernetesPodOperator that runs the same
task runtime as the node's subprocess (``airfed task run --workdir
/airfed/task``, contract B) in the node's image, on the cluster of the task's
worker: one Airflow connection per partner cluster, ``airfed_k8s_<org>`` by
default (templated). The pod runs as a non-root user (the node's, so that
both can use the workdir) with a read-only root filesystem, no privilege
escalation, every capability dropped, the runtime default seccomp profile,
and resource requests and limits.

The worker's node does everything around the pod, over its API (mutual TLS):

1. ``POST /tasks`` with ``runner: pod``: the node checks the task (ledger,
   permissions), fetches its inputs and prepares the workdir on its storage
   at ``storage/tasks/<key>`` of its volume claim; the operator waits until
   the task is ``prepared``;
2. the pod runs with that folder mounted at ``/airfed/task`` and nothing
   else of the node: the runtime needs no key, so the function can read
   neither the node's master key nor its identity key;
3. ``POST /tasks/{key}/collect``: the node stores the outputs encrypted,
   signs the receipt and deletes the workdir. A done task pushes to XCom the
   references and hashes a node task pushes; any other end fails the task
   with the node's error, whether or not the pod itself failed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.sdk.exceptions import AirflowException, AirflowFailException
from kubernetes.client import models as k8s

from airfed.operators._settings import node_poll_interval
from airfed.operators._trigger import cancel_on_node, node_client, task_result
from airfed.sdk.errors import NodeRequestError
from airfed.sdk.node_client import NodeClient
from airfed.sdk.orchestrator import task_id_for
from airfed.sdk.spec import TaskSpec

__all__ = ["NodeTaskPodOperator", "PodResources"]

logger = logging.getLogger(__name__)

TASK_MOUNT = "/airfed/task"
# The node's storage folder on its volume claim (helm/airfed-node mounts the
# claim at /var/lib/airfed and stores under /var/lib/airfed/storage).
STORAGE_SUB_PATH = "storage"
# The node's user (the image's airflow user, as helm/airfed-node runs it): the
# pod writes into a workdir the node made and reads back.
RUN_AS = 50000
_PREPARING = frozenset({"waiting", "executing"})
_UNREACHABLE_AFTER = 60.0
_T = TypeVar("_T")


@dataclass(frozen=True)
class PodResources:
    """Requests and limits of the task's container."""

    cpu_request: str = "500m"
    memory_request: str = "1Gi"
    cpu_limit: str = "2"
    memory_limit: str = "4Gi"
    scratch_limit: str = "2Gi"

    def requirements(self) -> k8s.V1ResourceRequirements:
        return k8s.V1ResourceRequirements(
            requests={"cpu": self.cpu_request, "memory": self.memory_request},
            limits={"cpu": self.cpu_limit, "memory": self.memory_limit},
        )


def _volumes(storage_claim: str, resources: PodResources) -> list[k8s.V1Volume]:
    return [
        k8s.V1Volume(
            name="node-storage",
            persistent_volume_claim=k8s.V1PersistentVolumeClaimVolumeSource(
                claim_name=storage_claim
            ),
        ),
        k8s.V1Volume(
            name="scratch",
            empty_dir=k8s.V1EmptyDirVolumeSource(size_limit=resources.scratch_limit),
        ),
    ]


def _mounts(task_key: str, storage_sub_path: str) -> list[k8s.V1VolumeMount]:
    workdir = f"{storage_sub_path.strip('/')}/tasks/{task_key}".lstrip("/")
    return [
        k8s.V1VolumeMount(name="node-storage", mount_path=TASK_MOUNT, sub_path=workdir),
        # The pod's own tmpfs, not the host's /tmp.
        k8s.V1VolumeMount(name="scratch", mount_path="/tmp"),  # noqa: S108
    ]


def _pod_security() -> k8s.V1PodSecurityContext:
    return k8s.V1PodSecurityContext(
        run_as_non_root=True,
        run_as_user=RUN_AS,
        run_as_group=RUN_AS,
        fs_group=RUN_AS,
        fs_group_change_policy="OnRootMismatch",
        seccomp_profile=k8s.V1SeccompProfile(type="RuntimeDefault"),
    )


def _container_security() -> k8s.V1SecurityContext:
    return k8s.V1SecurityContext(
        run_as_non_root=True,
        read_only_root_filesystem=True,
        allow_privilege_escalation=False,
        capabilities=k8s.V1Capabilities(drop=["ALL"]),
    )


class NodeTaskPodOperator(KubernetesPodOperator):
    """Run ``task_spec`` as a pod on the cluster of its worker organization."""

    def __init__(
        self,
        *,
        task_spec: TaskSpec | Mapping[str, Any],
        image: str,
        namespace: str,
        kubernetes_conn_id: str | None = None,
        plan: Mapping[str, Any] | None = None,
        storage_claim: str = "airfed-node-store",
        storage_sub_path: str = STORAGE_SUB_PATH,
        resources: PodResources | None = None,
        poll_interval: float | None = None,
        **kwargs: Any,
    ) -> None:
        spec = (
            task_spec
            if isinstance(task_spec, TaskSpec)
            else TaskSpec.model_validate(task_spec)
        )
        resources = resources or PodResources()
        kwargs.setdefault("task_id", task_id_for(spec))
        super().__init__(
            kubernetes_conn_id=kubernetes_conn_id or f"airfed_k8s_{spec.worker}",
            namespace=namespace,
            image=image,
            name=f"airfed-task-{spec.key[:8].lower()}",
            cmds=["airfed"],
            arguments=["task", "run", "--workdir", TASK_MOUNT],
            # HOME on the pod's own scratch volume: the root filesystem is read-only.
            env_vars={"AIRFED_TASK_KEY": spec.key, "HOME": "/tmp"},  # noqa: S108
            labels={
                "app.kubernetes.io/name": "airfed-task",
                "app.kubernetes.io/part-of": "airfed",
                "airfed.dev/organization": spec.worker,
            },
            annotations={"airfed.dev/task": spec.key, "airfed.dev/plan": spec.plan_key},
            volumes=_volumes(storage_claim, resources),
            volume_mounts=_mounts(spec.key, storage_sub_path),
            security_context=_pod_security(),
            container_security_context=_container_security(),
            container_resources=resources.requirements(),
            automount_service_account_token=False,
            do_xcom_push=False,
            on_finish_action="delete_pod",
            **kwargs,
        )
        self.task_spec = spec.model_dump(mode="json")
        self.plan = dict(plan) if plan is not None else None
        self.task_key = spec.key
        self.worker = spec.worker
        self.poll_interval = (
            poll_interval if poll_interval is not None else node_poll_interval()
        )

    def execute(self, context: Any) -> dict[str, Any]:
        """Prepare on the node, run the pod, collect on the node; XCom the result."""
        with self._node() as node:
            task = self._prepare(node)
            if task["status"] == "prepared":
                self._run_pod_reporting(context)
                try:
                    task = self._patiently(lambda: node.collect_task(self.task_key))
                except NodeRequestError as exc:
                    raise AirflowFailException(
                        f"node {self.worker} could not collect task "
                        f"{self.task_key}: {exc.detail}"
                    ) from exc
        return self._result(task)

    def run_pod(self, context: Any) -> None:
        """Run the task's pod on the worker's cluster until it ends."""
        super().execute(context)

    def on_kill(self) -> None:
        super().on_kill()
        cancel_on_node(self.worker, self.task_key)

    def _node(self) -> NodeClient:
        return node_client(self.worker)

    def _prepare(self, node: NodeClient) -> dict[str, Any]:
        """Have the node prepare the task; wait until it is prepared or ended."""
        try:
            task = self._patiently(
                lambda: node.submit_task(self.task_spec, self.plan, runner="pod")
            )
            logger.info(
                "task posted task=%s node=%s runner=pod", self.task_key, self.worker
            )
            while task["status"] in _PREPARING:
                time.sleep(self.poll_interval)
                task = self._patiently(lambda: node.get_task(self.task_key))
        except NodeRequestError as exc:
            raise AirflowFailException(
                f"node {self.worker} refused task {self.task_key}: {exc.detail}"
            ) from exc
        return task

    def _run_pod_reporting(self, context: Any) -> None:
        """Run the pod; its failure is reported by the node once collected."""
        try:
            self.run_pod(context)
        except AirflowException as exc:
            # The runtime exits 1 when the function fails, after writing the
            # result.json the node reads; the node's error says more.
            logger.warning(
                "task pod failed task=%s node=%s error=%s",
                self.task_key,
                self.worker,
                str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
            )

    def _patiently(self, call: Callable[[], _T]) -> _T:
        """``call()``, retried while the node cannot be reached (for a minute)."""
        since = time.monotonic()
        while True:
            try:
                return call()
            except NodeRequestError as exc:
                if exc.status != 0:
                    raise
                if time.monotonic() - since > _UNREACHABLE_AFTER:
                    raise AirflowException(
                        f"node {self.worker} unreachable for task {self.task_key}: "
                        f"{exc.detail}"
                    ) from exc
                logger.warning(
                    "node unreachable task=%s node=%s", self.task_key, self.worker
                )
                time.sleep(min(5.0, self.poll_interval * 4))

    def _result(self, task: Mapping[str, Any]) -> dict[str, Any]:
        status = str(task.get("status"))
        if status != "done":
            lines = str(task.get("error") or "no error reported").splitlines()
            raise AirflowFailException(
                f"task {self.task_key} {status} on node {self.worker}: "
                f"{lines[0] if lines else ''}"
            )
        result: dict[str, Any] = task_result(
            {**task, "task_key": self.task_key, "worker": self.worker}
        )
        logger.info(
            "task done task=%s node=%s outputs=%d",
            self.task_key,
            self.worker,
            len(result["outputs"]),
        )
        return result
