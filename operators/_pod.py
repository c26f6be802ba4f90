"""Running a plan's task as a pod on the partner's Kubernetes cluster.

:class:`NodeTaskPodOperator` is a KubernetesPodOperator that runs the same
task runtime as the node's subprocess (``airfed task run --workdir
/airfed/task``, contract B) in the node's image, on the cluster of the task's
worker: one Airflow connection per partner cluster, ``airfed_k8s_<org>`` by
default (templated). The task's workdir, prepared by the node on its storage,
is mounted at ``/airfed/task``; the node's secrets (read-only) at
``/airfed/secrets``. The pod runs as a non-root user with a read-only root
filesystem, no privilege escalation, every capability dropped, the runtime
default seccomp profile, and resource requests and limits.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from kubernetes.client import models as k8s

from airfed.sdk.orchestrator import task_id_for
from airfed.sdk.spec import TaskSpec

__all__ = ["NodeTaskPodOperator", "PodResources"]

TASK_MOUNT = "/airfed/task"
SECRETS_MOUNT = "/airfed/secrets"
_RUN_AS = 10001


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


def _volumes(
    storage_claim: str, secret_name: str, resources: PodResources
) -> list[k8s.V1Volume]:
    return [
        k8s.V1Volume(
            name="node-storage",
            persistent_volume_claim=k8s.V1PersistentVolumeClaimVolumeSource(
                claim_name=storage_claim
            ),
        ),
        k8s.V1Volume(
            name="node-secrets",
            secret=k8s.V1SecretVolumeSource(
                secret_name=secret_name, default_mode=0o400
            ),
        ),
        k8s.V1Volume(
            name="scratch",
            empty_dir=k8s.V1EmptyDirVolumeSource(size_limit=resources.scratch_limit),
        ),
    ]


def _mounts(task_key: str) -> list[k8s.V1VolumeMount]:
    return [
        k8s.V1VolumeMount(
            name="node-storage", mount_path=TASK_MOUNT, sub_path=f"tasks/{task_key}"
        ),
        k8s.V1VolumeMount(
            name="node-secrets", mount_path=SECRETS_MOUNT, read_only=True
        ),
        k8s.V1VolumeMount(name="scratch", mount_path="/tmp"),  # noqa: S108 (pod's own tmpfs)
    ]


def _pod_security() -> k8s.V1PodSecurityContext:
    return k8s.V1PodSecurityContext(
        run_as_non_root=True,
        run_as_user=_RUN_AS,
        run_as_group=_RUN_AS,
        fs_group=_RUN_AS,
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
        storage_claim: str = "airfed-node-storage",
        secret_name: str = "airfed-node-secrets",  # noqa: S107 (a Secret object name)
        resources: PodResources | None = None,
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
            env_vars={"AIRFED_TASK_KEY": spec.key, "HOME": "/tmp"},  # noqa: S108
            labels={
                "app.kubernetes.io/name": "airfed-task",
                "app.kubernetes.io/part-of": "airfed",
                "airfed.dev/organization": spec.worker,
            },
            annotations={"airfed.dev/task": spec.key, "airfed.dev/plan": spec.plan_key},
            volumes=_volumes(storage_claim, secret_name, resources),
            volume_mounts=_mounts(spec.key),
            security_context=_pod_security(),
            container_security_context=_container_security(),
            container_resources=resources.requirements(),
            automount_service_account_token=False,
            do_xcom_push=False,
            on_finish_action="delete_pod",
            **kwargs,
        )
        self.task_spec = spec.model_dump(mode="json")
        self.worker = spec.worker
