"""Algorithms: the model code a compute plan trains, packaged as functions.

A user subclasses one of three bases and fills in a few lines:

- :class:`TorchAlgorithm`: a PyTorch model, optimizer and loss; batches come
  from a seeded :class:`BatchSampler` whose position carries across rounds;
- :class:`SklearnAlgorithm`: a scikit-learn linear model trained with
  ``partial_fit`` from the shared ``coef_`` and ``intercept_``
  (``SGDClassifier``);
- :class:`NumpyAlgorithm`: any model whose state is NumPy arrays.

:func:`package_algorithm` turns the user's module into a function folder with
three entrypoints (``train``, ``aggregate``, ``evaluate``) that take a
:class:`~airfed.sdk.function.TaskContext`, and the metadata of the three
functions to register (contract A).

What travels and what stays: a train task writes two outputs. ``shared`` (a
:class:`~airfed.sdk.model_state.ModelState`: weights, the number of samples,
strategy extras) goes to the aggregator. ``local`` (optimizer state, sampler
position, random generator state, SCAFFOLD's client control variate) is
permitted to the worker alone and read back by the same organization's train
task in the next round.

Strategies steer training through the task's metadata: ``airfed.train``
(JSON: proximal term, SCAFFOLD, differential privacy, seed lane),
``airfed.strategy`` (the aggregation rule, for aggregate tasks) and
``airfed.metrics`` (for test tasks).
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import io
import json
import shutil
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from airfed.sdk.errors import AirfedError
from airfed.sdk.evaluation import MetricFunction, compute_metrics
from airfed.sdk.function import TaskContext
from airfed.sdk.model_state import Arrays, ModelState
from airfed.sdk.privacy import DifferentialPrivacy, clip_and_noise, epsilon
from airfed.sdk.spec import Permission, Permissions

if TYPE_CHECKING:
    import torch

__all__ = [
    "CONTROL",
    "CONTROL_DELTA",
    "DEFAULT_METRICS",
    "METRICS_KEY",
    "STRATEGY_KEY",
    "TRAIN_RULES_KEY",
    "Algorithm",
    "AlgorithmError",
    "AlgorithmPackage",
    "BatchSampler",
    "LocalTraining",
    "LocalUpdate",
    "NumpyAlgorithm",
    "SklearnAlgorithm",
    "TorchAlgorithm",
    "TrainRules",
    "derive_seed",
    "load_algorithm",
    "merge_meta",
    "model_epsilon",
    "package_algorithm",
    "run_aggregate",
    "run_evaluate",
    "run_train",
    "train_round",
]

TRAIN_RULES_KEY = "airfed.train"
STRATEGY_KEY = "airfed.strategy"
METRICS_KEY = "airfed.metrics"
CONTROL = "control"
CONTROL_DELTA = "control_delta"
_LOCAL_BLOB = "algorithm"
_CLIENT_CONTROL = "client_control"


class AlgorithmError(AirfedError):  # type: ignore[misc,unused-ignore]
    """An algorithm cannot train, aggregate or evaluate as the plan asks."""


def derive_seed(*parts: object) -> int:
    """A 31-bit seed from any parts, the same in every process (unlike hash())."""
    text = "/".join(str(part) for part in parts)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big") >> 1


@dataclass(frozen=True)
class TrainRules:
    """What the strategy asks of local training (from task metadata).

    ``step_fraction`` scales the algorithm's ``local_steps`` for the task
    (at least one step); a :class:`NumpyAlgorithm` counts its own steps and
    ignores it.
    """

    proximal_mu: float = 0.0
    scaffold: bool = False
    privacy: DifferentialPrivacy | None = None
    lane: str = "federated"
    step_fraction: float = 1.0

    def to_metadata(self) -> str:
        document: dict[str, Any] = {
            "proximal_mu": self.proximal_mu,
            "scaffold": self.scaffold,
            "privacy": None if self.privacy is None else self.privacy.to_dict(),
            "lane": self.lane,
        }
        # Written only when set: plans that keep the default keep their keys.
        if self.step_fraction != 1.0:
            document["step_fraction"] = self.step_fraction
        return json.dumps(document, sort_keys=True)

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, str]) -> TrainRules:
        raw = metadata.get(TRAIN_RULES_KEY)
        if not raw:
            return cls()
        data = json.loads(raw)
        privacy = data.get("privacy")
        return cls(
            proximal_mu=float(data.get("proximal_mu", 0.0)),
            scaffold=bool(data.get("scaffold", False)),
            privacy=None if privacy is None else DifferentialPrivacy.from_dict(privacy),
            lane=str(data.get("lane", "federated")),
            step_fraction=float(data.get("step_fraction", 1.0)),
        )


@dataclass(frozen=True)
class LocalTraining:
    """One round of local training as the algorithm sees it.

    ``seed`` changes with the organization and the lane but not with the
    round (the sampler and generators carry their state across rounds);
    ``round_seed`` also changes with the round. ``correction`` is SCAFFOLD's
    ``c - c_i`` per floating parameter, to add to each gradient.
    """

    organization: str
    round: int
    seed: int
    round_seed: int
    proximal_mu: float = 0.0
    correction: Arrays | None = None
    step_fraction: float = 1.0

    def steps(self, local_steps: int) -> int:
        """The algorithm's ``local_steps`` scaled by the strategy's fraction."""
        return max(1, round(local_steps * self.step_fraction))


@dataclass
class LocalUpdate:
    """What local training returns: new weights and the state to keep."""

    params: Arrays
    local: bytes = b""
    steps: int = 0
    learning_rate: float | None = None


class Algorithm(ABC):
    """Base of every algorithm; subclass one of the three bases below."""

    seed: ClassVar[int] = 0
    local_steps: ClassVar[int] = 10
    metrics: ClassVar[Mapping[str, MetricFunction]] = {}
    supports_gradient_rules: ClassVar[bool] = False

    @abstractmethod
    def initial_params(self) -> Arrays:
        """The model's starting weights (the same for the same ``seed``)."""

    @abstractmethod
    def fit(
        self, params: Arrays, local: bytes | None, data: Any, training: LocalTraining
    ) -> LocalUpdate:
        """Train from ``params`` on ``data``; ``local`` is last round's state."""

    @abstractmethod
    def predict(self, params: Arrays, data: Any) -> np.ndarray:
        """Class probabilities, one row per sample and one column per class."""

    def labels(self, data: Any) -> np.ndarray:
        """True labels of ``data``; the default reads ``(X, y)``."""
        return np.asarray(data[1])

    def num_samples(self, data: Any) -> int:
        return len(self.labels(data))


