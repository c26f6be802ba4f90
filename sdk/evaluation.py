"""Evaluation: when test tasks run, and the metrics they record.

An :class:`Evaluation` says at which rounds each organization tests the
current model on its own held-out test data: every ``every`` rounds, at the
chosen ``rounds``, and after the last round (``final``). Each metric value
becomes a performance of the plan, by round, node (the test task's worker)
and metric (the performance's identifier); the test task's metadata says
which model was tested (``federated`` or ``local:<organization>``). A
local-only model is tested on every organization's test data (the same data
the federated model is tested on), or only on its own organization's with
``local_models_tested_on="own"``.

Built-in metrics take the true labels and the predicted class probabilities
(one column per class):

- ``accuracy``: share of samples whose most probable class is the true one;
- ``roc_auc``: area under the ROC curve; with more than two classes, the mean
  over the classes that have both positive and negative samples (one against
  the rest); 0.5 (chance) when the test data holds a single class, where the
  area is undefined;
- ``loss``: mean cross-entropy (negative log-likelihood of the true class);
- ``num_samples``: the size of the test data, to weight means across nodes.

A user metric is any ``f(labels, probabilities) -> float`` that an algorithm
lists in its ``metrics`` mapping. The evaluate function declares its metrics
when it is packaged (:func:`airfed.sdk.algorithms.package_algorithm`) and
records every one of them; ``epsilon``, the privacy spent, is one of them when
the algorithm is packaged for differential privacy (:mod:`airfed.sdk.privacy`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np

from airfed.sdk.errors import AirfedError

__all__ = [
    "BUILTIN_METRICS",
    "Evaluation",
    "EvaluationError",
    "MetricFunction",
    "accuracy",
    "compute_metrics",
    "log_loss",
    "roc_auc",
]

MetricFunction = Callable[[np.ndarray, np.ndarray], float | None]


class EvaluationError(AirfedError):  # type: ignore[misc,unused-ignore]
    """An evaluation setting or a metric is wrong."""


@dataclass(frozen=True)
class Evaluation:
    """Test every ``every`` rounds, at ``rounds``, and after the last round."""

    every: int | None = 1
    rounds: tuple[int, ...] = ()
    final: bool = True
    local_models_tested_on: Literal["all", "own"] = "all"

    def __post_init__(self) -> None:
        if self.every is not None and self.every < 1:
            raise EvaluationError(f"every must be 1 or more, not {self.every}")

    def is_due(self, round: int, total_rounds: int) -> bool:
        """Whether the model of ``round`` is tested."""
        if self.final and round == total_rounds:
            return True
        if self.every is not None and round % self.every == 0:
            return True
        return round in self.rounds


def accuracy(labels: np.ndarray, probabilities: np.ndarray) -> float:
    return float(np.mean(np.argmax(probabilities, axis=1) == labels))


def log_loss(labels: np.ndarray, probabilities: np.ndarray) -> float:
    picked = probabilities[np.arange(len(labels)), labels]
    return float(-np.mean(np.log(np.clip(picked, 1e-12, 1.0))))


def _binary_auc(positive: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve by the rank-sum (Mann-Whitney U) statistic,
    ties counted half, as ``sklearn.metrics.roc_auc_score`` computes it."""
    from scipy.stats import rankdata

    ranks = rankdata(scores)
    count = int(positive.sum())
    negatives = len(positive) - count
    u = float(ranks[positive].sum()) - count * (count + 1) / 2
    return u / (count * negatives)


def roc_auc(labels: np.ndarray, probabilities: np.ndarray) -> float:
    if len(np.unique(labels)) < 2:
        return 0.5
    if probabilities.shape[1] == 2:
        return _binary_auc(labels == 1, probabilities[:, 1])
    scores = [
        _binary_auc(labels == k, probabilities[:, k])
        for k in range(probabilities.shape[1])
        if 0 < int(np.sum(labels == k)) < len(labels)
    ]
    return float(np.mean(scores))


def _num_samples(labels: np.ndarray, probabilities: np.ndarray) -> float:
    return float(len(labels))


BUILTIN_METRICS: Mapping[str, MetricFunction] = {
    "accuracy": accuracy,
    "roc_auc": roc_auc,
    "loss": log_loss,
    "num_samples": _num_samples,
}


def compute_metrics(
    names: tuple[str, ...],
    labels: np.ndarray,
    probabilities: np.ndarray,
    extra: Mapping[str, MetricFunction] | None = None,
) -> dict[str, float]:
    """The named metrics; a metric that is undefined on this data is left out."""
    available = {**BUILTIN_METRICS, **(extra or {})}
    labels = np.asarray(labels, dtype=np.int64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.ndim != 2 or len(probabilities) != len(labels):
        raise EvaluationError(
            f"predictions have shape {probabilities.shape}; expected "
            f"({len(labels)}, number of classes)"
        )
    values: dict[str, float] = {}
    for name in names:
        function = available.get(name)
        if function is None:
            raise EvaluationError(
                f"unknown metric {name!r}; known: {', '.join(sorted(available))}"
            )
        value = function(labels, probabilities)
        if value is not None and math.isfinite(value):
            values[name] = float(value)
    return values
