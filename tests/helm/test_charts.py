"""The Helm charts: rendered offline, linted, validated against Kubernetes 1.30.

Each chart renders with its defaults and with production-like values; every
manifest must be valid for Kubernetes 1.30 (strict: no unknown fields), and
the security settings the charts promise must hold in what they render.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python
import kubernetes_validate
import pytest
import yaml

from airfed.sdk.network import Network, load_node_config

ROOT = Path(__file__).resolve().parents[2]
NODE_CHART = ROOT / "helm" / "airfed-node"
ORCHESTRATOR_CHART = ROOT / "helm" / "airfed-orchestrator"
AIRFLOW_VALUES = ORCHESTRATOR_CHART / "airflow-values.yaml"
KUBERNETES = "1.30"


def node_production_values(network: Network) -> dict[str, Any]:
    return {
        "organization": "a",
        "image": {"tag": "0.1.0", "pullPolicy": "Always"},
        "imagePullSecrets": [{"name": "registry"}],
        "network": {
            "existingConfigMap": "",
            "config": (network.root / "network.yaml").read_text(),
        },
        "tls": {"secretName": "hospital-a-tls"},
        "identity": {"secretName": "hospital-a-identity"},
        "masterKey": {"secretName": "hospital-a-store-key"},
        "database": {"urlSecret": {"name": "hospital-a-postgres", "key": "url"}},
        "node": {"taskLimits": {"wallSeconds": 7200}},
        "service": {"type": "LoadBalancer", "annotations": {"lb": "external"}},
        "persistence": {
            "storageClass": "fast-ssd",
            "size": "500Gi",
            "accessModes": ["ReadWriteMany"],
        },
        "networkPolicy": {
            "ingressFrom": [{"ipBlock": {"cidr": "203.0.113.0/24"}}],
            "restrictEgress": True,
            "egress": [
                {
                    "to": [{"ipBlock": {"cidr": "198.51.100.0/24"}}],
                    "ports": [{"port": 443, "protocol": "TCP"}],
                }
            ],
        },
        "taskPods": {"createToken": True},
        "nodeSelector": {"airfed.dev/pool": "nodes"},
        "tolerations": [
            {"key": "airfed", "operator": "Exists", "effect": "NoSchedule"}
        ],
    }


ORCHESTRATOR_PRODUCTION_VALUES: dict[str, Any] = {
    "image": {"tag": "0.1.0"},
    "plans": {"storageClass": "nfs", "size": "5Gi"},
    "ledger": {
        "databaseUrlSecret": {"name": "airfed-ledger-postgres"},
        "persistence": {"storageClass": "fast-ssd"},
        "service": {"type": "LoadBalancer"},
        "networkPolicy": {"ingressFrom": [{"ipBlock": {"cidr": "203.0.113.0/24"}}]},
    },
}


def render(
    chart: Path, values: dict[str, Any], name: str = "a"
) -> list[dict[str, Any]]:
    """Every manifest the chart renders (NOTES.txt left out)."""
    manifests = helm_python.Chart.load(chart).render(
        copy.deepcopy(values), name=name, namespace="airfed"
    )
    objects = []
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            continue
        objects.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return objects


def of_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def containers(objects: list[dict[str, Any]]) -> Iterator[tuple[dict, dict]]:
    for deployment in of_kind(objects, "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        for container in pod["containers"] + pod.get("initContainers", []):
            yield pod, container


@pytest.fixture
def cases(network: Network) -> dict[str, tuple[Path, dict[str, Any]]]:
    return {
        "node-default": (NODE_CHART, {}),
        "node-production": (NODE_CHART, node_production_values(network)),
        "orchestrator-default": (ORCHESTRATOR_CHART, {}),
        "orchestrator-production": (ORCHESTRATOR_CHART, ORCHESTRATOR_PRODUCTION_VALUES),
    }


CASES = [
    "node-default",
    "node-production",
    "orchestrator-default",
    "orchestrator-production",
]


@pytest.mark.parametrize("case", CASES)
def test_chart_lints_clean(case: str, cases: dict[str, tuple[Path, dict]]) -> None:
    chart, values = cases[case]
    report = helm_python.lint(
        chart, copy.deepcopy(values), strict=True, kube_version="v1.30.0"
    )
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize("case", CASES)
def test_every_manifest_is_valid_kubernetes(
    case: str, cases: dict[str, tuple[Path, dict]]
) -> None:
    chart, values = cases[case]
    objects = render(chart, values)
    assert objects
    for obj in objects:
        kubernetes_validate.validate(obj, KUBERNETES, strict=True)


@pytest.mark.parametrize("case", CASES)
def test_containers_run_non_root_on_a_read_only_filesystem(
    case: str, cases: dict[str, tuple[Path, dict]]
) -> None:
    chart, values = cases[case]
    found = list(containers(render(chart, values)))
    assert found
    for pod, container in found:
        security = container["securityContext"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        assert security["runAsNonRoot"] is True
        assert security["readOnlyRootFilesystem"] is True
        assert security["allowPrivilegeEscalation"] is False
        assert security["capabilities"]["drop"] == ["ALL"]
        assert pod["automountServiceAccountToken"] is False
        assert "limits" in container["resources"]


@pytest.mark.parametrize("case", CASES)
def test_no_secret_value_is_embedded(
    case: str, cases: dict[str, tuple[Path, dict]]
) -> None:
    chart, values = cases[case]
    objects = render(chart, values)
    for secret in of_kind(objects, "Secret"):
        assert secret["type"] == "kubernetes.io/service-account-token"
        assert "data" not in secret and "stringData" not in secret
    text = yaml.safe_dump_all(objects)
    assert "PRIVATE KEY" not in text and "BEGIN CERTIFICATE" not in text
    for _, container in containers(objects):
        for variable in container.get("env", []):
            if variable["name"].endswith("DATABASE_URL") and "value" in variable:
                assert variable["value"].startswith("sqlite:")
    for pod, _ in containers(objects):
        for volume in pod["volumes"]:
            sources = volume.get("projected", {}).get("sources", [volume])
            for source in sources:
                if "secret" in source:
                    name = (
                        source["secret"].get("secretName") or source["secret"]["name"]
                    )
                    assert name
                    assert source["secret"].get("defaultMode", 0o440) & 0o007 == 0


def test_node_reads_the_secrets_it_is_given(network: Network) -> None:
    objects = render(NODE_CHART, node_production_values(network))
    (deployment,) = of_kind(objects, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    secrets = {
        v["name"]: v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v
    }
    assert secrets == {
        "tls": "hospital-a-tls",
        "identity": "hospital-a-identity",
        "master-key": "hospital-a-store-key",
    }
    (container,) = pod["containers"]
    (database,) = container["env"]
    assert database["name"] == "AIRFED_NODE_DATABASE_URL"
    assert database["valueFrom"]["secretKeyRef"] == {
        "name": "hospital-a-postgres",
        "key": "url",
    }
    assert container["command"][:3] == ["airfed", "node", "start"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"https": 8443, "ledger-replica": 8444}


def test_node_defaults_reference_secrets_named_after_the_release() -> None:
    (deployment,) = of_kind(render(NODE_CHART, {}, name="b"), "Deployment")
    volumes = deployment["spec"]["template"]["spec"]["volumes"]
    names = sorted(v["secret"]["secretName"] for v in volumes if "secret" in v)
    assert names == ["b-identity", "b-master-key", "b-tls"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert "env" not in container  # SQLite on the volume, no database URL


def test_node_yaml_is_read_by_airfed(network: Network, tmp_path: Path) -> None:
    values = node_production_values(network)
    values["node"]["extraConfig"] = {"network": str(network.root / "network.yaml")}
    (config_map,) = [
        o
        for o in of_kind(render(NODE_CHART, values), "ConfigMap")
        if "node.yaml" in o["data"]
    ]
    (tmp_path / "node.yaml").write_text(config_map["data"]["node.yaml"])
    config = load_node_config(tmp_path / "node.yaml")
    assert config.organization == "a"
    assert (config.host, config.port) == ("0.0.0.0", 8443)
    assert config.cert_file == Path("/etc/airfed/tls/tls.crt")
    assert config.identity_key_file == Path("/etc/airfed/identity/identity.key")
    assert config.master_key_file == Path("/etc/airfed/master-key/master.key")
    assert config.storage_dir == Path("/var/lib/airfed/storage")
    assert config.task_wall_seconds == 7200
    assert config.url == network.organization("a").node_url


def test_network_yaml_is_rendered_when_given(network: Network) -> None:
    objects = render(NODE_CHART, node_production_values(network))
    (network_map,) = [
        o for o in of_kind(objects, "ConfigMap") if "network.yaml" in o["data"]
    ]
    assert yaml.safe_load(network_map["data"]["network.yaml"])["organizations"]
    (deployment,) = of_kind(objects, "Deployment")
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["network"]["configMap"]["name"] == network_map["metadata"]["name"]


def test_task_launcher_may_do_what_kubernetes_pod_operator_needs() -> None:
    objects = render(NODE_CHART, {})
    (role,) = of_kind(objects, "Role")
    grants = {
        resource: set(rule["verbs"])
        for rule in role["rules"]
        for resource in rule["resources"]
    }
    assert {"create", "get", "list", "watch", "delete"} <= grants["pods"]
    assert "create" in grants["pods/exec"]
    assert "get" in grants["pods/log"]
    assert all(rule["apiGroups"] == [""] for rule in role["rules"])
    (binding,) = of_kind(objects, "RoleBinding")
    (account,) = [
        o
        for o in of_kind(objects, "ServiceAccount")
        if o["metadata"]["name"] == binding["subjects"][0]["name"]
    ]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"][0]["namespace"] == "airfed"
    assert account["automountServiceAccountToken"] is False


def test_task_launcher_can_be_left_out() -> None:
    objects = render(NODE_CHART, {"taskPods": {"enabled": False}})
    assert of_kind(objects, "Role") == [] and of_kind(objects, "RoleBinding") == []


def test_network_policy_opens_only_the_node_ports(network: Network) -> None:
    objects = render(NODE_CHART, node_production_values(network))
    (policy,) = of_kind(objects, "NetworkPolicy")
    (rule,) = policy["spec"]["ingress"]
    assert {p["port"] for p in rule["ports"]} == {"https", "ledger-replica"}
    assert rule["from"] == [{"ipBlock": {"cidr": "203.0.113.0/24"}}]
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert {p["port"] for p in policy["spec"]["egress"][0]["ports"]} == {53}


def test_airflow_values_mount_what_airfed_reads() -> None:
    values = yaml.safe_load(AIRFLOW_VALUES.read_text())
    orchestrator_defaults = yaml.safe_load(
        (ORCHESTRATOR_CHART / "values.yaml").read_text()
    )
    node_defaults = yaml.safe_load((NODE_CHART / "values.yaml").read_text())
    assert values["defaultAirflowRepository"] == node_defaults["image"]["repository"]

    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "airflow-api-server"},
        "spec": {
            "volumes": values["volumes"],
            "containers": [
                {
                    "name": "api-server",
                    "image": "ghcr.io/airfed/airfed:0.1.0",
                    "volumeMounts": values["volumeMounts"],
                }
            ],
        },
    }
    kubernetes_validate.validate(pod, KUBERNETES, strict=True)

    mounts = {m["name"]: m["mountPath"] for m in values["volumeMounts"]}
    volumes = {v["name"]: v for v in values["volumes"]}
    airfed = values["config"]["airfed"]
    assert mounts["airfed-plans"] == airfed["plans_folder"]
    assert mounts["airfed-network"] == airfed["network"]
    claim = volumes["airfed-plans"]["persistentVolumeClaim"]["claimName"]
    assert claim == orchestrator_defaults["plans"]["claimName"]
    sources = volumes["airfed-network"]["projected"]["sources"]
    paths = {
        item["path"] for s in sources for kind in s.values() for item in kind["items"]
    }
    assert paths == {
        "network.yaml",
        "orchestrator/tls/ca.crt",
        "orchestrator/tls/tls.crt",
        "orchestrator/tls/tls.key",
        "orchestrator/identity.key",
    }


def test_the_scheduler_pod_runs_the_ledger_relay_beside_the_task_processes() -> None:
    import typer.main

    from airfed.sdk.cli import _load_commands, app

    values = yaml.safe_load(AIRFLOW_VALUES.read_text())
    scheduler = values["scheduler"]
    (relay,) = copy.deepcopy(scheduler["extraContainers"])
    # The official chart renders extraContainers with `tpl`.
    template = "{{ .Values.defaultAirflowRepository }}:{{ .Values.defaultAirflowTag }}"
    assert relay["image"] == template
    image = f"{values['defaultAirflowRepository']}:{values['defaultAirflowTag']}"
    relay["image"] = image
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "airflow-scheduler"},
        "spec": {
            "volumes": values["volumes"] + scheduler["extraVolumes"],
            "containers": [
                {
                    "name": "scheduler",
                    "image": image,
                    "volumeMounts": values["volumeMounts"]
                    + scheduler["extraVolumeMounts"],
                },
                relay,
            ],
        },
    }
    kubernetes_validate.validate(pod, KUBERNETES, strict=True)

    airfed = values["config"]["airfed"]
    assert airfed["ledger"] == "on"
    arguments = relay["command"][1:] + relay["args"]
    options = dict(zip(arguments[2::2], arguments[3::2], strict=True))
    assert options == {
        "--network": airfed["network"],
        "--socket": airfed["ledger_relay"],
    }
    # The sidecar and the task processes see the socket's folder, shared.
    folder = str(Path(airfed["ledger_relay"]).parent)
    for container in pod["spec"]["containers"]:
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        assert mounts[folder] == "airfed-run"
        assert mounts[airfed["network"]] == "airfed-network"
    security = relay["securityContext"]
    assert security["readOnlyRootFilesystem"] is True and security["runAsUser"] != 0
    assert "limits" in relay["resources"]
    # The command line is one airfed accepts.
    _load_commands(relay["command"][1:])
    group: Any = typer.main.get_command(app)
    command = group.commands[arguments[0]].commands[arguments[1]]
    context = command.make_context("relay", list(arguments[2:]))
    assert context.params["network"] == Path(airfed["network"])
    assert context.params["socket_path"] == Path(airfed["ledger_relay"])


def test_dockerfile_runs_airfed_as_a_non_root_user() -> None:
    lines = (ROOT / "Dockerfile").read_text().splitlines()
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users[-1] == "airflow"
    airflow_values = yaml.safe_load(AIRFLOW_VALUES.read_text())
    dags_folder = airflow_values["config"]["core"]["dags_folder"]
    assert f"AIRFLOW__CORE__DAGS_FOLDER={dags_folder}" in "".join(lines)


def test_node_storage_is_where_task_pods_look_for_their_workdir() -> None:
    """The node prepares a pod's task in its storage; the pod mounts that folder."""
    import inspect

    from tests.support.airflow import use_test_airflow_home

    use_test_airflow_home()
    from airfed.operators._pod import RUN_AS, STORAGE_SUB_PATH, NodeTaskPodOperator

    objects = render(NODE_CHART, {}, name="airfed-node")
    (deployment,) = of_kind(objects, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    store = next(m for m in container["volumeMounts"] if m["name"] == "store")
    (config_map,) = [
        o for o in of_kind(objects, "ConfigMap") if "node.yaml" in o["data"]
    ]
    node_yaml = yaml.safe_load(config_map["data"]["node.yaml"])
    claim = next(v for v in pod["volumes"] if v["name"] == "store")

    assert node_yaml["storage_dir"] == f"{store['mountPath']}/{STORAGE_SUB_PATH}"
    assert "subPath" not in store
    defaults = inspect.signature(NodeTaskPodOperator.__init__).parameters
    assert (
        claim["persistentVolumeClaim"]["claimName"] == defaults["storage_claim"].default
    )
    assert pod["securityContext"]["runAsUser"] == RUN_AS
    assert pod["securityContext"]["fsGroup"] == RUN_AS