# --- PyTorch -----------------------------------------------------------------


class BatchSampler:
    """Seeded mini-batches whose position carries from one round to the next.

    Epoch ``e`` visits the samples in the order of a permutation seeded by
    ``(seed, e)``; the state is just ``(epoch, position)``.
    """

    def __init__(self, num_samples: int, batch_size: int, seed: int) -> None:
        if num_samples < 1:
            raise AlgorithmError("cannot sample batches from an empty data set")
        self.num_samples = num_samples
        self.batch_size = max(1, min(batch_size, num_samples))
        self.seed = seed
        self.epoch = 0
        self.position = 0
        self._order = self._permutation()

    def _permutation(self) -> np.ndarray:
        rng = np.random.default_rng([self.seed, self.epoch])
        return rng.permutation(self.num_samples)

    def next_batch(self) -> np.ndarray:
        batch = self._order[self.position : self.position + self.batch_size]
        self.position += self.batch_size
        if self.position >= self.num_samples:
            self.epoch, self.position = self.epoch + 1, 0
            self._order = self._permutation()
        return batch

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def restore(self, state: Mapping[str, int]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._order = self._permutation()


@contextmanager
def _torch_single_thread() -> Iterator[None]:
    """One thread and the caller's global generator left as it was.

    One thread makes floating-point sums run in the same order on a node and in
    a simulation, so the same seeds give the same weights.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            yield
    finally:
        torch.set_num_threads(threads)


class TorchAlgorithm(Algorithm):
    """A PyTorch model; override :meth:`build_model`, optionally the rest.

    ::

        class Net(TorchAlgorithm):
            seed = 1
            local_steps = 20
            batch_size = 32
            learning_rate = 0.1

            def build_model(self):
                return torch.nn.Sequential(torch.nn.Linear(30, 2))
    """

    batch_size: ClassVar[int] = 32
    learning_rate: ClassVar[float] = 0.05
    supports_gradient_rules: ClassVar[bool] = True

    @abstractmethod
    def build_model(self) -> torch.nn.Module:
        """A fresh model (its weights are replaced by the shared ones)."""

    def build_optimizer(self, parameters: Iterator[Any]) -> torch.optim.Optimizer:
        import torch

        return torch.optim.SGD(parameters, lr=self.learning_rate)

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        import torch

        return torch.nn.functional.cross_entropy(outputs, targets)

    def to_tensors(self, data: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Features and targets from the opener's ``(X, y)``."""
        import torch

        x, y = data
        return (
            torch.as_tensor(np.asarray(x), dtype=torch.float32),
            torch.as_tensor(np.asarray(y), dtype=torch.int64),
        )

    def initial_params(self) -> Arrays:
        import torch

        with _torch_single_thread():
            torch.manual_seed(self.seed)
            return _to_arrays(self.build_model())

    def fit(
        self, params: Arrays, local: bytes | None, data: Any, training: LocalTraining
    ) -> LocalUpdate:
        import torch

        with _torch_single_thread():
            model = self.build_model()
            _load_arrays(model, params)
            optimizer = self.build_optimizer(model.parameters())
            x, y = self.to_tensors(data)
            sampler = BatchSampler(len(y), self.batch_size, training.seed)
            saved = _load_torch_local(local)
            if saved is None:
                torch.manual_seed(training.seed)
            else:
                optimizer.load_state_dict(saved["optimizer"])
                sampler.restore(saved["sampler"])
                torch.set_rng_state(saved["rng"])
            self._run_steps(model, optimizer, sampler, (x, y), training)
            blob = io.BytesIO()
            torch.save(
                {
                    "optimizer": optimizer.state_dict(),
                    "sampler": sampler.state(),
                    "rng": torch.get_rng_state(),
                },
                blob,
            )
            return LocalUpdate(
                params=_to_arrays(model),
                local=blob.getvalue(),
                steps=training.steps(self.local_steps),
                learning_rate=_effective_learning_rate(optimizer),
            )

    def _run_steps(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        sampler: BatchSampler,
        tensors: tuple[torch.Tensor, torch.Tensor],
        training: LocalTraining,
    ) -> None:
        import torch

        x, y = tensors
        named = dict(model.named_parameters())
        anchor = {k: p.detach().clone() for k, p in named.items()}
        correction = {
            k: torch.as_tensor(v) for k, v in (training.correction or {}).items()
        }
        model.train()
        for _ in range(training.steps(self.local_steps)):
            batch = torch.as_tensor(sampler.next_batch())
            optimizer.zero_grad()
            loss = self.loss(model(x[batch]), y[batch])
            if training.proximal_mu > 0:
                # FedProx: mu/2 * ||w - w_global||^2 (Li et al. 2020, eq. 2).
                for k, parameter in named.items():
                    distance = ((parameter - anchor[k]) ** 2).sum()
                    loss = loss + training.proximal_mu / 2 * distance
            loss.backward()  # type: ignore[no-untyped-call,unused-ignore]
            for name, value in correction.items():
                target = named.get(name)  # buffers have no gradient
                if target is not None and target.grad is not None:
                    target.grad.add_(value.to(target.grad.dtype))
            optimizer.step()

    def predict(self, params: Arrays, data: Any) -> np.ndarray:
        import torch

        with _torch_single_thread():
            model = self.build_model()
            _load_arrays(model, params)
            model.eval()
            x, _ = self.to_tensors(data)
            with torch.no_grad():
                return torch.softmax(model(x), dim=1).double().numpy()


def _effective_learning_rate(optimizer: torch.optim.Optimizer) -> float:
    """The step size SCAFFOLD divides by: ``lr``, or ``lr / (1 - momentum)``
    for SGD with momentum (its step size once the momentum has built up)."""
    group = optimizer.param_groups[0]
    momentum = float(group.get("momentum", 0.0) or 0.0)
    return float(group["lr"]) / (1.0 - momentum)


def _to_arrays(model: torch.nn.Module) -> Arrays:
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


def _load_arrays(model: torch.nn.Module, params: Arrays) -> None:
    import torch

    expected = set(model.state_dict())
    if set(params) != expected:
        missing = sorted(expected - set(params)) or sorted(set(params) - expected)
        raise AlgorithmError(
            f"the shared model does not fit this algorithm's model (array "
            f"{missing[0]} differs); was it trained by another algorithm?"
        )
    model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in params.items()})


