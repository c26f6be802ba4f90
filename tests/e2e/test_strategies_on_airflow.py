"""Every built-in strategy end to end: real nodes, the real ledger and Airflow.

One orchestrator and three nodes serve the whole module (starting Airflow is
the slow part). The organizations hold the quickstart's breast-cancer data
and the quickstart's models; each plan also runs through
:func:`~airfed.sdk.simulation.simulate` on the same spec and the same local
files, and the two must record the same performances.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from airfed.ledger.server import serve_log
from airfed.sdk.algorithms import package_algorithm
from airfed.sdk.client import Client
from airfed.sdk.datasets import (
    make_federated_dataset,
    write_opener,
    write_organization_data,
)
from airfed.sdk.evaluation import Evaluation
from airfed.sdk.network import Network, init_network
from airfed.sdk.orchestrator import FINAL_PLAN_STATUSES
from airfed.sdk.profile import write_profile
from airfed.sdk.quickstart import algorithm_for, quickstart_plan
from airfed.sdk.simulation import LocalFunction, SimulationAssets, simulate
from airfed.sdk.spec import Permission, Permissions, PlanSpec
from airfed.sdk.strategies import (
    STRATEGIES,
    Federation,
    OrganizationData,
    Strategy,
    make_strategy,
    register_package,
)
from tests.support.airflow import running_orchestrator
from tests.support.ledger import fast_witnesses
from tests.support.nodes import start_nodes
from tests.support.ports import free_port_block
from tests.support.postgres import temporary_database

# PostgreSQL: the plans of the second test are submitted at once, and Airflow
# on SQLite answered some of those submissions with a database error.
pytestmark = [pytest.mark.e2e, pytest.mark.airflow, pytest.mark.postgres]

ORGANIZATIONS = ("a", "b", "c")
SEED = 7


@dataclass
class Stack:
    """Nodes and Airflow with the data registered; the same files for
    simulation; one federation per algorithm package (NumPy and PyTorch)."""

    network: Network
    data: tuple[OrganizationData, ...]
    assets: SimulationAssets
    federations: dict[str, Federation]

    def client(self) -> Client:
        return Client(self.network.root / ORGANIZATIONS[0])

    def federation(self, strategy: Strategy, organizations: int = 3) -> Federation:
        """The federation of the first ``organizations`` organizations whose
        functions are the quickstart's model for ``strategy``."""
        federation = self.federations[algorithm_for(strategy).__name__]
        return dataclasses.replace(
            federation, organizations=federation.organizations[:organizations]
        )


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("strategies")
    network = init_network(
        root / "net", list(ORGANIZATIONS), base_port=free_port_block(7)
    )
    fast_witnesses(network)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("AIRFED_NODE_LEDGER", "on")
        env.setenv("AIRFLOW__AIRFED__LEDGER", "on")
        log = serve_log(network.root, batch_interval=0.05)
        try:
            with (
                temporary_database() as database_url,
                start_nodes(network, list(ORGANIZATIONS)),
                running_orchestrator(
                    root / "airflow", network.root, database_url=database_url
                ) as orchestrator,
            ):
                write_profile(
                    network.root / ORGANIZATIONS[0],
                    orchestrator_url=orchestrator.url,
                    username=orchestrator.username,
                    password=orchestrator.password,
                )
                yield _register(network, root / "assets")
        finally:
            log.stop()


