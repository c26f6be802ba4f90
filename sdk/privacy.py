"""Differential privacy on model updates: clipping, Gaussian noise, accounting.

Each organization clips its update (the change its training made to the
shared model) to an L2 norm of at most ``clip_norm`` and adds Gaussian noise
of standard deviation ``noise_multiplier * clip_norm`` to every coordinate
before the update leaves its node: the Gaussian mechanism applied to whole
updates, as in McMahan et al., "Learning Differentially Private Recurrent
Language Models", ICLR 2018, here with the noise added on the node so that
the aggregator never sees an update without it.

The privacy spent is counted by Rényi differential privacy (Mironov, "Rényi
Differential Privacy", CSF 2017) with opacus's ``RDPAccountant``: one noisy
update is one step at sampling rate 1 (every organization takes part in every
round it trains in). :func:`epsilon` turns the number of noisy updates an
organization has contributed to a model into the epsilon spent for ``delta``;
evaluation records the largest over the organizations as the performance
``epsilon``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from airfed.sdk.errors import AirfedError

__all__ = ["DifferentialPrivacy", "PrivacyError", "clip_and_noise", "epsilon"]


class PrivacyError(AirfedError):  # type: ignore[misc,unused-ignore]
    """A differential privacy setting is out of range."""


@dataclass(frozen=True)
class DifferentialPrivacy:
    """Clip updates to ``clip_norm``; add noise ``noise_multiplier * clip_norm``."""

    clip_norm: float = 1.0
    noise_multiplier: float = 1.0
    delta: float = 1e-5

    def __post_init__(self) -> None:
        if self.clip_norm <= 0:
            raise PrivacyError(f"clip_norm must be positive, not {self.clip_norm}")
        if self.noise_multiplier < 0:
            raise PrivacyError(
                f"noise_multiplier must be 0 or more, not {self.noise_multiplier}"
            )
        if not 0 < self.delta < 1:
            raise PrivacyError(f"delta must be between 0 and 1, not {self.delta}")

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DifferentialPrivacy:
        return cls(
            clip_norm=float(data["clip_norm"]),
            noise_multiplier=float(data["noise_multiplier"]),
            delta=float(data["delta"]),
        )


def clip_and_noise(
    update: Mapping[str, np.ndarray],
    privacy: DifferentialPrivacy,
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """Clip the floating arrays of ``update`` jointly, then add Gaussian noise.

    Integer arrays pass unchanged. Arrays are visited in name order so that the
    same generator state gives the same noise.
    """
    floating = {k: v for k, v in update.items() if v.dtype.kind == "f"}
    norm = math.sqrt(
        sum(float(np.sum(np.square(v, dtype=np.float64))) for v in floating.values())
    )
    scale = min(1.0, privacy.clip_norm / norm) if norm > 0 else 1.0
    sigma = privacy.noise_multiplier * privacy.clip_norm
    result = dict(update)
    for name in sorted(floating):
        value = floating[name].astype(np.float64) * scale
        noise = rng.normal(0.0, sigma, size=value.shape) if sigma > 0 else 0.0
        result[name] = (value + noise).astype(floating[name].dtype)
    return result


def epsilon(noise_multiplier: float, steps: int, delta: float) -> float:
    """Epsilon spent by ``steps`` Gaussian updates at ``noise_multiplier``, for
    ``delta`` (RDP accountant of opacus, sampling rate 1)."""
    if steps <= 0:
        return 0.0
    if noise_multiplier <= 0:
        return math.inf
    from opacus.accountants import RDPAccountant

    accountant = RDPAccountant()
    accountant.history = [(noise_multiplier, 1.0, steps)]
    return float(accountant.get_epsilon(delta))