def _load_torch_local(local: bytes | None) -> dict[str, Any] | None:
    if not local:
        return None
    import torch

    loaded = torch.load(io.BytesIO(local), weights_only=True)
    return dict(loaded)


# --- scikit-learn ------------------------------------------------------------


class SklearnAlgorithm(Algorithm):
    """A linear scikit-learn classifier trained with ``partial_fit``.

    Set ``classes`` and ``num_features`` and override :meth:`build_estimator`
    (``SGDClassifier(loss="log_loss")`` by default). A round makes
    ``local_steps`` passes of ``partial_fit`` over the organization's data,
    starting from the shared ``coef_`` and ``intercept_``; the estimator's step
    counter ``t_`` (its learning-rate schedule) stays on the node.
    """

    classes: ClassVar[Sequence[int]] = (0, 1)
    num_features: ClassVar[int] = 0
    local_steps: ClassVar[int] = 1

    def build_estimator(self) -> Any:
        from sklearn.linear_model import SGDClassifier

        return SGDClassifier(loss="log_loss", alpha=1e-4)

    def initial_params(self) -> Arrays:
        if self.num_features < 1:
            raise AlgorithmError(f"{type(self).__name__}.num_features must be set")
        rows = 1 if len(self.classes) == 2 else len(self.classes)
        return {
            "coef": np.zeros((rows, self.num_features)),
            "intercept": np.zeros(rows),
        }

    def _estimator(self, params: Arrays) -> Any:
        estimator = self.build_estimator()
        estimator.coef_ = np.array(params["coef"], dtype=np.float64)
        estimator.intercept_ = np.array(params["intercept"], dtype=np.float64)
        estimator.classes_ = np.asarray(self.classes)
        return estimator

    def fit(
        self, params: Arrays, local: bytes | None, data: Any, training: LocalTraining
    ) -> LocalUpdate:
        estimator = self._estimator(params)
        estimator.set_params(random_state=training.round_seed)
        if local:
            estimator.t_ = float(json.loads(local)["t"])
        x = np.asarray(data[0], dtype=np.float64)
        y = np.asarray(data[1])
        for _ in range(training.steps(self.local_steps)):
            estimator.partial_fit(x, y, classes=np.asarray(self.classes))
        return LocalUpdate(
            params={
                "coef": estimator.coef_.copy(),
                "intercept": estimator.intercept_.copy(),
            },
            local=json.dumps({"t": float(estimator.t_)}).encode(),
            steps=training.steps(self.local_steps),
        )

    def predict(self, params: Arrays, data: Any) -> np.ndarray:
        estimator = self._estimator(params)
        x = np.asarray(data[0], dtype=np.float64)
        if hasattr(estimator, "predict_proba"):
            try:
                return np.asarray(estimator.predict_proba(x), dtype=np.float64)
            except AttributeError:
                pass  # losses without probabilities (hinge): softmax of scores
        scores = np.asarray(estimator.decision_function(x), dtype=np.float64)
        if scores.ndim == 1:
            scores = np.stack([-scores, scores], axis=1)
        scores = scores - scores.max(axis=1, keepdims=True)
        exp = np.exp(scores)
        return np.asarray(exp / exp.sum(axis=1, keepdims=True))


