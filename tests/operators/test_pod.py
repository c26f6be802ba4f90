"""NodeTaskPodOperator: the pod it builds, and a task run through it end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from airfed.operators._trigger import task_result
from airfed.sdk.network import Network
from airfed.sdk.orchestrator import task_id_for
from tests.e2e.federation import Federation, register_federation
from tests.support.airflow import fedavg_spec
from tests.support.nodes import RunningNode, start_nodes

AIRFED = Path(sys.executable).with_name("airfed")


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


def test_pod_mounts_the_task_workdir_and_no_node_secret(
    partner_cluster: str,
) -> None:
    pod = _pod(storage_claim="node-b-data")
    (container,) = pod["spec"]["containers"]
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}

    workdir = mounts["/airfed/task"]
    task_key = pod["metadata"]["annotations"]["airfed.dev/task"]
    assert workdir["subPath"] == f"storage/tasks/{task_key}"
    claim = volumes[workdir["name"]]["persistentVolumeClaim"]
    assert claim["claimName"] == "node-b-data"
    assert set(mounts) == {"/airfed/task", "/tmp"}
    assert not [v for v in pod["spec"]["volumes"] if "secret" in v or "projected" in v]
    assert pod["spec"]["automountServiceAccountToken"] is False


# -- execute: the node prepares, the pod runs, the node collects


def _pod_substitute(node: RunningNode) -> type:
    """NodeTaskPodOperator whose pod step runs the pod's command here.

    No Kubernetes cluster runs in this suite: this is the one place where the
    pod is replaced. The substitute runs the pod's own command, ``airfed task
    run --workdir``, on the folder of the node's storage that the pod mounts
    at /airfed/task; everything before and after it is the real operator
    talking to a real node.
    """
    from airfed.operators import NodeTaskPodOperator

    class PodHere(NodeTaskPodOperator):
        pod_runs = 0

        def run_pod(self, context: Any) -> None:
            from airflow.sdk.exceptions import AirflowException

            type(self).pod_runs += 1
            workdir = node.config.storage_dir / "tasks" / self.task_key
            done = subprocess.run(
                [str(AIRFED), "task", "run", "--workdir", str(workdir)],
                capture_output=True,
                timeout=120,
                check=False,
            )
            if done.returncode != 0:  # as KubernetesPodOperator reports it
                raise AirflowException(f"Pod returned a failure: {done.returncode}")

    return PodHere


@pytest.fixture
def federation(
    network: Network, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Federation, dict[str, RunningNode]]]:
    monkeypatch.setenv("AIRFLOW__AIRFED__NETWORK", str(network.root))
    with start_nodes(network, ["a"]) as nodes:
        yield register_federation(nodes, network.root, tmp_path / "assets"), nodes


def test_execute_prepares_runs_the_pod_collects_and_pushes_references(
    federation: tuple[Federation, dict[str, RunningNode]],
) -> None:
    fed, nodes = federation
    spec = fed.plan(rounds=1)
    train = spec.tasks[0]
    plan = {"key": spec.key, "name": spec.name, "creator": spec.creator}
    operator = _pod_substitute(nodes["a"])(
        task_spec=train, plan=plan, image="i:1", namespace="n", poll_interval=0.1
    )

    result = operator.execute(context={})
    again = operator.execute(context={})

    with nodes["a"].client(nodes["a"].config.home) as node:
        on_node = node.get_task(train.key)
    assert on_node["status"] == "done", on_node
    assert result["status"] == "done"
    assert result["outputs"]["model"] == {
        "kind": "model",
        "model_key": on_node["outputs"]["model"]["model_key"],
        "checksum": on_node["outputs"]["model"]["checksum"],
    }
    assert result["receipt"]["signature"] == on_node["receipt"]["signature"]
    assert result == task_result({**on_node, "task_key": train.key, "worker": "a"})
    assert again == result
    assert operator.pod_runs == 1
    assert not (nodes["a"].config.storage_dir / "tasks" / train.key).exists()


def test_a_function_failing_in_the_pod_fails_the_task_with_the_nodes_error(
    federation: tuple[Federation, dict[str, RunningNode]],
) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    fed, nodes = federation
    train = fed.plan(rounds=1, broken="a").tasks[0]
    operator = _pod_substitute(nodes["a"])(
        task_spec=train, image="i:1", namespace="n", poll_interval=0.1
    )

    with pytest.raises(AirflowFailException) as failed:
        operator.execute(context={})

    assert str(failed.value) == (
        f"task {train.key} failed on node a: ValueError: the data has no label column"
    )
    with nodes["a"].client(nodes["a"].config.home) as node:
        assert node.get_task(train.key)["receipt"]["status"] == "failed"


def test_a_task_the_node_refuses_fails_before_any_pod_runs(
    federation: tuple[Federation, dict[str, RunningNode]],
) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    fed, nodes = federation
    task = fed.plan(rounds=1).tasks[0].model_dump(mode="json")
    task["function_key"] = "00000000-0000-4000-8000-000000000000"
    operator = _pod_substitute(nodes["a"])(
        task_spec=task, image="i:1", namespace="n", poll_interval=0.1
    )

    with pytest.raises(AirflowFailException) as failed:
        operator.execute(context={})

    assert "is not registered on the node of a" in str(failed.value)
    assert operator.pod_runs == 0


def test_killing_the_task_cancels_it_on_the_node(
    federation: tuple[Federation, dict[str, RunningNode]],
) -> None:
    fed, nodes = federation
    train = fed.plan(rounds=1).tasks[0]
    operator = _pod_substitute(nodes["a"])(
        task_spec=train, image="i:1", namespace="n", poll_interval=0.1
    )
    with operator._node() as node:
        assert operator._prepare(node)["status"] == "prepared"

        operator.on_kill()

        assert node.get_task(train.key)["status"] == "canceled"
    assert not (nodes["a"].config.storage_dir / "tasks" / train.key).exists()
