"""Algorithms: model state files, batch sampling, local training rules, packaging."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from airfed.sdk.algorithms import (
    CONTROL,
    CONTROL_DELTA,
    TRAIN_RULES_KEY,
    Algorithm,
    AlgorithmError,
    BatchSampler,
    LocalTraining,
    LocalUpdate,
    TrainRules,
    derive_seed,
    package_algorithm,
    train_round,
)
from airfed.sdk.datasets import make_federated_dataset
from airfed.sdk.model_state import Arrays, ModelState, ModelStateError
from airfed.sdk.privacy import DifferentialPrivacy
from tests.sdk._numpy_models import NumpySoftmax
from tests.sdk._strategy_models import TinyLogistic, TinySgd


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    split = make_federated_dataset("breast_cancer", ["a"], seed=0).splits[0]
    return split.x_train, split.y_train


def test_model_state_round_trips_and_writes_the_same_bytes(tmp_path: Path) -> None:
    state = ModelState(
        {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "n": np.array(7)},
        {CONTROL: {"w": np.ones((2, 3))}},
        {"num_samples": 12, "dp_steps": {"a": 2}},
    )
    state.save(tmp_path / "m")
    loaded = ModelState.load(tmp_path / "m")
    assert loaded.meta == state.meta
    np.testing.assert_array_equal(loaded.params["w"], state.params["w"])
    assert loaded.params["w"].dtype == np.float32 and int(loaded.params["n"]) == 7
    np.testing.assert_array_equal(loaded.groups[CONTROL]["w"], np.ones((2, 3)))
    assert loaded.to_bytes() == state.to_bytes() == state.copy().to_bytes()


def test_model_state_refuses_foreign_or_damaged_files(tmp_path: Path) -> None:
    with pytest.raises(ModelStateError, match="magic"):
        ModelState.from_bytes(b"PK\x03\x04 not a model")
    blob = ModelState({"w": np.zeros(100)}).to_bytes()
    with pytest.raises(ModelStateError, match="truncated"):
        ModelState.from_bytes(blob[:-10])
    with pytest.raises(ModelStateError, match="dtype"):
        ModelState({"w": np.array(["text"])}).to_bytes()
    with pytest.raises(ModelStateError, match="cannot read"):
        ModelState.load(tmp_path / "absent")


def test_batch_sampler_visits_every_sample_once_per_epoch_and_resumes() -> None:
    sampler = BatchSampler(10, 4, seed=3)
    epoch = np.concatenate([sampler.next_batch() for _ in range(3)])
    assert sorted(epoch.tolist()) == list(range(10))
    assert sampler.state() == {"epoch": 1, "position": 0}
    sampler.next_batch()
    saved = sampler.state()
    expected = [sampler.next_batch().tolist() for _ in range(5)]
    resumed = BatchSampler(10, 4, seed=3)
    resumed.restore(saved)
    assert [resumed.next_batch().tolist() for _ in range(5)] == expected


def test_derive_seed_is_stable_and_distinct() -> None:
    assert derive_seed(1, "a", "federated") == derive_seed(1, "a", "federated")
    assert derive_seed(1, "a") != derive_seed(1, "b")
    assert 0 <= derive_seed("x") < 2**31


def test_torch_training_is_deterministic_and_carries_local_state(data: Any) -> None:
    algorithm = TinyLogistic()
    shared = ModelState(algorithm.initial_params())
    assert ModelState(algorithm.initial_params()).to_bytes() == shared.to_bytes()
    rules = TrainRules()
    one, local = train_round(
        algorithm, shared, None, data, rules, organization="a", round=1
    )
    again, _ = train_round(
        algorithm, shared, None, data, rules, organization="a", round=1
    )
    assert one.to_bytes() == again.to_bytes()
    assert one.meta == {"num_samples": len(data[1])}
    other, _ = train_round(
        algorithm, shared, None, data, rules, organization="b", round=1
    )
    assert other.to_bytes() != one.to_bytes()
    # With last round's local state, the sampler continues instead of restarting.
    resumed, _ = train_round(
        algorithm, shared, local, data, rules, organization="a", round=2
    )
    fresh, _ = train_round(
        algorithm, shared, None, data, rules, organization="a", round=2
    )
    assert resumed.to_bytes() != fresh.to_bytes()


def test_fedprox_keeps_the_local_model_near_the_global_one(data: Any) -> None:
    algorithm = TinyLogistic()
    shared = ModelState(algorithm.initial_params())

    def distance(rules: TrainRules) -> float:
        out, _ = train_round(
            algorithm, shared, None, data, rules, organization="a", round=1
        )
        return sum(
            float(np.sum((out.params[k] - shared.params[k]) ** 2))
            for k in shared.params
        )

    assert distance(TrainRules(proximal_mu=10.0)) < 0.8 * distance(TrainRules())


class Shift(Algorithm):
    """Moves every weight by -1 in 2 steps of learning rate 0.5 (a test algorithm)."""

    supports_gradient_rules: ClassVar[bool] = True

    def initial_params(self) -> Arrays:
        return {"w": np.zeros(2)}

    def fit(
        self, params: Arrays, local: bytes | None, data: Any, training: LocalTraining
    ) -> LocalUpdate:
        self.correction = training.correction
        return LocalUpdate(
            {"w": params["w"] - 1.0}, b"kept", steps=2, learning_rate=0.5
        )

    def predict(self, params: Arrays, data: Any) -> np.ndarray:
        return np.tile([0.5, 0.5], (len(data[1]), 1))


def test_scaffold_updates_the_client_control_variate() -> None:
    data = (np.zeros((4, 2)), np.zeros(4, dtype=np.int64))
    shared = ModelState({"w": np.zeros(2)}, {CONTROL: {"w": np.array([0.25, 0.0])}})
    algorithm = Shift()
    rules = TrainRules(scaffold=True)
    out, local = train_round(
        algorithm, shared, None, data, rules, organization="a", round=1
    )
    np.testing.assert_allclose(algorithm.correction["w"], [0.25, 0.0])
    # c_i+ = c_i - c + (x - y) / (K * lr) = 0 - c + 1 / (2 * 0.5)
    np.testing.assert_allclose(local.groups["client_control"]["w"], [0.75, 1.0])
    np.testing.assert_allclose(out.groups[CONTROL_DELTA]["w"], [0.75, 1.0])
    assert local.params["algorithm"].tobytes() == b"kept"
    _, second = train_round(
        algorithm, shared, local, data, rules, organization="a", round=2
    )
    np.testing.assert_allclose(algorithm.correction["w"], [0.25 - 0.75, -1.0])
    # c_i+ = c_i - c + 1 = [0.75 - 0.25 + 1, 1 - 0 + 1]
    np.testing.assert_allclose(second.groups["client_control"]["w"], [1.5, 2.0])


def test_privacy_clips_the_update_and_counts_steps() -> None:
    data = (np.zeros((4, 2)), np.zeros(4, dtype=np.int64))
    shared = ModelState({"w": np.zeros(2)}, {}, {"dp_steps": {"b": 3}})
    rules = TrainRules(privacy=DifferentialPrivacy(clip_norm=0.5, noise_multiplier=0.0))
    out, _ = train_round(Shift(), shared, None, data, rules, organization="a", round=1)
    assert np.linalg.norm(out.params["w"]) == pytest.approx(0.5)
    assert out.meta["dp_steps"] == {"a": 1, "b": 3}
    noisy = TrainRules(privacy=DifferentialPrivacy(clip_norm=0.5, noise_multiplier=1.0))
    first, _ = train_round(
        Shift(), shared, None, data, noisy, organization="a", round=1
    )
    second, _ = train_round(
        Shift(), shared, None, data, noisy, organization="a", round=1
    )
    assert first.to_bytes() == second.to_bytes()
    assert np.linalg.norm(first.params["w"]) != pytest.approx(0.5)


def test_sklearn_and_numpy_algorithms_train_and_predict(data: Any) -> None:
    for algorithm in (TinySgd(), NumpySoftmax()):
        shared = ModelState(algorithm.initial_params())
        out, local = train_round(
            algorithm, shared, None, data, TrainRules(), organization="a", round=1
        )
        again, _ = train_round(
            algorithm, out, local, data, TrainRules(), organization="a", round=2
        )
        probabilities = algorithm.predict(again.params, data)
        assert probabilities.shape == (len(data[1]), 2)
        np.testing.assert_allclose(probabilities.sum(axis=1), 1.0)
        assert np.mean(probabilities.argmax(axis=1) == data[1]) > 0.85


def test_package_writes_a_function_folder_with_three_entrypoints(
    tmp_path: Path,
) -> None:
    package = package_algorithm(
        TinyLogistic, tmp_path / "fn", differential_privacy=True
    )
    entry = package.train["entrypoint"].split(":")[0]
    assert (tmp_path / "fn" / "_strategy_models.py").is_file()
    source = (tmp_path / "fn" / f"{entry}.py").read_text()
    assert "from _strategy_models import TinyLogistic" in source
    assert [f["entrypoint"].split(":")[1] for f in package.functions.values()] == [
        "train",
        "aggregate",
        "evaluate",
    ]
    assert package.metrics == ("accuracy", "roc_auc", "loss", "epsilon")
    outputs = {o["identifier"]: o["kind"] for o in package.evaluate["outputs"]}
    assert outputs == dict.fromkeys(package.metrics, "performance")
    inputs = {i["identifier"]: i for i in package.train["inputs"]}
    assert (
        inputs["datasamples"]["kind"] == "datasamples" and inputs["local"]["optional"]
    )
    assert package.train["permissions"]["process"]["public"] is True
    json.dumps(package.functions)


def test_package_refuses_a_nested_class(tmp_path: Path) -> None:
    class Inner(TinyLogistic):
        pass

    with pytest.raises(AlgorithmError, match="top level"):
        package_algorithm(Inner, tmp_path)


class WithBatchNorm(TinyLogistic):
    """A model with buffers (running statistics, a counter)."""

    def build_model(self) -> Any:
        import torch

        return torch.nn.Sequential(torch.nn.BatchNorm1d(30), torch.nn.Linear(30, 2))


def test_scaffold_and_fedprox_leave_buffers_alone(data: Any) -> None:
    algorithm = WithBatchNorm()
    shared = ModelState(algorithm.initial_params())
    rules = TrainRules(scaffold=True, proximal_mu=0.1)
    out, local = train_round(
        algorithm, shared, None, data, rules, organization="a", round=1
    )
    assert int(out.params["0.num_batches_tracked"]) == algorithm.local_steps
    assert "0.running_mean" in local.groups["client_control"]


def test_step_fraction_scales_the_local_steps_and_keeps_the_batch_order(
    data: Any,
) -> None:
    algorithm = WithBatchNorm()
    shared = ModelState(algorithm.initial_params())
    rules = TrainRules(step_fraction=2.5)
    assert TrainRules.from_metadata({TRAIN_RULES_KEY: rules.to_metadata()}) == rules
    assert "step_fraction" not in TrainRules().to_metadata()

    longer, _ = train_round(
        algorithm, shared, None, data, rules, organization="a", round=1
    )
    # Two rounds of the plain budget and one half as long make the same steps.
    state = shared
    local = None
    for fraction in (1.0, 1.0, 0.5):
        state, local = train_round(
            algorithm,
            ModelState(state.params),
            local,
            data,
            TrainRules(step_fraction=fraction),
            organization="a",
            round=1,
        )
    steps = int(longer.params["0.num_batches_tracked"])
    assert steps == round(2.5 * algorithm.local_steps)
    for name, value in longer.params.items():
        np.testing.assert_array_equal(value, state.params[name], err_msg=name)