# --- NumPy -------------------------------------------------------------------


class NumpyAlgorithm(Algorithm):
    """Any model held in NumPy arrays.

    Override :meth:`initial_params`, :meth:`local_update` and :meth:`predict`;
    the random generator passed to :meth:`local_update` carries its state
    across rounds on the node.
    """

    @abstractmethod
    def local_update(
        self, params: Arrays, data: Any, rng: np.random.Generator
    ) -> Arrays:
        """``local_steps`` steps of training from ``params``."""

    def fit(
        self, params: Arrays, local: bytes | None, data: Any, training: LocalTraining
    ) -> LocalUpdate:
        rng = np.random.default_rng(training.seed)
        if local:
            rng.bit_generator.state = json.loads(local)
        new = self.local_update({k: v.copy() for k, v in params.items()}, data, rng)
        return LocalUpdate(
            params=new,
            local=json.dumps(rng.bit_generator.state).encode(),
            steps=self.local_steps,
        )


# --- task entrypoints --------------------------------------------------------


def run_train(ctx: TaskContext, algorithm: Algorithm) -> None:
    """A train task: shared model and local state in, update and local state out."""
    rules = TrainRules.from_metadata(ctx.metadata)
    if (
        rules.proximal_mu > 0 or rules.scaffold
    ) and not algorithm.supports_gradient_rules:
        raise AlgorithmError(
            f"{type(algorithm).__name__} cannot apply FedProx or SCAFFOLD "
            "(they change gradients); use a TorchAlgorithm"
        )
    data = ctx.load_data()
    shared = (
        ModelState.load(ctx.input_path("model"))
        if ctx.has_input("model")
        else ModelState(algorithm.initial_params())
    )
    local = ModelState.load(ctx.input_path("local")) if ctx.has_input("local") else None
    shared_out, local_out = train_round(
        algorithm, shared, local, data, rules, organization=ctx.worker, round=ctx.round
    )
    shared_out.save(ctx.output_path("shared"))
    local_out.save(ctx.output_path("local"))


