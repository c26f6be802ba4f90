"""The pod that NodeTaskPodOperator builds is valid and locked down."""

from __future__ import annotations

import json

import kubernetes_validate
import pytest

from airfed.sdk.orchestrator import task_id_for
from tests.support.airflow import fedavg_spec


@pytest.fixture
def partner_cluster(monkeypatch: pytest.MonkeyPatch) -> str:
    """The connection to organization b's cluster, as AIRFLOW_CONN_<ID>."""
    connection = {
        "conn_type": "kubernetes",
        "extra": {"namespace": "airfed-b", "in_cluster": False},
    }
    monkeypatch.setenv("AIRFLOW_CONN_AIRFED_K8S_B", json.dumps(connection))
    return "airfed_k8s_b"


def _pod(**kwargs: object) -> dict[str, object]:
    from kubernetes.client import ApiClient

    from airfed.operators import NodeTaskPodOperator

    task = next(t for t in fedavg_spec(rounds=1).tasks if t.worker == "b")
    operator = NodeTaskPodOperator(
        task_spec=task,
        image="ghcr.io/airfed/node:0.1.0",
        namespace="airfed-b",
        **kwargs,
    )
    assert operator.task_id == task_id_for(task)
    pod = operator.build_pod_request_obj(context=None, dry_run=True)
    return dict(ApiClient().sanitize_for_serialization(pod))


def test_pod_is_valid_for_kubernetes_1_30(partner_cluster: str) -> None:
    pod = _pod()

    kubernetes_validate.validate(pod, "1.30", strict=True)


def test_pod_uses_the_partner_cluster_connection(partner_cluster: str) -> None:
    from airfed.operators import NodeTaskPodOperator

    task = next(t for t in fedavg_spec(rounds=1).tasks if t.worker == "b")
    operator = NodeTaskPodOperator(task_spec=task, image="i:1", namespace="airfed-b")

    assert operator.kubernetes_conn_id == partner_cluster
    assert "kubernetes_conn_id" in operator.template_fields


def test_pod_runs_the_task_runtime_non_root_on_a_read_only_root(
    partner_cluster: str,
) -> None:
    pod = _pod()
    spec = pod["spec"]
    (container,) = spec["containers"]

    assert container["command"] == ["airfed"]
    assert container["args"] == ["task", "run", "--workdir", "/airfed/task"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] != 0
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert spec["automountServiceAccountToken"] is False
    assert set(container["resources"]["requests"]) == {"cpu", "memory"}
    assert set(container["resources"]["limits"]) == {"cpu", "memory"}


def test_pod_mounts_the_task_workdir_and_the_node_secrets(
    partner_cluster: str,
) -> None:
    pod = _pod(storage_claim="node-b-data", secret_name="node-b-keys")
    (container,) = pod["spec"]["containers"]
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}

    workdir = mounts["/airfed/task"]
    assert workdir["subPath"].startswith("tasks/")
    claim = volumes[workdir["name"]]["persistentVolumeClaim"]
    assert claim["claimName"] == "node-b-data"
    secrets = mounts["/airfed/secrets"]
    assert secrets["readOnly"] is True
    assert volumes[secrets["name"]]["secret"]["secretName"] == "node-b-keys"
