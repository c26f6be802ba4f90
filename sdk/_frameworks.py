"""The three algorithm bases a user subclasses: PyTorch, scikit-learn, NumPy.

Public through :mod:`airfed.sdk.algorithms`. PyTorch and scikit-learn are
imported only when an algorithm of theirs runs.
"""

from __future__ import annotations

import io
import json
from abc import abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from airfed.sdk._algorithm_base import (
    Algorithm,
    AlgorithmError,
    LocalTraining,
    LocalUpdate,
)
from airfed.sdk.model_state import Arrays

if TYPE_CHECKING:
    import torch

__all__ = ["BatchSampler", "NumpyAlgorithm", "SklearnAlgorithm", "TorchAlgorithm"]


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