def train_round(
    algorithm: Algorithm,
    shared: ModelState,
    local: ModelState | None,
    data: Any,
    rules: TrainRules,
    *,
    organization: str,
    round: int,
) -> tuple[ModelState, ModelState]:
    """One organization's round: fit, then SCAFFOLD and privacy bookkeeping."""
    seed = derive_seed(algorithm.seed, organization, rules.lane)
    client_control = (local.groups.get(_CLIENT_CONTROL) if local else None) or {}
    correction = (
        _scaffold_correction(shared, client_control) if rules.scaffold else None
    )
    training = LocalTraining(
        organization=organization,
        round=round,
        seed=seed,
        round_seed=derive_seed(seed, round),
        proximal_mu=rules.proximal_mu,
        correction=correction,
        step_fraction=rules.step_fraction,
    )
    blob = local.params.get(_LOCAL_BLOB) if local else None
    update = algorithm.fit(
        shared.params, None if blob is None else blob.tobytes(), data, training
    )
    params = update.params
    if rules.privacy is not None:
        params = _privatize(shared.params, params, rules.privacy, training.round_seed)

    meta = _next_meta(
        shared.meta, organization, rules.privacy, algorithm.num_samples(data)
    )
    shared_out = ModelState(params, {}, meta)
    local_out = ModelState({_LOCAL_BLOB: np.frombuffer(update.local, dtype=np.uint8)})
    if rules.scaffold:
        new_control, delta = _scaffold_controls(shared, params, client_control, update)
        shared_out.groups[CONTROL_DELTA] = delta
        local_out.groups[_CLIENT_CONTROL] = new_control
    return shared_out, local_out


def _floating(arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: v for k, v in arrays.items() if v.dtype.kind == "f"}


def _scaffold_correction(shared: ModelState, client_control: Arrays) -> Arrays:
    server = shared.groups.get(CONTROL, {})
    return {
        name: server.get(name, np.zeros_like(value))
        - client_control.get(name, np.zeros_like(value))
        for name, value in _floating(shared.params).items()
    }


def _scaffold_controls(
    shared: ModelState, params: Arrays, client_control: Arrays, update: LocalUpdate
) -> tuple[Arrays, Arrays]:
    """SCAFFOLD option II (Karimireddy et al. 2020, Alg. 1 line 12):
    ``c_i+ = c_i - c + (x - y_i) / (K * lr)``; returns ``c_i+`` and ``c_i+ - c_i``."""
    if not update.steps or not update.learning_rate:
        raise AlgorithmError("SCAFFOLD needs the number of steps and the learning rate")
    scale = 1.0 / (update.steps * update.learning_rate)
    server = shared.groups.get(CONTROL, {})
    new_control: Arrays = {}
    delta: Arrays = {}
    for name, x in _floating(shared.params).items():
        c_i = client_control.get(name, np.zeros_like(x))
        c = server.get(name, np.zeros_like(x))
        new_control[name] = (c_i - c + (x - params[name]) * scale).astype(x.dtype)
        delta[name] = new_control[name] - c_i
    return new_control, delta


def _privatize(
    before: Arrays, after: Arrays, privacy: DifferentialPrivacy, seed: int
) -> Arrays:
    update = {k: v - before[k] if v.dtype.kind == "f" else v for k, v in after.items()}
    noisy = clip_and_noise(update, privacy, np.random.default_rng([seed, 7]))
    return {k: before[k] + v if v.dtype.kind == "f" else v for k, v in noisy.items()}


