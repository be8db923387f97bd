"""Symlog and two-hot encoding of scalars (rewards and values, docs/models.md §3–§4).

Rewards (Crafter) and λ-returns are regressed as a classification over ``num_buckets`` buckets
uniformly spaced on ``[low, high]`` in symlog space: a scalar y becomes the "two-hot" distribution
that puts weight on the two buckets around symlog(y) so that its mean is symlog(y); a prediction is
read back as symexp of the softmax-weighted bucket mean.

Every function here is pure: inputs are never modified (the reference helper clamps its argument
in place, which silently changed the caller's rewards).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from iris_core.config import TwoHotConfig


def symlog(x: Tensor) -> Tensor:
    """sign(x) · ln(1 + |x|): compresses large magnitudes, identity-like near 0."""
    return torch.sign(x) * torch.log1p(torch.abs(x))


def symexp(x: Tensor) -> Tensor:
    """sign(x) · (exp(|x|) − 1), the inverse of :func:`symlog`."""
    return torch.sign(x) * torch.expm1(torch.abs(x))


def bucket_centres(support: TwoHotConfig, device: torch.device | str | None = None) -> Tensor:
    """``(num_buckets,)`` float32 bucket centres, uniformly spaced on ``[low, high]``."""
    return torch.linspace(support.low, support.high, support.num_buckets, device=device)


def two_hot(values: Tensor, support: TwoHotConfig) -> Tensor:
    """``(*)`` values in symlog space → ``(*, num_buckets)`` two-hot distributions.

    Values are clamped to ``[low, high]`` (on a copy). Each row has at most two non-zero weights,
    on the buckets k and k+1 that bracket the value, and sums to 1; its mean over the bucket
    centres equals the clamped value.
    """
    assert values.is_floating_point(), f"two_hot needs float values, got {values.dtype}"
    num_buckets = support.num_buckets
    step = (support.high - support.low) / (num_buckets - 1)
    clamped = values.clamp(support.low, support.high)
    position = (clamped - support.low) / step  # in bucket units, in [0, num_buckets - 1]
    # A value exactly on the top bucket gets k = num_buckets - 2 and upper weight 1, so k + 1 is
    # always a valid bucket.
    k = position.floor().clamp(0, num_buckets - 2)
    upper = (position - k).clamp(0.0, 1.0)
    weights = torch.stack((1.0 - upper, upper), dim=-1)
    index = torch.stack((k, k + 1), dim=-1).long()
    encoded = values.new_zeros(*values.shape, num_buckets).scatter(-1, index, weights)
    assert encoded.shape == (*values.shape, num_buckets)
    return encoded


def bucket_expectation(logits: Tensor, support: TwoHotConfig) -> Tensor:
    """``(*, num_buckets)`` logits → ``(*)`` mean of the softmax over bucket centres (symlog space).

    Callers apply :func:`symexp` to get a reward or a value back.
    """
    assert logits.size(-1) == support.num_buckets, (
        f"expected (*, {support.num_buckets}) logits, got {tuple(logits.shape)}"
    )
    probs = F.softmax(logits, dim=-1)
    return probs @ bucket_centres(support, logits.device).to(probs.dtype)
