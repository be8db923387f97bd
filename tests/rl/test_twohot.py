"""Symlog / two-hot properties."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from iris_core.config import TwoHotConfig
from iris_core.rl.twohot import bucket_centres, bucket_expectation, symexp, symlog, two_hot

PAPER = TwoHotConfig()  # 255 buckets on [-20, 20]
floats = st.floats(min_value=-1e4, max_value=1e4, allow_nan=False, width=32)
value_lists = st.lists(floats, min_size=1, max_size=16)


@settings(deadline=None, max_examples=200)
@given(value_lists)
def test_two_hot_is_a_distribution_on_two_adjacent_buckets(values: list[float]) -> None:
    x = torch.tensor(values)
    encoded = two_hot(x, PAPER)
    assert encoded.shape == (len(values), PAPER.num_buckets)
    assert (encoded >= 0).all()
    torch.testing.assert_close(encoded.sum(-1), torch.ones(len(values)))
    nonzero = encoded > 0
    assert (nonzero.sum(-1) <= 2).all()
    for row in nonzero:
        idx = torch.nonzero(row).flatten()
        assert idx.numel() in (1, 2) and (idx.numel() == 1 or idx[1] - idx[0] == 1)


@settings(deadline=None, max_examples=200)
@given(value_lists)
def test_two_hot_mean_is_the_clamped_value_and_input_is_untouched(values: list[float]) -> None:
    x = torch.tensor(values)
    before = x.clone()
    encoded = two_hot(x, PAPER)
    assert torch.equal(x, before), "two_hot must not modify its input"
    mean = encoded @ bucket_centres(PAPER)
    torch.testing.assert_close(mean, x.clamp(PAPER.low, PAPER.high), atol=1e-4, rtol=1e-5)


@settings(deadline=None, max_examples=100)
@given(value_lists, st.integers(min_value=2, max_value=300), st.floats(-50, 0), st.floats(0.5, 50))
def test_bucket_expectation_inverts_two_hot(values: list[float], n: int, low: float, width: float) -> None:
    support = TwoHotConfig(num_buckets=n, low=low, high=low + width)
    x = torch.tensor(values)
    logits = two_hot(x, support).log()  # softmax(log p) = p; empty buckets get -inf
    expected = x.clamp(support.low, support.high)
    torch.testing.assert_close(bucket_expectation(logits, support), expected, atol=1e-3 * width, rtol=1e-4)


@settings(deadline=None, max_examples=200)
@given(value_lists)
def test_symexp_inverts_symlog(values: list[float]) -> None:
    x = torch.tensor(values, dtype=torch.float64)
    torch.testing.assert_close(symexp(symlog(x)), x)
    assert torch.equal(torch.sign(symlog(x)), torch.sign(x))


def test_known_values() -> None:
    torch.testing.assert_close(
        symlog(torch.tensor([-(math.e - 1), 0.0, math.e - 1])), torch.tensor([-1.0, 0.0, 1.0])
    )
    centres = bucket_centres(PAPER)
    assert centres.shape == (255,) and centres[0] == -20 and centres[-1] == 20 and abs(centres[127]) < 1e-6
    # 0.1 lies between the buckets 0 and 40/254: weights split linearly.
    step = 40 / 254
    encoded = two_hot(torch.tensor([0.1]), PAPER)[0]
    torch.testing.assert_close(encoded[127:129], torch.tensor([1 - 0.1 / step, 0.1 / step]))
    # Out-of-range values saturate on the end buckets.
    encoded = two_hot(torch.tensor([-100.0, 100.0]), PAPER)
    assert encoded[0, 0] == 1 and encoded[1, -1] == 1


def test_multidimensional_inputs_keep_their_shape() -> None:
    x = torch.randn(3, 4, 5) * 30
    assert two_hot(x, PAPER).shape == (3, 4, 5, 255)
    assert bucket_expectation(torch.randn(3, 4, 255), PAPER).shape == (3, 4)


def test_bucket_expectation_rejects_wrong_number_of_logits() -> None:
    with pytest.raises(AssertionError):
        bucket_expectation(torch.randn(2, 254), PAPER)
