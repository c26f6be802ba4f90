"""A NumPy algorithm for the tests (its module imports no torch)."""

from __future__ import annotations

from typing import Any

import numpy as np

from airfed.sdk.algorithms import NumpyAlgorithm
from airfed.sdk.model_state import Arrays


class NumpySoftmax(NumpyAlgorithm):
    """Softmax regression by mini-batch gradient descent, in NumPy."""

    seed = 9
    local_steps = 5
    classes = 2
    features = 30

    def initial_params(self) -> Arrays:
        return {
            "w": np.zeros((self.features, self.classes)),
            "b": np.zeros(self.classes),
        }

    def local_update(
        self, params: Arrays, data: Any, rng: np.random.Generator
    ) -> Arrays:
        x, y = np.asarray(data[0], dtype=np.float64), np.asarray(data[1])
        for _ in range(self.local_steps):
            batch = rng.choice(len(y), size=min(16, len(y)), replace=False)
            probabilities = self._softmax(x[batch] @ params["w"] + params["b"])
            probabilities[np.arange(len(batch)), y[batch]] -= 1
            params["w"] -= 0.1 * x[batch].T @ probabilities / len(batch)
            params["b"] -= 0.1 * probabilities.mean(axis=0)
        return params

    def predict(self, params: Arrays, data: Any) -> np.ndarray:
        x = np.asarray(data[0], dtype=np.float64)
        return self._softmax(x @ params["w"] + params["b"])

    @staticmethod
    def _softmax(scores: np.ndarray) -> np.ndarray:
        exp = np.exp(scores - scores.max(axis=1, keepdims=True))
        return np.asarray(exp / exp.sum(axis=1, keepdims=True))
