"""The quickstart's models of the Wisconsin breast cancer set.

This file is copied into the functions that the quickstart registers and is
imported by every task, so it stays light: NumPy only at the top, PyTorch
only inside the model that needs it. A task that imports scikit-learn or
PyTorch spends more time importing than training on 140 samples.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from airfed.sdk.algorithms import NumpyAlgorithm, TorchAlgorithm
from airfed.sdk.model_state import Arrays

if TYPE_CHECKING:
    import torch

__all__ = ["BreastCancerLogistic", "BreastCancerTorchLogistic"]

_FEATURES = 30
_CLASSES = 2


def _probabilities(params: Arrays, features: np.ndarray) -> np.ndarray:
    scores = features @ params["weight"] + params["bias"]
    scores = scores - scores.max(axis=1, keepdims=True)
    exp = np.exp(scores)
    return np.asarray(exp / exp.sum(axis=1, keepdims=True))


class BreastCancerLogistic(NumpyAlgorithm):
    """Logistic regression on the 30 standardized features, trained by
    mini-batch gradient descent on the cross-entropy."""

    seed = 7
    local_steps = 20
    batch_size = 16
    learning_rate = 0.1

    def initial_params(self) -> Arrays:
        return {
            "weight": np.zeros((_FEATURES, _CLASSES)),
            "bias": np.zeros(_CLASSES),
        }

    def local_update(
        self, params: Arrays, data: Any, rng: np.random.Generator
    ) -> Arrays:
        features = np.asarray(data[0], dtype=np.float64)
        labels = np.asarray(data[1], dtype=np.int64)
        size = min(self.batch_size, len(labels))
        for _ in range(self.local_steps):
            batch = rng.choice(len(labels), size=size, replace=False)
            errors = _probabilities(params, features[batch])
            errors[np.arange(size), labels[batch]] -= 1.0
            params["weight"] -= self.learning_rate * features[batch].T @ errors / size
            params["bias"] -= self.learning_rate * errors.mean(axis=0)
        return params

    def predict(self, params: Arrays, data: Any) -> np.ndarray:
        return _probabilities(params, np.asarray(data[0], dtype=np.float64))


class BreastCancerTorchLogistic(TorchAlgorithm):
    """The same model in PyTorch, for strategies that change local gradients
    (FedProx, SCAFFOLD)."""

    seed = 7
    local_steps = 20
    batch_size = 16
    learning_rate = 0.1

    def build_model(self) -> torch.nn.Module:
        import torch

        return torch.nn.Linear(_FEATURES, _CLASSES)
