"""Differential privacy: clipping, Gaussian noise and the RDP accountant."""

from __future__ import annotations

import numpy as np
import pytest
from opacus.accountants import RDPAccountant

from airfed.sdk.algorithms import model_epsilon
from airfed.sdk.model_state import ModelState
from airfed.sdk.privacy import (
    DifferentialPrivacy,
    PrivacyError,
    clip_and_noise,
    epsilon,
)


def norm(arrays: dict[str, np.ndarray]) -> float:
    return float(
        np.sqrt(sum(np.sum(v.astype(np.float64) ** 2) for v in arrays.values()))
    )


def test_clipping_scales_large_updates_and_leaves_small_ones() -> None:
    update = {"a": np.array([3.0, 0.0]), "b": np.array([[4.0]]), "n": np.array(5)}
    quiet = DifferentialPrivacy(clip_norm=1.0, noise_multiplier=0.0)
    clipped = clip_and_noise(update, quiet, np.random.default_rng(0))
    assert norm({k: clipped[k] for k in ("a", "b")}) == pytest.approx(1.0)
    np.testing.assert_allclose(clipped["a"], [0.6, 0.0])
    assert int(clipped["n"]) == 5
    small = clip_and_noise({"a": np.array([0.1])}, quiet, np.random.default_rng(0))
    np.testing.assert_allclose(small["a"], [0.1])


def test_noise_has_the_configured_scale_and_is_seeded() -> None:
    privacy = DifferentialPrivacy(clip_norm=2.0, noise_multiplier=0.5)
    zeros = {"w": np.zeros(20_000)}
    noisy = clip_and_noise(zeros, privacy, np.random.default_rng(1))
    assert np.std(noisy["w"]) == pytest.approx(1.0, rel=0.03)
    again = clip_and_noise(zeros, privacy, np.random.default_rng(1))
    np.testing.assert_array_equal(noisy["w"], again["w"])


def test_epsilon_comes_from_opacus_rdp_accountant() -> None:
    accountant = RDPAccountant()
    accountant.history = [(1.1, 1.0, 10)]
    assert epsilon(1.1, 10, 1e-5) == pytest.approx(accountant.get_epsilon(1e-5))
    assert epsilon(1.1, 0, 1e-5) == 0.0
    assert epsilon(1.1, 20, 1e-5) > epsilon(1.1, 10, 1e-5)
    assert epsilon(2.0, 10, 1e-5) < epsilon(1.1, 10, 1e-5)


def test_model_epsilon_is_the_largest_over_organizations() -> None:
    privacy = DifferentialPrivacy(noise_multiplier=1.5, delta=1e-4)
    model = ModelState(
        {}, {}, {"privacy": privacy.to_dict(), "dp_steps": {"a": 2, "b": 5}}
    )
    assert model_epsilon(model) == pytest.approx(epsilon(1.5, 5, 1e-4))
    assert model_epsilon(ModelState({})) is None


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"clip_norm": 0}, "clip_norm"),
        ({"noise_multiplier": -1}, "noise"),
        ({"delta": 1}, "delta"),
    ],
)
def test_settings_out_of_range_are_refused(
    fields: dict[str, float], message: str
) -> None:
    with pytest.raises(PrivacyError, match=message):
        DifferentialPrivacy(**fields)
