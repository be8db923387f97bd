"""Pre-allocated keys/values of every transformer layer for incremental decoding (docs/models.md §3).

Used for inference only (burn-in, imagination, play): each call of the transformer writes its new
positions' keys and values, then attends over the whole buffer with the attention mask hiding the
positions not written yet. Every call thus sees tensors of one static shape (what a compiled or
CUDA-graphed rollout needs); the buffers start at zero so that hidden positions hold finite
values. The number of cached positions, ``size``, is a Python int: no value is read back from the
device.
"""

from __future__ import annotations

import torch
from torch import Tensor


class KVCache:
    def __init__(
        self,
        num_layers: int,
        batch_size: int,
        num_heads: int,
        max_tokens: int,
        head_dim: int,
        device: torch.device,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        shape = (num_layers, batch_size, num_heads, max_tokens, head_dim)
        self.keys = torch.zeros(shape, device=device, dtype=dtype)
        self.values = torch.zeros(shape, device=device, dtype=dtype)
        self.max_tokens = max_tokens
        self.size = 0  # positions cached (and committed by advance)

    @property
    def batch_size(self) -> int:
        return self.keys.size(1)

    @property
    def num_tokens_left(self) -> int:
        return self.max_tokens - self.size

    def reset(self) -> None:
        """Forget every cached position (the buffers are reused, not reallocated)."""
        self.size = 0

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write ``(B, heads, n, head_dim)`` keys/values at positions ``size..size+n`` of ``layer``.

        Returns the whole ``(B, heads, max_tokens, head_dim)`` buffers of ``layer``: the caller masks
        the positions from ``size + n`` on. ``size`` itself moves only in :meth:`advance`, once
        every layer has been written.
        """
        assert not torch.is_grad_enabled(), "the KV cache is for inference: run under torch.no_grad()"
        n = k.size(2)
        assert (
            k.shape == v.shape and k.shape[:2] == self.keys.shape[1:3] and k.size(3) == self.keys.size(4)
        ), f"expected (B={self.batch_size}, heads, n, head_dim), got {tuple(k.shape)}"
        end = self.size + n
        assert end <= self.max_tokens, f"KV cache overflow: {self.size} cached + {n} new > {self.max_tokens}"
        self.keys[layer, :, :, self.size : end] = k
        self.values[layer, :, :, self.size : end] = v
        # Under autocast the new keys may be in a lower precision than the buffers.
        return self.keys[layer].to(k.dtype), self.values[layer].to(v.dtype)

    def advance(self, n: int) -> None:
        self.size += n
