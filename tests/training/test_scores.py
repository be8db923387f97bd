"""Crafter score and Atari human-normalised scores against hand computations."""

from __future__ import annotations

import math

import crafter
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iris_core.training.scores import (
    ATARI_100K_RANDOM_HUMAN,
    CRAFTER_ACHIEVEMENTS,
    atari_scores,
    crafter_score,
    human_normalized_score,
    interquartile_mean,
)


def test_achievement_names_are_crafters() -> None:
    assert list(CRAFTER_ACHIEVEMENTS) == list(crafter.constants.achievements)


def test_crafter_score_by_hand() -> None:
    # 4 episodes: collect_wood unlocked in all, place_table in 2 (one counter > 1), wake_up in 1.
    zero = dict.fromkeys(CRAFTER_ACHIEVEMENTS, 0)
    episodes = [
        zero | {"collect_wood": 3, "place_table": 1},
        zero | {"collect_wood": 1, "place_table": 2, "wake_up": 1},
        zero | {"collect_wood": 1},
        zero | {"collect_wood": 5},
    ]
    result = crafter_score(episodes)
    assert result.success_rates["collect_wood"] == 100.0
    assert result.success_rates["place_table"] == 50.0
    assert result.success_rates["wake_up"] == 25.0
    assert result.success_rates["collect_diamond"] == 0.0
    # exp(mean over 22 of ln(1 + s)) - 1, with 19 zero rates contributing ln(1) = 0.
    expected = math.exp((math.log(101) + math.log(51) + math.log(26)) / 22) - 1
    assert result.score == pytest.approx(expected, rel=1e-12)
    assert result.score == pytest.approx(0.7102, abs=1e-4)


def test_crafter_score_extremes() -> None:
    all_unlocked = dict.fromkeys(CRAFTER_ACHIEVEMENTS, 1)
    assert crafter_score([all_unlocked]).score == pytest.approx(100.0)
    assert crafter_score([dict.fromkeys(CRAFTER_ACHIEVEMENTS, 0)]).score == 0.0
    with pytest.raises(ValueError, match="at least one"):
        crafter_score([])


def test_human_normalized_score_by_hand() -> None:
    assert len(ATARI_100K_RANDOM_HUMAN) == 26
    assert human_normalized_score("Breakout", 30.5) == pytest.approx(1.0)
    assert human_normalized_score("BreakoutNoFrameskip-v4", 1.7) == 0.0
    assert human_normalized_score("Pong", -3.05) == pytest.approx((-3.05 + 20.7) / (14.6 + 20.7))
    with pytest.raises(KeyError, match="Atari 100k"):
        human_normalized_score("Tetris", 1.0)


def test_iqm_by_hand() -> None:
    # n = 8: drop 2 from each end -> mean(3, 4, 5, 6) = 4.5
    assert interquartile_mean([8, 1, 7, 2, 6, 3, 5, 4]) == 4.5
    assert interquartile_mean([8, 1, 7, 2, 6, 3, 5, 4], fractional=True) == 4.5
    # n = 6 (not divisible by 4): rliable/scipy drop floor(1.5) = 1 per end -> mean(2, 3, 4, 10) = 4.75;
    # fractional: the middle 3 samples' worth = 0.5·2 + 3 + 4 + 0.5·10 over 3 = 13/3.
    sample = [1, 2, 3, 4, 10, 100]
    assert interquartile_mean(sample) == 4.75
    assert interquartile_mean(sample, fractional=True) == pytest.approx(13 / 3)


@settings(deadline=None, max_examples=50)
@given(st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=60))
def test_iqm_matches_scipy_trim_mean(values: list[float]) -> None:
    from scipy.stats import trim_mean

    assert interquartile_mean(values) == pytest.approx(trim_mean(values, 0.25), rel=1e-9, abs=1e-6)
    lo, hi = min(values), max(values)
    assert lo - 1e-6 <= interquartile_mean(values, fractional=True) <= hi + 1e-6


def test_atari_aggregates_by_hand() -> None:
    # HNS 0, 1, 0.5, 2 for four games (two runs for Pong averaging to 0.5).
    returns = {
        "Breakout": 1.7,
        "Boxing": 12.1,
        "Pong": [-20.7, 14.6],
        "Freeway": 59.2,
    }
    result = atari_scores(returns)
    assert result.per_game == pytest.approx({"Breakout": 0.0, "Boxing": 1.0, "Pong": 0.5, "Freeway": 2.0})
    assert result.mean == pytest.approx(0.875)
    assert result.median == pytest.approx(0.75)
    # IQM pools the 5 runs [0, 1, 0, 1, 2]: drop 1 per end -> mean(0, 1, 1) = 2/3.
    assert result.iqm == pytest.approx(2 / 3)
    # Fractional: sorted [0, 0, 1, 1, 2] covering [1.25, 3.75): 0.75·0 + 1·1 + 0.75·1 over 2.5.
    assert atari_scores(returns, fractional_iqm=True).iqm == pytest.approx(1.75 / 2.5)
