"""The quickstart's models of the Wisconsin breast cancer set.

This file is copied into the function that the quickstart registers, and
imported by every task: it imports nothing heavy at the top (PyTorch only
inside the model that needs it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from airfed.sdk.algorithms import SklearnAlgorithm, TorchAlgorithm

if TYPE_CHECKING:
    import torch

__all__ = ["BreastCancerLinear", "BreastCancerTorchLinear"]


class BreastCancerLinear(SklearnAlgorithm):
    """Logistic regression trained by SGD on the 30 standardized features."""

    seed = 7
    classes = (0, 1)
    num_features = 30
    local_steps = 2


class BreastCancerTorchLinear(TorchAlgorithm):
    """The same logistic model in PyTorch, for strategies that change
    gradients (FedProx, SCAFFOLD)."""

    seed = 7
    local_steps = 10
    batch_size = 16
    learning_rate = 0.05

    def build_model(self) -> torch.nn.Module:
        import torch

        return torch.nn.Linear(30, 2)
