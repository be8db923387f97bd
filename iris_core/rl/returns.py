"""λ-returns and the termination mask of an imagined rollout (docs/models.md §4).

Glossary (time runs along dim 1, ``H`` imagined steps):
    ``rew``       (B, H) imagined rewards r_t
    ``end``       (B, H) imagined terminations d_t (0/1, any numeric or bool dtype)
    ``values``    (B, H) target-network values V(s_t)
    ``bootstrap`` (B,)   target-network value of the frame after the last step, V(s_H)
"""

from __future__ import annotations

import torch
from torch import Tensor


def compute_lambda_returns(
    rew: Tensor,
    end: Tensor,
    values: Tensor,
    bootstrap: Tensor,
    gamma: float,
    lambda_: float,
) -> Tensor:
    """λ-returns G_t = r_t + γ(1−d_t)[(1−λ)V_{t+1} + λG_{t+1}], with V_H = G_H = ``bootstrap``.

    The targets of both the policy (with the baseline V_t) and the value head (docs/models.md §4).
    A done at step t cuts everything after it, so neither V_{t+1} nor G_{t+1} leak across an
    imagined episode end. Returns a new (B, H) tensor in the dtype of ``values``; inputs are left
    untouched.
    """
    assert rew.ndim == 2, f"rew must be (B, H), got {tuple(rew.shape)}"
    assert end.shape == rew.shape, f"end {tuple(end.shape)} != rew {tuple(rew.shape)}"
    assert values.shape == rew.shape, f"values {tuple(values.shape)} != rew {tuple(rew.shape)}"
    assert bootstrap.shape == rew.shape[:1], (
        f"bootstrap must be ({rew.size(0)},), got {tuple(bootstrap.shape)}"
    )

    dtype = values.dtype
    rew = rew.to(dtype)
    continuation = 1 - end.to(dtype)
    # V_{t+1} for every t, the last one being the bootstrap value of the final frame.
    next_values = torch.cat((values[:, 1:], bootstrap.to(dtype).unsqueeze(1)), dim=1)
    # The (1−λ)V_{t+1} part does not depend on the recursion: compute it for all t at once.
    partial = rew + gamma * continuation * (1 - lambda_) * next_values

    returns = []
    next_return = bootstrap.to(dtype)
    for t in reversed(range(rew.size(1))):
        next_return = partial[:, t] + gamma * lambda_ * continuation[:, t] * next_return
        returns.append(next_return)
    return torch.stack(returns[::-1], dim=1)


def mask_after_first_done(end: Tensor) -> Tensor:
    """(B, H) bool mask keeping every step up to *and including* the first done of each row.

    Steps after an imagined termination belong to no episode and are left out of every loss
    (docs/models.md §4); the step that ends the episode still counts (its reward is real). A row
    without a done is kept whole.
    """
    assert end.ndim == 2, f"end must be (B, H), got {tuple(end.shape)}"
    is_done = end.bool().long()
    dones_before = is_done.cumsum(dim=1) - is_done  # dones strictly before step t
    return dones_before == 0
