"""The orchestrator API (contract F) in a real api-server, with Airflow's login."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from airfed.sdk._airflow import RunningOrchestrator
from airfed.sdk.errors import OrchestratorError
from airfed.sdk.orchestrator import OrchestratorClient, dag_id_for, dag_run_id_for
from tests.support.airflow import fedavg_spec, running_orchestrator

pytestmark = [pytest.mark.airflow]


@pytest.fixture(scope="module")
def orchestrator(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RunningOrchestrator]:
    """Airflow on SQLite; the network's nodes are not running."""
    from airfed.sdk.network import init_network
    from tests.support.ports import free_port_block

    root = tmp_path_factory.mktemp("api")
    network = init_network(root / "net", ["a", "b", "c"], base_port=free_port_block(7))
    with running_orchestrator(root / "airflow", network.root) as running:
        yield running


@pytest.fixture
def client(orchestrator: RunningOrchestrator) -> Iterator[OrchestratorClient]:
    with orchestrator.client() as client:
        yield client


def test_api_refuses_callers_without_a_login(orchestrator: RunningOrchestrator) -> None:
    response = httpx.get(f"{orchestrator.url}/airfed/api/plans", timeout=30)

    assert response.status_code in (401, 403)


def test_wrong_password_is_refused(orchestrator: RunningOrchestrator) -> None:
    with (
        OrchestratorClient(orchestrator.url, "admin", "wrong") as client,
        pytest.raises(OrchestratorError, match="refused the login"),
    ):
        client.list_plans()


def test_submitted_plan_is_stored_parsed_and_triggered(
    orchestrator: RunningOrchestrator, client: OrchestratorClient
) -> None:
    spec = fedavg_spec(rounds=1)

    answer = client.submit_plan(spec)

    assert answer == {
        "plan_key": spec.key,
        "dag_id": dag_id_for(spec.key),
        "dag_run_id": dag_run_id_for(spec.key),
    }
    stored = orchestrator.plans_folder / f"{spec.key}.json"
    assert json.loads(stored.read_text())["key"] == spec.key
    plan = client.get_plan(spec.key)
    assert plan["status"] in ("queued", "running", "failed")
    assert {t["task_key"] for t in plan["tasks"]} == {t.key for t in spec.tasks}
    assert spec.key in {p["plan_key"] for p in client.list_plans()}
    client.cancel_plan(spec.key)


def test_submitting_the_same_plan_twice_is_one_run(
    client: OrchestratorClient,
) -> None:
    spec = fedavg_spec(rounds=1)

    first = client.submit_plan(spec)
    again = client.submit_plan(spec)

    assert first == again
    client.cancel_plan(spec.key)


def test_a_thousand_task_plan_is_submitted_in_one_piece(
    orchestrator: RunningOrchestrator, client: OrchestratorClient
) -> None:
    from airfed.sdk.spec import parse_plan_spec, spec_hash

    spec = fedavg_spec(rounds=250, name="long fedavg")
    assert len(spec.tasks) == 1000

    answer = client.submit_plan(spec)

    assert answer["dag_run_id"] == dag_run_id_for(spec.key)
    stored = orchestrator.plans_folder / f"{spec.key}.json"
    assert spec_hash(parse_plan_spec(stored.read_bytes())) == spec_hash(spec)
    dag_tasks = _airflow_get(orchestrator, f"/dags/{answer['dag_id']}/tasks")
    assert dag_tasks["total_entries"] == len(spec.tasks)
    run = _airflow_get(
        orchestrator, f"/dags/{answer['dag_id']}/dagRuns/{answer['dag_run_id']}"
    )
    assert run["dag_run_id"] == answer["dag_run_id"]
    client.cancel_plan(spec.key)


def _airflow_get(orchestrator: RunningOrchestrator, path: str) -> dict:
    """GET on Airflow's own REST API v2, logged in as the orchestrator's user."""
    response = httpx.get(
        f"{orchestrator.url}/api/v2{path}",
        headers={"Authorization": f"Bearer {_token(orchestrator)}"},
        timeout=60,
    )
    response.raise_for_status()
    answer: dict = response.json()
    return answer


def _token(orchestrator: RunningOrchestrator) -> str:
    """A JWT of Airflow's API for the orchestrator's user."""
    answer = httpx.post(
        f"{orchestrator.url}/auth/token",
        json={"username": orchestrator.username, "password": orchestrator.password},
        timeout=30,
    )
    answer.raise_for_status()
    token: str = answer.json()["access_token"]
    return token