def _register(network: Network, folder: Path) -> Stack:
    """The quickstart's data on each node; both model packages everywhere."""
    everyone = Permissions(process=Permission(authorized_ids=ORGANIZATIONS))
    dataset = make_federated_dataset(
        "breast_cancer", list(ORGANIZATIONS), scheme="iid", seed=SEED
    )
    opener = write_opener(folder / "opener.py")
    assets = SimulationAssets()
    data = []
    for split in dataset.splits:
        train, test = write_organization_data(split, folder / split.organization)
        with Client(network.root / split.organization) as own:
            registered = own.register_dataset(
                f"breast cancer ({split.organization})",
                opener,
                permissions=everyone,
                logs_permission=Permission(authorized_ids=ORGANIZATIONS),
            )
            train_key, test_key = (
                str(own.add_samples(registered["key"], [path])[0]["key"])
                for path in (train, test)
            )
        assets.datasets[str(registered["key"])] = opener
        assets.samples.update({train_key: train, test_key: test})
        data.append(
            OrganizationData(
                split.organization,
                str(registered["key"]),
                (train_key,),
                (test_key,),
            )
        )
    federations = {}
    models = {algorithm_for(make_strategy(name)) for name in STRATEGIES}
    with Client(network.root / ORGANIZATIONS[0]) as client:
        for model in models:
            package = package_algorithm(model, folder / model.__name__)
            functions = register_package(client, package)
            for role, key in (
                ("train", functions.train),
                ("aggregate", functions.aggregate),
                ("evaluate", functions.evaluate),
            ):
                assets.functions[key] = LocalFunction(
                    package.folder, package.functions[role]
                )
            federations[model.__name__] = Federation(
                tuple(data), functions, ORGANIZATIONS[0]
            )
    return Stack(network, tuple(data), assets, federations)


def _on_airflow(client: Client, spec: PlanSpec) -> dict[tuple[str, str], float]:
    return {(p.task_key, p.identifier): p.value for p in client.performances(spec.key)}


def _simulated(stack: Stack, spec: PlanSpec) -> dict[tuple[str, str], float]:
    result = simulate(spec, stack.assets)
    assert result.status == "done", result.error
    return {(p.task_key, p.identifier): p.value for p in result.performances}


def _wait_all(client: Client, keys: list[str], timeout: float) -> dict[str, str]:
    """Final status of each plan (polling them together)."""
    deadline = time.monotonic() + timeout
    final: dict[str, str] = {}
    while len(final) < len(keys) and time.monotonic() < deadline:
        for key in keys:
            if key not in final:
                status = str(client.plan_status(key).get("status"))
                if status in FINAL_PLAN_STATUSES:
                    final[key] = status
        time.sleep(1.0)
    return {key: final.get(key, "still running") for key in keys}


def test_simulation_records_what_the_run_on_airflow_records(stack: Stack) -> None:
    strategy = make_strategy("fedavg")
    spec = quickstart_plan(strategy, stack.federation(strategy), rounds=2)

    with stack.client() as client:
        client.submit(spec)
        status = client.wait(spec.key, timeout=540)
        on_airflow = _on_airflow(client, spec)

    assert status["status"] == "success"
    test_tasks = [t for t in spec.tasks if t.category == "test"]
    # Federated and local-only models, tested after both rounds, 3 metrics each.
    assert len(test_tasks) == 2 * 3 + 2 * 3
    assert len(on_airflow) == 3 * len(test_tasks)
    # Same code, same seeds, single-threaded torch and NumPy on both sides:
    # the values are equal to the last bit, not just close.
    assert _simulated(stack, spec) == on_airflow


def test_every_strategy_runs_to_the_end_on_airflow(stack: Stack) -> None:
    # Two organizations (three for Krum, which needs 2 * byzantine + 3), two
    # rounds, the final model tested: the smallest plans that still aggregate,
    # pass a model along and carry local state.
    specs = {
        name: make_strategy(name).build_plan(
            stack.federation(make_strategy(name), 3 if name == "krum" else 2),
            rounds=2,
            evaluation=Evaluation(every=None),
            name=f"end to end: {name}",
        )
        for name in STRATEGIES
    }

    with stack.client() as client:
        # Submitted together: Airflow runs the plans side by side.
        for spec in specs.values():
            client.submit(spec)
        statuses = _wait_all(client, [s.key for s in specs.values()], timeout=540)
        on_airflow = {name: _on_airflow(client, s) for name, s in specs.items()}

    by_name = {name: statuses[spec.key] for name, spec in specs.items()}
    assert by_name == dict.fromkeys(specs, "success")
    for name, spec in specs.items():
        tested = {t.key for t in spec.tasks if t.category == "test"}
        assert tested, name
        assert {task for task, _ in on_airflow[name]} == tested, name
        assert _simulated(stack, spec) == on_airflow[name], name
