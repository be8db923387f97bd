"""The promotion gate against a plain bootstrap oracle, and its explicit degenerate cases."""

from __future__ import annotations

import dataclasses
import math
import warnings

import numpy as np
import pytest

from pipelines.tracking import GateDecision, promotion_gate


def oracle_interval(
    differences: np.ndarray, confidence: float, num_resamples: int, seed: int
) -> tuple[float, float]:
    """Percentile bootstrap of the mean, written as a loop over resamples."""
    rng = np.random.default_rng(seed)
    n = len(differences)
    means = [float(np.mean(differences[rng.integers(0, n, n)])) for _ in range(num_resamples)]
    alpha = (1.0 - confidence) / 2.0
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1.0 - alpha))


def paired_returns(shift: float, noise: float, n: int = 40, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Champion returns vary a lot from seed to seed; the challenger is the champion plus ``shift``."""
    rng = np.random.default_rng(seed)
    champion = rng.uniform(0.0, 20.0, n)
    return champion + shift + rng.normal(0.0, noise, n), champion


def test_no_champion_promotes_the_first_version() -> None:
    decision = promotion_gate([1.0, 2.0], None, num_resamples=100, seed=0)
    assert decision.promote
    assert "first version" in decision.reason
    assert decision.num_pairs == 0
    assert math.isnan(decision.mean_difference)


def test_a_clear_improvement_is_promoted() -> None:
    challenger, champion = paired_returns(shift=2.0, noise=1.0)
    decision = promotion_gate(challenger, champion, num_resamples=2000, seed=0)
    assert decision.promote, decision.reason
    assert decision.ci_low > 0.0
    assert decision.mean_difference == pytest.approx(float(np.mean(challenger - champion)))
    assert decision.num_pairs == 40


def test_a_clear_regression_is_not_promoted() -> None:
    challenger, champion = paired_returns(shift=-2.0, noise=1.0)
    decision = promotion_gate(challenger, champion, num_resamples=2000, seed=0)
    assert not decision.promote
    assert decision.ci_high < 0.0
    assert "worse" in decision.reason


def test_noise_is_not_promoted() -> None:
    rng = np.random.default_rng(3)
    champion = rng.uniform(0.0, 20.0, 40)
    noise = rng.normal(0.0, 1.0, 40)
    challenger = champion + (noise - noise.mean())  # no difference on average
    decision = promotion_gate(challenger, champion, num_resamples=2000, seed=0)
    assert not decision.promote
    assert decision.ci_low < 0.0 < decision.ci_high
    assert "no clear difference" in decision.reason


def test_pairing_is_used() -> None:
    # Unpaired, a +0.5 shift is invisible next to returns spread over 0..20; paired it is clear.
    challenger, champion = paired_returns(shift=0.5, noise=0.1)
    decision = promotion_gate(challenger, champion, num_resamples=2000, seed=0)
    assert decision.promote, decision.reason
    assert decision.ci_high - decision.ci_low < 0.2


@pytest.mark.parametrize("shift", [-1.0, 0.3, 1.0])
def test_interval_matches_a_plain_bootstrap(shift: float) -> None:
    challenger, champion = paired_returns(shift=shift, noise=1.0, n=60, seed=7)
    decision = promotion_gate(challenger, champion, confidence=0.9, num_resamples=4000, seed=5)
    low, high = oracle_interval(challenger - champion, 0.9, 4000, seed=11)
    width = high - low
    # BCa and percentile intervals agree closely for near-symmetric data.
    assert decision.ci_low == pytest.approx(low, abs=0.15 * width)
    assert decision.ci_high == pytest.approx(high, abs=0.15 * width)
    assert decision.promote == (decision.ci_low > 0.0)


def test_deterministic_for_a_seed() -> None:
    challenger, champion = paired_returns(shift=0.3, noise=1.0)
    first = promotion_gate(challenger, champion, num_resamples=500, seed=42)
    again = promotion_gate(challenger, champion, num_resamples=500, seed=42)
    other = promotion_gate(challenger, champion, num_resamples=500, seed=43)
    assert first == again
    assert (other.ci_low, other.ci_high) != (first.ci_low, first.ci_high)


def test_confidence_level_decides_borderline_cases() -> None:
    challenger, champion = paired_returns(shift=0.1, noise=1.0, n=30, seed=2)
    loose = promotion_gate(challenger, champion, confidence=0.6, num_resamples=4000, seed=0)
    strict = promotion_gate(challenger, champion, confidence=0.999, num_resamples=4000, seed=0)
    assert loose.promote and not strict.promote
    assert strict.ci_low < loose.ci_low < loose.ci_high < strict.ci_high


@pytest.mark.parametrize(("shift", "promote"), [(2.0, True), (0.0, False), (-2.0, False)])
def test_equal_differences_are_decided_without_the_bootstrap(shift: float, promote: bool) -> None:
    champion = np.array([3.0, 7.0, 1.0, 9.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # scipy's degenerate-data warning would fail the test
        decision = promotion_gate(champion + shift, champion, num_resamples=200, seed=0)
    assert decision.promote == promote
    assert decision.ci_low == decision.ci_high == pytest.approx(shift)
    assert decision.mean_difference == pytest.approx(shift)


def test_nearly_degenerate_differences_give_a_finite_interval() -> None:
    differences = np.array([1.0] * 19 + [1.5])
    decision = promotion_gate(differences, np.zeros(20), num_resamples=500, seed=0)
    assert math.isfinite(decision.ci_low) and math.isfinite(decision.ci_high)
    assert decision.promote


def test_one_pair_is_not_enough() -> None:
    decision = promotion_gate([10.0], [0.0], num_resamples=100, seed=0)
    assert not decision.promote
    assert "too few" in decision.reason


def test_bad_inputs_are_rejected() -> None:
    with pytest.raises(ValueError, match="same episodes"):
        promotion_gate([1.0, 2.0, 3.0], [1.0, 2.0], num_resamples=10, seed=0)
    with pytest.raises(ValueError, match="finite"):
        promotion_gate([1.0, math.nan], [1.0, 2.0], num_resamples=10, seed=0)
    with pytest.raises(ValueError, match="confidence"):
        promotion_gate([1.0, 2.0], [1.0, 2.0], confidence=1.0, num_resamples=10, seed=0)


def test_decision_is_frozen_and_serialisable() -> None:
    decision = promotion_gate([1.0, 2.0, 3.0], [0.0, 0.5, 1.0], num_resamples=100, seed=0)
    assert isinstance(decision, GateDecision)
    with pytest.raises(dataclasses.FrozenInstanceError):
        decision.promote = False  # type: ignore[misc]
    assert decision.as_dict()["num_pairs"] == 3
