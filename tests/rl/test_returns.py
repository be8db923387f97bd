"""λ-returns against a plain Python recursion, and the after-first-done mask on hand-made cases."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from iris_core.rl.returns import compute_lambda_returns, mask_after_first_done


def lambda_returns_oracle(
    rew: list[float], end: list[int], values: list[float], bootstrap: float, gamma: float, lambda_: float
) -> list[float]:
    """The paper's recursion, one step at a time, with V_H = G_H = bootstrap."""
    horizon = len(rew)
    next_value, next_return = bootstrap, bootstrap
    returns = [0.0] * horizon
    for t in reversed(range(horizon)):
        g = rew[t] + gamma * (1 - end[t]) * ((1 - lambda_) * next_value + lambda_ * next_return)
        returns[t] = g
        next_value, next_return = values[t], g
    return returns


@st.composite
def rollouts(draw: st.DrawFn) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, float, float]:
    batch = draw(st.integers(1, 4))
    horizon = draw(st.integers(1, 12))
    floats = st.floats(-10.0, 10.0, allow_nan=False, width=64)
    rew = torch.tensor(
        draw(st.lists(floats, min_size=batch * horizon, max_size=batch * horizon)), dtype=torch.float64
    )
    values = torch.tensor(
        draw(st.lists(floats, min_size=batch * horizon, max_size=batch * horizon)), dtype=torch.float64
    )
    # Several dones per row on purpose: the function must cut at each one, not only at the first.
    end = torch.tensor(
        draw(st.lists(st.sampled_from([0, 0, 0, 1]), min_size=batch * horizon, max_size=batch * horizon))
    )
    bootstrap = torch.tensor(draw(st.lists(floats, min_size=batch, max_size=batch)), dtype=torch.float64)
    gamma = draw(st.floats(0.0, 1.0))
    lambda_ = draw(st.floats(0.0, 1.0))
    shape = (batch, horizon)
    return rew.view(shape), end.view(shape), values.view(shape), bootstrap, gamma, lambda_


@settings(max_examples=200, deadline=None)
@given(rollouts())
def test_lambda_returns_match_python_recursion(
    case: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, float, float],
) -> None:
    rew, end, values, bootstrap, gamma, lambda_ = case
    originals = [x.clone() for x in (rew, end, values, bootstrap)]

    returns = compute_lambda_returns(rew, end, values, bootstrap, gamma, lambda_)

    expected = torch.tensor(
        [
            lambda_returns_oracle(r.tolist(), e.tolist(), v.tolist(), float(b), gamma, lambda_)
            for r, e, v, b in zip(rew, end, values, bootstrap, strict=True)
        ],
        dtype=torch.float64,
    )
    assert returns.shape == rew.shape
    torch.testing.assert_close(returns, expected, rtol=1e-12, atol=1e-12)
    for before, after in zip(originals, (rew, end, values, bootstrap), strict=True):
        assert torch.equal(before, after), "inputs must not be mutated"


def test_lambda_returns_hand_computed() -> None:
    # H = 2, γ = 0.5, λ = 0.5, no done: G_1 = 1 + 0.5·(0.5·4 + 0.5·4) = 3;
    # G_0 = 2 + 0.5·(0.5·V_1 + 0.5·G_1) = 2 + 0.5·(0.5·10 + 1.5) = 5.25.
    rew = torch.tensor([[2.0, 1.0]])
    values = torch.tensor([[7.0, 10.0]])
    returns = compute_lambda_returns(
        rew, torch.zeros(1, 2, dtype=torch.long), values, torch.tensor([4.0]), 0.5, 0.5
    )
    torch.testing.assert_close(returns, torch.tensor([[5.25, 3.0]]))
    # A done at t = 1 removes the bootstrap: G_1 = r_1 = 1, G_0 = 2 + 0.5·(5 + 0.5) = 4.75.
    returns = compute_lambda_returns(rew, torch.tensor([[0, 1]]), values, torch.tensor([4.0]), 0.5, 0.5)
    torch.testing.assert_close(returns, torch.tensor([[4.75, 1.0]]))


def test_lambda_returns_reject_bad_shapes() -> None:
    with pytest.raises(AssertionError, match="bootstrap"):
        compute_lambda_returns(
            torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(3), 0.9, 0.9
        )
    with pytest.raises(AssertionError, match="end"):
        mask_after_first_done(torch.zeros(3))


def test_mask_after_first_done_hand_made() -> None:
    end = torch.tensor(
        [
            [0, 0, 0, 0],  # no done: all kept
            [1, 0, 0, 0],  # done first: only that step
            [0, 0, 1, 0],  # done in the middle: up to and including it
            [0, 1, 0, 1],  # two dones: cut after the first
            [0, 0, 0, 1],  # done last: all kept
        ]
    )
    expected = torch.tensor(
        [
            [True, True, True, True],
            [True, False, False, False],
            [True, True, True, False],
            [True, True, False, False],
            [True, True, True, True],
        ]
    )
    original = end.clone()
    mask = mask_after_first_done(end)
    assert mask.dtype == torch.bool
    assert torch.equal(mask, expected)
    assert torch.equal(end, original)
    assert torch.equal(mask_after_first_done(end.bool()), expected)
