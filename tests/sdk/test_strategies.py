"""Strategies: aggregation on known numbers and the graph of the plans they build."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pytest

from airfed.sdk.aggregation import AggregationError, weighted_mean
from airfed.sdk.algorithms import CONTROL, CONTROL_DELTA, STRATEGY_KEY, TrainRules
from airfed.sdk.errors import PlanError
from airfed.sdk.evaluation import Evaluation
from airfed.sdk.model_state import ModelState
from airfed.sdk.privacy import DifferentialPrivacy
from airfed.sdk.spec import PlanSpec, TaskSpec
from airfed.sdk.strategies import (
    STRATEGIES,
    AlgorithmFunctions,
    Cyclic,
    FedAdagrad,
    FedAdam,
    FedAvg,
    Federation,
    FedMedian,
    FedProx,
    FedYogi,
    Krum,
    ModelRef,
    OrganizationData,
    PlanContext,
    RandomWalk,
    Scaffold,
    SingleOrganization,
    Strategy,
    StrategyError,
    TrimmedMean,
    make_strategy,
    strategy_from_config,
)

ORGS = ("a", "b", "c")
FUNCTIONS = AlgorithmFunctions("f-train", "f-aggregate", "f-evaluate")


def federation(
    aggregator: str | None = None, metrics: tuple[str, ...] = ()
) -> Federation:
    functions = FUNCTIONS
    if metrics:
        functions = AlgorithmFunctions("f-train", "f-aggregate", "f-evaluate", metrics)
    return Federation(
        tuple(
            OrganizationData(o, f"ds-{o}", (f"train-{o}",), (f"test-{o}",))
            for o in ORGS
        ),
        functions,
        creator="a",
        aggregator=aggregator,
    )


def state(n: int = 0, **arrays: list[float]) -> ModelState:
    return ModelState(
        {k: np.asarray(v, dtype=np.float64) for k, v in arrays.items()},
        {},
        {"num_samples": n},
    )


# --- aggregation on known numbers -----------------------------------------------------


def test_fedavg_weights_updates_by_number_of_samples() -> None:
    model, server = FedAvg().aggregate(
        [state(1, w=[1, 2]), state(3, w=[3, 6])], None, None
    )
    np.testing.assert_allclose(model.params["w"], [2.5, 5.0])
    assert server is None


def test_fedavg_keeps_integer_counters_and_dtypes() -> None:
    first = ModelState(
        {"w": np.array([1.0], np.float32), "n": np.array(4)}, {}, {"num_samples": 1}
    )
    second = ModelState(
        {"w": np.array([3.0], np.float32), "n": np.array(9)}, {}, {"num_samples": 1}
    )
    model, _ = FedAvg().aggregate([first, second], None, None)
    assert model.params["w"].dtype == np.float32
    np.testing.assert_allclose(model.params["w"], [2.0])
    assert int(model.params["n"]) == 4


def test_fedprox_aggregates_like_fedavg_and_asks_for_a_proximal_term() -> None:
    model, _ = FedProx(mu=0.5).aggregate([state(1, w=[0]), state(1, w=[4])], None, None)
    np.testing.assert_allclose(model.params["w"], [2.0])
    assert FedProx(mu=0.5).train_rules(None) == TrainRules(proximal_mu=0.5)


def test_scaffold_moves_model_and_server_control() -> None:
    previous = ModelState({"w": np.zeros(2)}, {CONTROL: {"w": np.zeros(2)}})
    updates = [
        ModelState(
            {"w": np.array([1.0, 1.0])}, {CONTROL_DELTA: {"w": np.array([0.5, 0.0])}}
        ),
        ModelState(
            {"w": np.array([3.0, 1.0])}, {CONTROL_DELTA: {"w": np.array([0.5, 1.0])}}
        ),
    ]
    model, _ = Scaffold().aggregate(updates, previous, None)
    np.testing.assert_allclose(model.params["w"], [2.0, 1.0])
    np.testing.assert_allclose(model.groups[CONTROL]["w"], [0.5, 0.5])
    half, _ = Scaffold(server_learning_rate=0.5).aggregate(updates, previous, None)
    np.testing.assert_allclose(half.params["w"], [1.0, 0.5])
    assert Scaffold().train_rules(None).scaffold


@pytest.mark.parametrize(
    ("strategy", "second_moment"),
    [
        (FedAdam(server_learning_rate=0.5), 0.99 * 1e-6 + 0.01 * 4),
        (FedYogi(server_learning_rate=0.5), 1e-6 + 0.01 * 4),
        (FedAdagrad(server_learning_rate=0.5), 1e-6 + 4),
    ],
)
def test_server_optimizers_take_one_step(
    strategy: Strategy, second_moment: float
) -> None:
    # Mean of the updates is 3, the model is 1: pseudo-gradient 2.
    updates = [state(1, w=[2.0]), state(1, w=[4.0])]
    model, server = strategy.aggregate(updates, state(w=[1.0]), None)
    first_moment = 0.1 * 2
    expected = 1 + 0.5 * first_moment / (np.sqrt(second_moment) + 1e-3)
    np.testing.assert_allclose(model.params["w"], [expected])
    assert server is not None
    np.testing.assert_allclose(server.groups["m"]["w"], [first_moment])
    np.testing.assert_allclose(server.groups["v"]["w"], [second_moment])


def test_fedadam_carries_its_moments_between_rounds() -> None:
    strategy = FedAdam(server_learning_rate=1.0)
    model, server = strategy.aggregate([state(1, w=[1.0])], state(w=[0.0]), None)
    again, _ = strategy.aggregate([state(1, w=[1.0])], model, server)
    m = 0.9 * 0.1 + 0.1 * (1.0 - model.params["w"][0])
    v = 0.99 * server.groups["v"]["w"][0] + 0.01 * (1.0 - model.params["w"][0]) ** 2
    np.testing.assert_allclose(
        again.params["w"], model.params["w"] + m / (np.sqrt(v) + 1e-3)
    )


def test_fedmedian_takes_the_coordinate_median() -> None:
    updates = [state(1, w=[1, 5]), state(1, w=[2, -1]), state(1, w=[10, 0])]
    model, _ = FedMedian().aggregate(updates, None, None)
    np.testing.assert_allclose(model.params["w"], [2, 0])


def test_trimmed_mean_drops_extremes() -> None:
    updates = [state(1, w=[v]) for v in (1, 2, 3, 4, 100)]
    model, _ = TrimmedMean(beta=0.2).aggregate(updates, None, None)
    np.testing.assert_allclose(model.params["w"], [3.0])
    with pytest.raises(AggregationError, match="beta"):
        TrimmedMean(beta=0.5).aggregate(updates, None, None)


def test_krum_keeps_the_update_closest_to_its_neighbours() -> None:
    updates = [state(1, w=[v]) for v in (0.0, 0.1, 0.2, 10.0, 0.05)]
    model, _ = Krum(byzantine=1).aggregate(updates, None, None)
    np.testing.assert_allclose(model.params["w"], [0.05])
    multi, _ = Krum(byzantine=1, selected=2).aggregate(updates, None, None)
    np.testing.assert_allclose(multi.params["w"], [0.025])
    with pytest.raises(AggregationError, match="at least 5"):
        Krum(byzantine=1).aggregate(updates[:4], None, None)


def test_krum_refuses_a_plan_with_too_few_organizations() -> None:
    three = federation()
    assert Krum().build_plan(three, rounds=1).tasks
    with pytest.raises(PlanError, match="at least 5 organizations"):
        Krum(byzantine=1).build_plan(three, rounds=1)
    two = dataclasses.replace(three, organizations=three.organizations[:2])
    with pytest.raises(PlanError, match="at least 3 organizations"):
        Krum().build_plan(two, rounds=1)


@pytest.mark.parametrize("strategy", [Cyclic(), RandomWalk(), SingleOrganization()])
def test_strategies_that_pass_a_model_along_do_not_aggregate(
    strategy: Strategy,
) -> None:
    with pytest.raises(StrategyError, match="does not aggregate"):
        strategy.aggregate([state(1, w=[1])], None, None)


def test_aggregation_refuses_mismatched_updates() -> None:
    with pytest.raises(AggregationError, match="shape"):
        weighted_mean([{"w": np.zeros(2)}, {"w": np.zeros(3)}])
    with pytest.raises(AggregationError, match="no updates"):
        weighted_mean([])


# --- plan graphs ----------------------------------------------------------------------


def by_round(spec: PlanSpec, category: str) -> dict[int, list[TaskSpec]]:
    result: dict[int, list[TaskSpec]] = {}
    for task in spec.tasks:
        if task.category == category:
            result.setdefault(task.round, []).append(task)
    return result


def parents(task: TaskSpec, identifier: str) -> list[tuple[str | None, str | None]]:
    return [
        (r.parent_task_key, r.parent_output)
        for r in task.inputs
        if r.identifier == identifier
    ]


@pytest.mark.parametrize(
    "name", ["fedavg", "fedprox", "fedmedian", "trimmed_mean", "krum"]
)
def test_fedavg_like_plans_train_everywhere_and_aggregate_once_per_round(
    name: str,
) -> None:
    spec = make_strategy(name).build_plan(federation(aggregator="b"), rounds=2)
    (initial,) = by_round(spec, "aggregate")[0]
    assert (initial.worker, initial.rank, initial.inputs) == ("b", 0, ())
    aggregates = by_round(spec, "aggregate")
    trains = by_round(spec, "train")
    tests = by_round(spec, "test")
    previous = initial
    for round in (1, 2):
        assert sorted(t.worker for t in trains[round]) == list(ORGS)
        (aggregate,) = aggregates[round]
        assert aggregate.worker == "b"
        assert aggregate.rank == 2 * round
        assert {p for p, _ in parents(aggregate, "models")} == {
            t.key for t in trains[round]
        }
        assert parents(aggregate, "previous") == []
        for train in trains[round]:
            assert train.rank == 2 * round - 1
            assert parents(train, "model") == [(previous.key, "model")]
            readers = train.outputs["shared"].permissions.process.authorized_ids
            assert readers == tuple(dict.fromkeys([train.worker, "b"]))
            local = train.outputs["local"]
            assert local.transient and local.permissions.process.authorized_ids == (
                train.worker,
            )
            assert json.loads(train.metadata["airfed.train"])["lane"] == "federated"
        assert sorted(t.worker for t in tests[round]) == list(ORGS)
        assert all(
            parents(t, "model") == [(aggregate.key, "model")] for t in tests[round]
        )
        assert all(t.rank == 2 * round + 1 for t in tests[round])
        previous = aggregate
    # Round 2 training continues each node's local state of round 1.
    first = {t.worker: t.key for t in trains[1]}
    for train in trains[2]:
        assert parents(train, "local") == [(first[train.worker], "local")]
    assert all(parents(t, "local") == [] for t in trains[1])


@pytest.mark.parametrize("name", ["fedadam", "fedyogi", "fedadagrad"])
def test_server_optimizer_plans_chain_previous_model_and_server_state(
    name: str,
) -> None:
    spec = make_strategy(name).build_plan(federation(), rounds=3)
    aggregates = by_round(spec, "aggregate")
    for round in (1, 2, 3):
        (aggregate,) = aggregates[round]
        (before,) = aggregates[round - 1]
        assert parents(aggregate, "previous") == [(before.key, "model")]
        expected_state = [] if round == 1 else [(before.key, "state")]
        assert parents(aggregate, "state") == expected_state
        assert aggregate.outputs["state"].permissions.process.authorized_ids == ("a",)
        config = json.loads(aggregate.metadata[STRATEGY_KEY])
        assert config["params"]["server_learning_rate"] == 0.1


def test_scaffold_plans_pass_the_previous_model_to_the_aggregator() -> None:
    spec = Scaffold().build_plan(federation(), rounds=2)
    (first,) = by_round(spec, "aggregate")[1]
    (second,) = by_round(spec, "aggregate")[2]
    assert parents(second, "previous") == [(first.key, "model")]
    assert all(
        json.loads(t.metadata["airfed.train"])["scaffold"]
        for t in by_round(spec, "train")[1]
    )


def test_cyclic_passes_the_model_from_organization_to_organization() -> None:
    spec = Cyclic().build_plan(federation(), rounds=2, evaluation=Evaluation(every=2))
    (initial,) = by_round(spec, "aggregate")[0]
    assert set(by_round(spec, "aggregate")) == {0}
    trains = [t for t in spec.tasks if t.category == "train"]
    trains.sort(key=lambda t: t.rank)
    assert [t.worker for t in trains] == list(ORGS) * 2
    assert [t.rank for t in trains] == [1, 2, 3, 4, 5, 6]
    expected = [(initial.key, "model")] + [(t.key, "shared") for t in trains[:-1]]
    assert [parents(t, "model")[0] for t in trains] == expected
    assert set(by_round(spec, "test")) == {2}
    assert all(
        parents(t, "model") == [(trains[-1].key, "shared")]
        for t in by_round(spec, "test")[2]
    )
    assert trains[0].outputs["shared"].permissions.process.authorized_ids == (
        "a",
        "b",
        "c",
    )


def test_random_walk_follows_its_seeded_sequence() -> None:
    strategy = RandomWalk(seed=4)
    sequence = strategy.sequence(ORGS, 8)
    spec = strategy.build_plan(federation(), rounds=8, evaluation=Evaluation(every=4))
    trains = sorted(
        (t for t in spec.tasks if t.category == "train"), key=lambda t: t.round
    )
    assert [t.worker for t in trains] == sequence
    assert [t.rank for t in trains] == list(range(1, 9))
    assert sequence == RandomWalk(seed=4).sequence(ORGS, 8)
    assert len(set(sequence)) > 1
    assert sequence != RandomWalk(seed=5).sequence(ORGS, 8)
    assert sorted(by_round(spec, "test")) == [4, 8]
    assert Counter(t.worker for t in by_round(spec, "test")[8]) == Counter(ORGS)


def test_single_organization_trains_alone() -> None:
    spec = SingleOrganization(organization="c").build_plan(federation(), rounds=3)
    assert [t.worker for t in spec.tasks if t.category == "train"] == ["c"] * 3
    assert len(by_round(spec, "test")[3]) == 3


def test_local_baselines_train_each_organization_alone() -> None:
    spec = FedAvg().build_plan(
        federation(), rounds=2, local_baselines=True, evaluation=Evaluation(every=None)
    )
    local = [t for t in spec.tasks if t.metadata["airfed.model"].startswith("local:")]
    trains = [t for t in local if t.category == "train"]
    tests = [t for t in local if t.category == "test"]
    assert Counter(t.worker for t in trains) == Counter({o: 2 for o in ORGS})
    for train in trains:
        assert train.metadata["airfed.model"] == f"local:{train.worker}"
        assert (
            json.loads(train.metadata["airfed.train"])["lane"]
            == f"local:{train.worker}"
        )
    # Each local model is tested on every organization's test data, last round only.
    assert Counter(t.metadata["airfed.model"] for t in tests) == Counter(
        {f"local:{o}": 3 for o in ORGS}
    )
    assert {t.round for t in tests} == {2}
    own = FedAvg().build_plan(
        federation(),
        rounds=1,
        local_baselines=True,
        evaluation=Evaluation(local_models_tested_on="own"),
    )
    for task in own.tasks:
        if task.category == "test" and task.metadata["airfed.model"] != "federated":
            assert task.metadata["airfed.model"] == f"local:{task.worker}"


def test_metrics_match_scikit_learn() -> None:
    from sklearn.metrics import accuracy_score, roc_auc_score
    from sklearn.metrics import log_loss as sk_log_loss

    from airfed.sdk.evaluation import compute_metrics

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, size=200)
    scores = rng.random((200, 3)) + np.eye(3)[labels] * 0.5
    scores[:20] = scores[20:40]  # ties
    probabilities = scores / scores.sum(axis=1, keepdims=True)
    values = compute_metrics(("accuracy", "roc_auc", "loss"), labels, probabilities)
    assert values["accuracy"] == pytest.approx(
        accuracy_score(labels, probabilities.argmax(1))
    )
    assert values["loss"] == pytest.approx(sk_log_loss(labels, probabilities))
    expected = roc_auc_score(labels, probabilities, multi_class="ovr", average="macro")
    assert values["roc_auc"] == pytest.approx(expected)
    binary = compute_metrics(("roc_auc",), labels % 2, probabilities[:, :2])
    assert binary["roc_auc"] == pytest.approx(
        roc_auc_score(labels % 2, probabilities[:, 1])
    )
    # One class only: the area is undefined and recorded as chance.
    assert (
        compute_metrics(("roc_auc",), np.zeros(5, int), probabilities[:5])["roc_auc"]
        == 0.5
    )


def test_evaluation_rounds() -> None:
    evaluation = Evaluation(every=3, rounds=(2,), final=True)
    assert [r for r in range(1, 8) if evaluation.is_due(r, 7)] == [2, 3, 6, 7]
    spec = FedAvg().build_plan(federation(), rounds=7, evaluation=evaluation)
    assert sorted(by_round(spec, "test")) == [2, 3, 6, 7]
    test = by_round(spec, "test")[2][0]
    assert json.loads(test.metadata["airfed.metrics"]) == [
        "accuracy",
        "roc_auc",
        "loss",
    ]
    assert set(test.outputs) == {"accuracy", "roc_auc", "loss"}


def test_privacy_needs_an_evaluation_that_records_epsilon() -> None:
    privacy = DifferentialPrivacy(clip_norm=1.0, noise_multiplier=1.0)
    with pytest.raises(PlanError, match="differential_privacy=True"):
        FedAvg().build_plan(federation(), rounds=1, privacy=privacy)
    with_epsilon = federation(metrics=("accuracy", "epsilon"))
    with pytest.raises(PlanError, match="records epsilon"):
        FedAvg().build_plan(with_epsilon, rounds=1)
    spec = FedAvg().build_plan(with_epsilon, rounds=1, privacy=privacy)
    rules = json.loads(by_round(spec, "train")[1][0].metadata["airfed.train"])
    assert rules["privacy"] == {
        "clip_norm": 1.0,
        "noise_multiplier": 1.0,
        "delta": 1e-5,
    }
    with pytest.raises(PlanError, match="SCAFFOLD"):
        Scaffold().build_plan(with_epsilon, rounds=1, privacy=privacy)


def test_every_strategy_is_registered_and_rebuilt_from_its_config() -> None:
    assert set(STRATEGIES) == {
        "fedavg",
        "fedprox",
        "scaffold",
        "fedadam",
        "fedyogi",
        "fedadagrad",
        "fedmedian",
        "trimmed_mean",
        "krum",
        "cyclic",
        "random_walk",
        "single_organization",
    }
    for name in STRATEGIES:
        strategy = make_strategy(name)
        assert strategy_from_config(json.dumps(strategy.config())) == strategy
        assert strategy.__doc__ and ("20" in strategy.__doc__)
    assert make_strategy("random-walk", seed=3) == RandomWalk(seed=3)
    with pytest.raises(StrategyError, match="unknown strategy"):
        make_strategy("fedsgd")
    with pytest.raises(StrategyError, match="not an airfed Strategy"):
        strategy_from_config(json.dumps({"class": "json:JSONDecoder"}))


@dataclass(frozen=True)
class EveryOther(Strategy):
    """Aggregates odd rounds; even rounds train on ``a`` alone (a test strategy)."""

    name: ClassVar[str] = "every_other"
    shift: float = 1.0

    def add_round(self, plan: PlanContext, round: int, model: ModelRef) -> ModelRef:
        if round % 2 == 0:
            return plan.train("a", round, model, share_with=plan.organizations)
        updates = [plan.train(o, round, model) for o in plan.organizations]
        return plan.aggregate(round, updates, previous=model)

    def aggregate(self, updates, previous, state):  # type: ignore[no-untyped-def]
        mean = weighted_mean([u.params for u in updates])
        return ModelState({k: v + self.shift for k, v in mean.items()}), None


def test_a_user_strategy_builds_plans_from_the_base_class() -> None:
    spec = EveryOther(shift=2.0).build_plan(federation(), rounds=2)
    assert spec.strategy == "every_other"
    assert len(by_round(spec, "train")[1]) == 3 and len(by_round(spec, "train")[2]) == 1
    (aggregate,) = by_round(spec, "aggregate")[1]
    rebuilt = strategy_from_config(aggregate.metadata[STRATEGY_KEY])
    model, _ = rebuilt.aggregate([state(1, w=[1.0]), state(1, w=[3.0])], None, None)
    np.testing.assert_allclose(model.params["w"], [4.0])


@pytest.mark.parametrize("name", ["fedavg", "fedadam", "scaffold"])
def test_transient_outputs_name_the_tasks_that_consume_them(name: str) -> None:
    spec = make_strategy(name).build_plan(federation(aggregator="b"), rounds=3)
    readers: dict[tuple[str, str], list[str]] = {}
    for task in spec.tasks:
        for ref in task.inputs:
            if ref.parent_task_key and ref.parent_output:
                key = (ref.parent_task_key, ref.parent_output)
                readers.setdefault(key, []).append(task.key)
    transient = 0
    for task in spec.tasks:
        for identifier, output in task.outputs.items():
            expected = readers.get((task.key, identifier), [])
            if output.transient:
                transient += 1
                assert sorted(output.consumers) == sorted(set(expected))
            else:
                assert output.consumers == ()
    assert transient > 0
