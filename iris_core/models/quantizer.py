"""Cosine-similarity vector quantizer with an EMA codebook and dead-code revival (docs/models.md §2).

Glossary: ``z`` the L2-normalised projection of a token's patch vector, ``q`` the code it is
assigned (straight-through), ``tokens`` the code indices, ``codebook`` ``(codebook_size,
codebook_dim)`` unit rows, ``codewords_freqs`` the EMA of how often each code is used.

The codebook is a buffer, not a parameter: there is no codebook loss, only a commitment loss on
the normalised vectors; the codebook follows the encoder by EMA in training mode only (so never
while the world model or the actor-critic train). All bookkeeping stays in tensors: no branch
depends on a value read back from the device, so a training step never waits for it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from iris_core.config import TokenizerConfig


@dataclass
class QuantizerOutput:
    z: Tensor  # (N, K, codebook_dim) normalised projections, before quantisation
    q: Tensor  # (N, K, codebook_dim) codes, straight-through: value of the code, gradient of z
    tokens: Tensor  # (N, K) long code indices
    commitment_loss: Tensor  # () already weighted by commitment_weight
    codebook_entropy: Tensor  # () bits, of the usage frequencies after this call's update
    codewords_dead: (
        Tensor  # () codes found dead in this call, as the reference code logs it (0 outside training)
    )
    codewords_revived: Tensor  # () of those, how many were replaced (at most one per vector of the batch)


class Quantizer(nn.Module):
    def __init__(self, config: TokenizerConfig) -> None:
        super().__init__()
        self.config = config
        size, dim = config.codebook_size, config.codebook_dim
        self.pre_quant_proj = nn.Linear(config.token_dim, dim)
        self.post_quant_proj = nn.Linear(dim, config.token_dim)
        self.codebook: Tensor
        self.codewords_freqs: Tensor
        self.num_codebook_updates: Tensor
        self.register_buffer("codebook", torch.empty(size, dim).uniform_(-1.0 / size, 1.0 / size))
        self.register_buffer("codewords_freqs", torch.full((size,), 1.0 / size))
        self.register_buffer("num_codebook_updates", torch.zeros((), dtype=torch.long))

    def forward(self, patches: Tensor) -> QuantizerOutput:
        """``(N, K, token_dim)`` patch vectors → codes; updates the codebook in training mode."""
        assert patches.ndim == 3 and patches.size(-1) == self.config.token_dim, tuple(patches.shape)
        z = F.normalize(self.pre_quant_proj(patches), dim=-1)
        # Codes are unit vectors, so the largest dot product is the largest cosine similarity.
        tokens = torch.einsum("nke,ce->nkc", z, self.codebook.to(z.dtype)).argmax(dim=-1)
        q = self.codebook[tokens]
        commitment_loss = self.config.commitment_weight * (z - q.detach()).pow(2).mean()
        if self.training:
            dead, revived = self.update_codebook(z.detach().flatten(0, 1).float(), tokens.flatten())
        else:
            dead = revived = torch.zeros((), dtype=torch.long, device=z.device)
        q = z + (q - z).detach()
        return QuantizerOutput(z, q, tokens, commitment_loss, self.codebook_entropy(), dead, revived)

    def codebook_entropy(self) -> Tensor:
        """Entropy in bits of the usage frequencies (0·log 0 counts as 0)."""
        p = self.codewords_freqs
        return -torch.where(p > 0, p * torch.log2(p), torch.zeros_like(p)).sum()

    @torch.no_grad()
    def update_codebook(self, z: Tensor, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """EMA update, usage tracking and dead-code revival from ``z`` ``(M, D)``, ``tokens`` ``(M,)``.

        Returns the number of dead codes and the number of them revived (at most M).
        """
        cfg = self.config
        size, num_vectors = cfg.codebook_size, z.size(0)
        # index_add rather than one_hot/bincount, which read the token range back from the device.
        counts = z.new_zeros(size).index_add_(0, tokens, z.new_ones(num_vectors))
        sums = z.new_zeros(size, z.size(1)).index_add_(0, tokens, z)
        # Each code moves towards the normalised mean of its vectors; unused codes only shrink,
        # which the renormalisation below undoes.
        means = F.normalize(sums / counts.clamp(min=1).unsqueeze(-1), dim=-1)
        codebook = torch.lerp(self.codebook, means, 1.0 - cfg.codebook_ema_decay)
        freqs = torch.lerp(self.codewords_freqs, counts / num_vectors, 1.0 - cfg.usage_ema_decay)
        self.codewords_freqs.copy_(freqs)

        entropy = self.codebook_entropy()
        allowed = entropy < cfg.collapse_entropy_bits
        if cfg.max_codebook_updates_with_revival is None:
            allowed = torch.ones_like(allowed)
        else:
            allowed = allowed | (self.num_codebook_updates < cfg.max_codebook_updates_with_revival)
        should_revive = allowed & (entropy < cfg.max_codebook_entropy_bits - cfg.revival_entropy_margin_bits)
        dead = should_revive & (freqs < 1.0 / (cfg.dead_code_factor * size))

        # A uniformly random subset of at most M dead codes, each given a distinct random z of
        # this batch: rank the dead codes in a random order and keep the first M ranks.
        # (Random orders by sorting uniform noise: randperm may synchronise on accelerators.)
        order = torch.rand(size, device=z.device).argsort()
        rank_in_order = torch.cumsum(dead[order].long(), dim=0) - 1
        rank = torch.empty_like(rank_in_order).scatter_(0, order, rank_in_order)
        revived = dead & (rank < num_vectors)
        source = torch.rand(num_vectors, device=z.device).argsort()[rank.clamp(0, num_vectors - 1)]
        codebook = torch.where(revived.unsqueeze(-1), z[source], codebook)
        self.codewords_freqs.masked_fill_(revived, 1.0 / size)

        self.codebook.copy_(F.normalize(codebook, dim=-1))
        self.num_codebook_updates += 1
        return dead.sum(), revived.sum()

    def embed_tokens(self, tokens: Tensor) -> Tensor:
        """``(N, K)`` code indices → ``(N, K, codebook_dim)`` codebook rows."""
        assert tokens.ndim == 2 and tokens.dtype == torch.long, (tuple(tokens.shape), tokens.dtype)
        return self.codebook[tokens]