def _next_meta(
    meta: Mapping[str, Any],
    organization: str,
    privacy: DifferentialPrivacy | None,
    num_samples: int,
) -> dict[str, Any]:
    result: dict[str, Any] = {"num_samples": int(num_samples)}
    steps = dict(meta.get("dp_steps", {}))
    if privacy is not None:
        steps[organization] = int(steps.get(organization, 0)) + 1
        result["privacy"] = privacy.to_dict()
    elif "privacy" in meta:
        result["privacy"] = meta["privacy"]
    if steps:
        result["dp_steps"] = steps
    return result


def merge_meta(
    updates: Sequence[ModelState], previous: ModelState | None
) -> dict[str, Any]:
    """Metadata of an aggregate: total samples, per-organization privacy steps."""
    steps: dict[str, int] = dict(
        (previous.meta if previous else {}).get("dp_steps", {})
    )
    meta: dict[str, Any] = {"num_samples": sum(u.num_samples for u in updates)}
    for update in updates:
        for organization, count in update.meta.get("dp_steps", {}).items():
            steps[organization] = max(steps.get(organization, 0), int(count))
        if "privacy" in update.meta:
            meta["privacy"] = update.meta["privacy"]
    if steps:
        meta["dp_steps"] = steps
    return meta


def run_aggregate(ctx: TaskContext, algorithm: Algorithm) -> None:
    """An aggregate task; with no input models it writes the initial model."""
    from airfed.sdk.strategies import strategy_from_config

    models = [ModelState.load(path) for path in ctx.input_paths("models")]
    previous = (
        ModelState.load(ctx.input_path("previous"))
        if ctx.has_input("previous")
        else None
    )
    server = (
        ModelState.load(ctx.input_path("state")) if ctx.has_input("state") else None
    )
    if not models:
        model, server = ModelState(algorithm.initial_params()), None
    else:
        strategy = strategy_from_config(ctx.metadata.get(STRATEGY_KEY, ""))
        model, server = strategy.aggregate(models, previous, server)
        model.meta = merge_meta(models, previous)
    model.save(ctx.output_path("model"))
    (server or ModelState({})).save(ctx.output_path("state"))


def run_evaluate(ctx: TaskContext, algorithm: Algorithm) -> None:
    """A test task: record each metric of the model on the node's test data."""
    names = tuple(json.loads(ctx.metadata.get(METRICS_KEY, '["accuracy"]')))
    model = ModelState.load(ctx.input_path("model"))
    data = ctx.load_data()
    wanted = tuple(n for n in names if n != "epsilon")
    values = compute_metrics(
        wanted,
        algorithm.labels(data),
        algorithm.predict(model.params, data),
        algorithm.metrics,
    )
    if "epsilon" in names:
        spent = model_epsilon(model)
        if spent is None:
            raise AlgorithmError(
                "this evaluation records epsilon, but the model was trained "
                "without differential privacy"
            )
        values["epsilon"] = spent
    for name, value in values.items():
        ctx.record_performance(name, value)


def model_epsilon(model: ModelState) -> float | None:
    """The privacy spent by the organization that spent most on this model."""
    privacy = model.meta.get("privacy")
    steps = model.meta.get("dp_steps") or {}
    if privacy is None or not steps:
        return None
    setting = DifferentialPrivacy.from_dict(privacy)
    if setting.noise_multiplier <= 0:
        return None
    return max(
        float(epsilon(setting.noise_multiplier, int(count), setting.delta))
        for count in steps.values()
    )


# --- packaging ---------------------------------------------------------------


@dataclass(frozen=True)
class AlgorithmPackage:
    """A function folder, the metadata of its three functions (contract A) and
    the metrics its evaluate function records."""

    folder: Path
    functions: dict[str, dict[str, Any]] = field(default_factory=dict)
    metrics: tuple[str, ...] = ()

    @property
    def train(self) -> dict[str, Any]:
        return self.functions["train"]

    @property
    def aggregate(self) -> dict[str, Any]:
        return self.functions["aggregate"]

    @property
    def evaluate(self) -> dict[str, Any]:
        return self.functions["evaluate"]


_ENTRY_SOURCE = '''"""airfed entrypoints for {qualname}."""

from airfed.sdk.algorithms import run_aggregate, run_evaluate, run_train
from {module} import {qualname} as _Algorithm


def train(ctx):
    run_train(ctx, _Algorithm())


def aggregate(ctx):
    run_aggregate(ctx, _Algorithm())


def evaluate(ctx):
    run_evaluate(ctx, _Algorithm())
'''

