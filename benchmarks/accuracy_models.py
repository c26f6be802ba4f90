"""Models of the accuracy benchmark: small PyTorch algorithms for airfed."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from airfed.sdk.algorithms import TorchAlgorithm

__all__ = ["BreastCancerLogistic", "BreastCancerMLP", "DigitsCNN"]


class BreastCancerLogistic(TorchAlgorithm):
    """Logistic regression on the 30 standardized features."""

    seed = 11
    local_steps = 10
    batch_size = 16
    learning_rate = 0.05

    def build_model(self) -> torch.nn.Module:
        return torch.nn.Linear(30, 2)


class BreastCancerMLP(TorchAlgorithm):
    """One hidden layer of 32 units."""

    seed = 12
    local_steps = 10
    batch_size = 16
    learning_rate = 0.05

    def build_model(self) -> torch.nn.Module:
        return torch.nn.Sequential(
            torch.nn.Linear(30, 32), torch.nn.ReLU(), torch.nn.Linear(32, 2)
        )


class DigitsCNN(TorchAlgorithm):
    """Two 3x3 convolutions with pooling, then a linear layer, on 8x8 digits."""

    seed = 13
    local_steps = 10
    batch_size = 32
    learning_rate = 0.05

    def build_model(self) -> torch.nn.Module:
        return torch.nn.Sequential(
            torch.nn.Conv2d(1, 8, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(8, 16, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.MaxPool2d(2),
            torch.nn.Flatten(),
            torch.nn.Linear(64, 10),
        )

    def build_optimizer(self, parameters: Any) -> torch.optim.Optimizer:
        # Momentum is local state: it stays on the node from round to round.
        return torch.optim.SGD(parameters, lr=self.learning_rate, momentum=0.9)

    def to_tensors(self, data: Any) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = data
        images = np.asarray(x, dtype=np.float32).reshape(-1, 1, 8, 8)
        return torch.from_numpy(images), torch.as_tensor(
            np.asarray(y), dtype=torch.int64
        )
