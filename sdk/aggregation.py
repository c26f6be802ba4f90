"""Aggregation rules on named arrays, the arithmetic under every strategy.

Each rule takes the updates of one round as a sequence of ``{name: array}``
mappings with the same names and shapes and returns one such mapping.
Floating arrays are combined; integer arrays (counters such as a batch-norm
layer's ``num_batches_tracked``) are taken from the first update.

- :func:`weighted_mean`: McMahan et al., "Communication-Efficient Learning of
  Deep Networks from Decentralized Data", AISTATS 2017.
- :func:`coordinate_median`, :func:`trimmed_mean`: Yin et al.,
  "Byzantine-Robust Distributed Learning: Towards Optimal Statistical Rates",
  ICML 2018.
- :func:`krum_select`: Blanchard et al., "Machine Learning with Adversaries:
  Byzantine Tolerant Gradient Descent", NeurIPS 2017.
- :func:`server_optimizer_step`: Reddi et al., "Adaptive Federated
  Optimization", ICLR 2021 (FedAdagrad, FedAdam, FedYogi).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Literal

import numpy as np

from airfed.sdk.errors import AirfedError

__all__ = [
    "AggregationError",
    "coordinate_median",
    "krum_select",
    "server_optimizer_step",
    "trimmed_mean",
    "weighted_mean",
]

ArraysIn = Mapping[str, np.ndarray]
Arrays = dict[str, np.ndarray]
ServerOptimizer = Literal["adagrad", "adam", "yogi"]


class AggregationError(AirfedError):  # type: ignore[misc,unused-ignore]
    """Updates cannot be combined (none given, names or shapes differ)."""


def _check(updates: Sequence[ArraysIn]) -> None:
    if not updates:
        raise AggregationError("no updates to aggregate")
    names = list(updates[0])
    for index, update in enumerate(updates[1:], start=1):
        if list(update) != names:
            raise AggregationError(f"update {index} names other arrays than update 0")
        for name in names:
            if update[name].shape != updates[0][name].shape:
                raise AggregationError(
                    f"array {name} of update {index} has shape {update[name].shape}, "
                    f"update 0 has {updates[0][name].shape}"
                )


def _combine(
    updates: Sequence[ArraysIn], rule: Callable[[np.ndarray], np.ndarray]
) -> Arrays:
    """Apply ``rule`` to each stacked floating array (axis 0 = updates)."""
    _check(updates)
    result: Arrays = {}
    for name, first in updates[0].items():
        if first.dtype.kind != "f":
            result[name] = first.copy()
            continue
        stacked = np.stack([np.asarray(u[name], dtype=np.float64) for u in updates])
        result[name] = rule(stacked).astype(first.dtype)
    return result


def weighted_mean(
    updates: Sequence[ArraysIn], weights: Sequence[float] | None = None
) -> Arrays:
    """The mean of the updates weighted by ``weights`` (default: equal)."""
    _check(updates)
    if weights is None:
        weights = [1.0] * len(updates)
    if len(weights) != len(updates):
        raise AggregationError(f"{len(weights)} weights for {len(updates)} updates")
    total = float(sum(weights))
    if total <= 0 or min(weights) < 0:
        raise AggregationError("weights must be non-negative with a positive sum")
    share = np.asarray(weights, dtype=np.float64) / total

    def mean(stacked: np.ndarray) -> np.ndarray:
        return np.tensordot(share, stacked, axes=1)

    return _combine(updates, mean)


def coordinate_median(updates: Sequence[ArraysIn]) -> Arrays:
    """The coordinate-wise median of the updates."""
    return _combine(updates, lambda stacked: np.median(stacked, axis=0))


def trimmed_mean(updates: Sequence[ArraysIn], beta: float) -> Arrays:
    """Per coordinate, drop the ``floor(beta * n)`` largest and smallest values
    and average the rest."""
    if not 0 <= beta < 0.5:
        raise AggregationError(f"trim fraction beta must be in [0, 0.5), not {beta}")
    cut = math.floor(beta * len(updates))

    def trim(stacked: np.ndarray) -> np.ndarray:
        ordered = np.sort(stacked, axis=0)
        kept: np.ndarray = ordered[cut : len(updates) - cut].mean(axis=0)
        return kept

    return _combine(updates, trim)


def _flatten(update: ArraysIn) -> np.ndarray:
    parts = [
        np.ravel(a).astype(np.float64) for a in update.values() if a.dtype.kind == "f"
    ]
    return np.concatenate(parts) if parts else np.zeros(0)


def krum_select(
    updates: Sequence[ArraysIn], byzantine: int, selected: int = 1
) -> list[int]:
    """Indices of the ``selected`` updates with the lowest Krum score.

    The score of an update is the sum of squared distances to its
    ``n - byzantine - 2`` nearest other updates; Krum needs
    ``n >= 2 * byzantine + 3``. Ties go to the lower index.
    """
    _check(updates)
    n = len(updates)
    if n < 2 * byzantine + 3 and n > 1:
        raise AggregationError(
            f"Krum with {byzantine} byzantine organizations needs at least "
            f"{2 * byzantine + 3} updates, got {n}"
        )
    if not 1 <= selected <= n:
        raise AggregationError(f"cannot select {selected} of {n} updates")
    flat = np.stack([_flatten(u) for u in updates])
    distances = ((flat[:, None, :] - flat[None, :, :]) ** 2).sum(axis=2)
    neighbours = max(n - byzantine - 2, 0)
    scores = [
        float(np.sort(np.delete(distances[i], i))[:neighbours].sum()) for i in range(n)
    ]
    return sorted(range(n), key=lambda i: (scores[i], i))[:selected]


def server_optimizer_step(
    kind: ServerOptimizer,
    current: ArraysIn,
    average: ArraysIn,
    moments: tuple[ArraysIn, ArraysIn] | None,
    *,
    learning_rate: float,
    beta1: float = 0.9,
    beta2: float = 0.99,
    tau: float = 1e-3,
) -> tuple[Arrays, tuple[Arrays, Arrays]]:
    """One server step of FedAdagrad, FedAdam or FedYogi (Reddi et al., Alg. 2).

    The pseudo-gradient is ``delta = average - current``. With ``m`` and ``v``
    the first and second moments (``m = 0``, ``v = tau**2`` at the start)::

        m = beta1 * m + (1 - beta1) * delta
        adagrad:  v = v + delta**2
        adam:     v = beta2 * v + (1 - beta2) * delta**2
        yogi:     v = v - (1 - beta2) * delta**2 * sign(v - delta**2)
        x = x + learning_rate * m / (sqrt(v) + tau)

    Returns the new model and the new moments.
    """
    _check([current, average])
    first: Arrays = {}
    second: Arrays = {}
    model: Arrays = {}
    for name, x in current.items():
        if x.dtype.kind != "f":
            model[name] = np.asarray(average[name]).copy()
            continue
        delta = np.asarray(average[name], np.float64) - np.asarray(x, np.float64)
        m = np.zeros_like(delta) if moments is None else moments[0][name]
        v = np.full_like(delta, tau**2) if moments is None else moments[1][name]
        m = beta1 * m + (1 - beta1) * delta
        squared = delta**2
        if kind == "adagrad":
            v = v + squared
        elif kind == "adam":
            v = beta2 * v + (1 - beta2) * squared
        elif kind == "yogi":
            v = v - (1 - beta2) * squared * np.sign(v - squared)
        else:
            raise AggregationError(f"unknown server optimizer {kind!r}")
        step = learning_rate * m / (np.sqrt(v) + tau)
        model[name] = (np.asarray(x, np.float64) + step).astype(x.dtype)
        first[name], second[name] = m, v
    return model, (first, second)
