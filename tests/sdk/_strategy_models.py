"""Small algorithms that the strategy, algorithm and simulation tests train."""

from __future__ import annotations

from typing import Any

import torch

from airfed.sdk.algorithms import SklearnAlgorithm, TorchAlgorithm
from airfed.sdk.model_state import Arrays


class TinyLogistic(TorchAlgorithm):
    """Logistic regression on the breast cancer set's 30 features."""

    seed = 5
    local_steps = 4
    batch_size = 16
    learning_rate = 0.05

    def build_model(self) -> torch.nn.Module:
        return torch.nn.Linear(30, 2)


class TinySgd(SklearnAlgorithm):
    """scikit-learn's SGDClassifier on the breast cancer set."""

    classes = (0, 1)
    num_features = 30


class Failing(TinyLogistic):
    """Fails in its second round of training."""

    def fit(self, params: Arrays, local: bytes | None, data: Any, training: Any) -> Any:
        if training.round >= 2:
            raise RuntimeError("the model diverged")
        return super().fit(params, local, data, training)