DEFAULT_METRICS = ("accuracy", "roc_auc", "loss")


def package_algorithm(
    algorithm: type[Algorithm],
    folder: Path,
    *,
    name: str | None = None,
    permissions: Permissions | None = None,
    metrics: Sequence[str] = DEFAULT_METRICS,
    differential_privacy: bool = False,
    extra_files: Sequence[Path] = (),
) -> AlgorithmPackage:
    """Write a function folder for ``algorithm`` and describe its functions.

    The folder holds the module that defines the class (copied; a class defined
    in a script is copied as ``algorithm_main.py``, whose ``__main__`` block
    must be guarded), ``extra_files`` and an entry module whose ``train``,
    ``aggregate`` and ``evaluate`` run the class. The evaluate function records
    ``metrics`` (built-in names, see :mod:`airfed.sdk.evaluation`), the
    algorithm's own ``metrics`` and, with ``differential_privacy``, ``epsilon``.
    Functions are permitted to every organization by default (``permissions``
    changes that).
    """
    source = inspect.getsourcefile(algorithm)
    if source is None or "." in algorithm.__qualname__:
        raise AlgorithmError(
            f"{algorithm.__qualname__} must be a class defined at the top level "
            "of a module file"
        )
    module = algorithm.__module__.rsplit(".", 1)[-1]
    if module == "__main__":
        module = "algorithm_main"
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, folder / f"{module}.py")
    for extra in extra_files:
        shutil.copyfile(extra, folder / Path(extra).name)
    code = Path(source).read_bytes()
    digest = hashlib.sha256(code + algorithm.__qualname__.encode()).hexdigest()
    entry = f"airfed_entry_{digest[:12]}"
    (folder / f"{entry}.py").write_text(
        _ENTRY_SOURCE.format(module=module, qualname=algorithm.__qualname__)
    )
    label = name or algorithm.__name__
    allowed = permissions or Permissions(process=Permission(public=True))
    recorded = tuple(dict.fromkeys([*metrics, *algorithm.metrics]))
    if differential_privacy:
        recorded = (*recorded, "epsilon")
    return AlgorithmPackage(
        folder, _function_metadata(entry, label, allowed, recorded), recorded
    )


def _function_metadata(
    entry: str, label: str, permissions: Permissions, metrics: Sequence[str]
) -> dict[str, dict[str, Any]]:
    data = [
        {
            "identifier": "dataset",
            "kind": "dataset",
            "multiple": False,
            "optional": False,
        },
        {
            "identifier": "datasamples",
            "kind": "datasamples",
            "multiple": True,
            "optional": False,
        },
    ]

    def model(identifier: str, *, multiple: bool = False) -> dict[str, Any]:
        return {
            "identifier": identifier,
            "kind": "model",
            "multiple": multiple,
            "optional": True,
        }

    shared = {"permissions": permissions.model_dump(mode="json")}
    return {
        "train": {
            "name": f"{label} train",
            "description": f"Local training of {label}.",
            "entrypoint": f"{entry}:train",
            "inputs": [*data, model("model"), model("local")],
            "outputs": [
                {"identifier": "shared", "kind": "model"},
                {"identifier": "local", "kind": "model"},
            ],
            **shared,
        },
        "aggregate": {
            "name": f"{label} aggregate",
            "description": f"Aggregation of {label} (initial model without inputs).",
            "entrypoint": f"{entry}:aggregate",
            "inputs": [
                model("models", multiple=True),
                model("previous"),
                model("state"),
            ],
            "outputs": [
                {"identifier": "model", "kind": "model"},
                {"identifier": "state", "kind": "model"},
            ],
            **shared,
        },
        "evaluate": {
            "name": f"{label} evaluate",
            "description": f"Metrics of {label} on test data.",
            "entrypoint": f"{entry}:evaluate",
            "inputs": [*data, model("model")],
            "outputs": [{"identifier": m, "kind": "performance"} for m in metrics],
            **shared,
        },
    }


def load_algorithm(path: str) -> type[Algorithm]:
    """The algorithm class named ``module:Class`` (for the CLI)."""
    module_name, _, class_name = path.partition(":")
    try:
        found = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise AlgorithmError(f"cannot import algorithm {path!r}: {exc}") from exc
    if not (isinstance(found, type) and issubclass(found, Algorithm)):
        raise AlgorithmError(f"{path} is not an airfed Algorithm subclass")
    return found
