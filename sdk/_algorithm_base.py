"""What every algorithm shares: its base class, the strategy's training rules,
one round of local training as the algorithm sees it, and what it returns.

Public through :mod:`airfed.sdk.algorithms`.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from airfed.sdk.errors import AirfedError
from airfed.sdk.evaluation import MetricFunction
from airfed.sdk.model_state import Arrays
from airfed.sdk.privacy import DifferentialPrivacy

__all__ = [
    "CLIENT_CONTROL",
    "CONTROL",
    "CONTROL_DELTA",
    "LOCAL_BLOB",
    "METRICS_KEY",
    "STRATEGY_KEY",
    "TRAIN_RULES_KEY",
    "Algorithm",
    "AlgorithmError",
    "LocalTraining",
    "LocalUpdate",
    "TrainRules",
    "derive_seed",
]

TRAIN_RULES_KEY = "airfed.train"
STRATEGY_KEY = "airfed.strategy"
METRICS_KEY = "airfed.metrics"
CONTROL = "control"
CONTROL_DELTA = "control_delta"
LOCAL_BLOB = "algorithm"
CLIENT_CONTROL = "client_control"


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
