"""Pre-LN causal transformer of the world model (docs/models.md §3).

Learned absolute position embeddings over ``max_tokens`` = ``max_blocks × tokens_per_block``;
each layer is ``x + Attn(LN(x))`` then ``x + MLP(LN(x))``; a final LayerNorm. Attention is causal
over tokens (the reference's unused ``block_causal`` variant lets a token also see its whole
block). With a :class:`KVCache`, new positions continue from the cache size and attend to every
cached position (over the cache's static shape, see ``kv_cache``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from iris_core.config import TransformerConfig
from iris_core.models.kv_cache import KVCache


def attention_mask(config: TransformerConfig) -> Tensor:
    """``(max_tokens, max_tokens)`` bool, True where query i may attend to key j."""
    assert config.tokens_per_block is not None and config.max_blocks is not None
    mask = torch.ones(config.max_tokens, config.max_tokens).tril().bool()
    if config.attention == "block_causal":
        block = torch.arange(config.max_tokens) // config.tokens_per_block
        mask = mask | (block[:, None] == block[None, :])
    return mask


class SelfAttention(nn.Module):
    def __init__(self, config: TransformerConfig, layer: int) -> None:
        super().__init__()
        self.layer = layer
        self.num_heads = config.num_heads
        self.causal = config.attention == "causal"
        self.attn_pdrop = config.attn_pdrop
        self.query = nn.Linear(config.embed_dim, config.embed_dim)
        self.key = nn.Linear(config.embed_dim, config.embed_dim)
        self.value = nn.Linear(config.embed_dim, config.embed_dim)
        self.proj = nn.Linear(config.embed_dim, config.embed_dim)
        self.resid_drop = nn.Dropout(config.resid_pdrop)

    def forward(self, x: Tensor, mask: Tensor, kv_cache: KVCache | None) -> Tensor:
        """``x`` ``(B, n, E)`` (already normalised); ``mask`` the full ``(max_tokens, max_tokens)`` mask."""
        n = x.size(1)
        start = kv_cache.size if kv_cache is not None else 0
        q, k, v = (
            rearrange(linear(x), "b n (h d) -> b h n d", h=self.num_heads)
            for linear in (self.query, self.key, self.value)
        )
        if kv_cache is not None:
            k, v = kv_cache.update(self.layer, k, v)
        dropout_p = self.attn_pdrop if self.training else 0.0
        if kv_cache is None and self.causal:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
        else:
            # Rows of the mask for the new positions; with a cache, columns for the whole buffer,
            # whose positions not written yet the causal mask hides.
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask[start : start + n, : k.size(2)], dropout_p=dropout_p
            )
        out: Tensor = self.resid_drop(self.proj(rearrange(y, "b h n d -> b n (h d)")))
        return out


class TransformerLayer(nn.Module):
    def __init__(self, config: TransformerConfig, layer: int) -> None:
        super().__init__()
        self.ln_attn = nn.LayerNorm(config.embed_dim)
        self.attn = SelfAttention(config, layer)
        self.ln_mlp = nn.LayerNorm(config.embed_dim)
        self.mlp = nn.Sequential(
            nn.Linear(config.embed_dim, config.mlp_ratio * config.embed_dim),
            nn.GELU(),
            nn.Linear(config.mlp_ratio * config.embed_dim, config.embed_dim),
            nn.Dropout(config.resid_pdrop),
        )

    def forward(self, x: Tensor, mask: Tensor, kv_cache: KVCache | None) -> Tensor:
        x = x + self.attn(self.ln_attn(x), mask, kv_cache)
        out: Tensor = x + self.mlp(self.ln_mlp(x))
        return out


class Transformer(nn.Module):
    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.config = config
        self.pos_emb = nn.Embedding(config.max_tokens, config.embed_dim)
        self.emb_drop = nn.Dropout(config.embed_pdrop)
        self.layers = nn.ModuleList([TransformerLayer(config, i) for i in range(config.num_layers)])
        self.ln = nn.LayerNorm(config.embed_dim)
        self.mask: Tensor
        self.register_buffer("mask", attention_mask(config), persistent=False)

    def new_kv_cache(self, batch_size: int) -> KVCache:
        cfg = self.config
        return KVCache(
            num_layers=cfg.num_layers,
            batch_size=batch_size,
            num_heads=cfg.num_heads,
            max_tokens=cfg.max_tokens,
            head_dim=cfg.embed_dim // cfg.num_heads,
            device=self.pos_emb.weight.device,
            dtype=self.pos_emb.weight.dtype,
        )

    def forward(self, x: Tensor, kv_cache: KVCache | None = None) -> Tensor:
        """``(B, n, E)`` embeddings → ``(B, n, E)`` outputs; with a cache, at positions ``size..size+n``."""
        assert x.ndim == 3 and x.size(2) == self.config.embed_dim, tuple(x.shape)
        start = 0 if kv_cache is None else kv_cache.size
        n = x.size(1)
        assert start + n <= self.config.max_tokens, f"{start} + {n} positions exceed max_tokens"
        y = self.emb_drop(x + self.pos_emb.weight[start : start + n])
        for layer in self.layers:
            y = layer(y, self.mask, kv_cache)
        if kv_cache is not None:
            kv_cache.advance(n)
        out: Tensor = self.ln(y)
        return out
