"""World-model analysis on real data: the Δ-tokens of stored transitions and how the codebook is used.

Glossary: ``latent_tokens`` ``(N, K)`` the tokenizer's K Δ-tokens of N transitions x_t →(a_t) x_{t+1}.
"""

from __future__ import annotations

import numpy as np
import torch

from iris_core.models.tokenizer import Tokenizer
from pipelines.storage import ZarrEpisodeDataset


@torch.no_grad()
def encode_episodes(
    tokenizer: Tokenizer, dataset: ZarrEpisodeDataset, max_transitions: int = 2048, batch_size: int = 64
) -> np.ndarray:
    """The Δ-tokens ``(N, K)`` of up to ``max_transitions`` consecutive stored transitions, episode
    by episode from the first (the tokenizer in eval mode: no codebook update)."""
    tokenizer.eval()
    device = next(tokenizer.parameters()).device
    out: list[np.ndarray] = []
    remaining = max_transitions
    for e in range(dataset.num_episodes):
        if remaining <= 0:
            break
        episode = dataset.load_episode(e)
        n = min(len(episode) - 1, remaining)
        for lo in range(0, n, batch_size):
            hi = min(n, lo + batch_size)
            obs = torch.from_numpy(episode.obs[lo : hi + 1]).to(device).float().div(255)
            act = torch.from_numpy(episode.act[lo:hi]).to(device).long()
            out.append(tokenizer.encode(obs[:-1], act, obs[1:]).tokens.cpu().numpy())
        remaining -= n
    k = tokenizer.config.num_tokens
    return np.concatenate(out) if out else np.zeros((0, k), np.int64)


def codebook_usage(latent_tokens: np.ndarray, codebook_size: int) -> np.ndarray:
    """How often each codeword was chosen, over every position: ``(codebook_size,)``."""
    return np.bincount(latent_tokens.ravel(), minlength=codebook_size)


def entropy_bits(counts: np.ndarray) -> float:
    """Entropy of the empirical distribution ``counts`` in bits (log2 of the codebook size at most)."""
    total = counts.sum()
    if total == 0:
        return 0.0
    p = counts[counts > 0] / total
    return float(-(p * np.log2(p)).sum())


def per_position_usage(latent_tokens: np.ndarray, codebook_size: int) -> np.ndarray:
    """``(K, codebook_size)`` counts: which codewords each of the K token positions uses."""
    return np.stack([np.bincount(column, minlength=codebook_size) for column in latent_tokens.T])