def test_a_different_plan_under_a_known_key_is_refused(
    client: OrchestratorClient,
) -> None:
    spec = fedavg_spec(rounds=1)
    client.submit_plan(spec)
    other = fedavg_spec(rounds=2).model_copy(update={"key": spec.key})
    body = json.loads(other.to_json())
    for task in body["tasks"]:
        task["plan_key"] = spec.key
    from airfed.sdk.spec import parse_plan_spec

    with pytest.raises(OrchestratorError, match="409"):
        client.submit_plan(parse_plan_spec(body))
    client.cancel_plan(spec.key)


def test_a_spec_that_cannot_be_read_is_refused_naming_the_field(
    orchestrator: RunningOrchestrator,
) -> None:
    body = json.loads(fedavg_spec(rounds=1).to_json())
    body["rounds"] = "many"
    response = httpx.post(
        f"{orchestrator.url}/airfed/api/plans",
        json=body,
        headers={"Authorization": f"Bearer {_token(orchestrator)}"},
        timeout=30,
    )

    assert response.status_code == 422
    assert "field rounds" in response.json()["detail"]
    assert not (orchestrator.plans_folder / f"{body['key']}.json").exists()


def test_unknown_plan_is_not_found(client: OrchestratorClient) -> None:
    with pytest.raises(OrchestratorError, match="404"):
        client.get_plan("no-such-plan")


def test_cancel_fails_the_run(client: OrchestratorClient) -> None:
    spec = fedavg_spec(rounds=2)
    client.submit_plan(spec)

    answer = client.cancel_plan(spec.key)

    assert answer["status"] == "canceled"
    plan = client.get_plan(spec.key)
    assert plan["status"] == "canceled"
    assert "running" not in {t["state"] for t in plan["tasks"]}


def test_plans_folder_holds_only_complete_specs(
    orchestrator: RunningOrchestrator,
) -> None:
    leftovers = [
        p for p in Path(orchestrator.plans_folder).iterdir() if p.suffix == ".tmp"
    ]

    assert leftovers == []


def test_plans_submitted_at_the_same_time_all_start(
    orchestrator: RunningOrchestrator,
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    specs = [fedavg_spec(rounds=1) for _ in range(3)]

    def submit(spec: object) -> dict[str, str]:
        with orchestrator.client() as client:
            return client.submit_plan(spec)  # type: ignore[arg-type]

    with ThreadPoolExecutor(max_workers=3) as pool:
        answers = list(pool.map(submit, specs))

    assert [a["plan_key"] for a in answers] == [s.key for s in specs]
    with orchestrator.client() as client:
        for spec in specs:
            client.cancel_plan(spec.key)


class _BusyAirflow:
    """Airflow's REST API as SQLite makes it answer now and then: a server
    error while another component holds the write lock (a fault a test
    cannot cause on purpose), then the real answer."""

    def __init__(self, errors: int, final: int = 200) -> None:
        self.errors, self.final, self.calls = errors, final, 0

    def send(self, method: str, path: str, **kwargs: object) -> httpx.Response:
        self.calls += 1
        if self.calls <= self.errors:
            return httpx.Response(500, json={"reason": "Database error"})
        return httpx.Response(self.final, json={})


def _rest_answering(busy: _BusyAirflow) -> object:
    from starlette.requests import Request

    from airfed.plugins._rest import AirflowRest

    rest = AirflowRest(Request({"type": "http", "headers": []}))
    rest._send = busy.send  # type: ignore[method-assign]
    return rest


def test_calls_to_airflow_are_tried_again_while_it_is_busy() -> None:
    busy = _BusyAirflow(errors=2, final=409)

    response = _rest_answering(busy).call("POST", "/dags/d/dagRuns", json={})

    assert (response.status_code, busy.calls) == (409, 3)


def test_a_call_to_airflow_gives_up_after_its_tries() -> None:
    from airfed.plugins._rest import BUSY_RETRIES

    busy = _BusyAirflow(errors=100)

    response = _rest_answering(busy).call("PATCH", "/dags/d", json={})

    assert (response.status_code, busy.calls) == (500, len(BUSY_RETRIES) + 1)
