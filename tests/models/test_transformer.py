"""Causal transformer and KV cache: cached decoding equals one full pass."""

from __future__ import annotations

import pytest
import torch

from iris_core.config import TransformerConfig
from iris_core.models.transformer import Transformer, attention_mask

CONFIG = TransformerConfig(max_blocks=4, tokens_per_block=6, num_layers=2, num_heads=4, embed_dim=32)


def test_layer_structure() -> None:
    transformer = Transformer(CONFIG)
    layer = transformer.layers[0]
    assert layer.mlp[0].out_features == CONFIG.mlp_ratio * CONFIG.embed_dim
    assert isinstance(layer.mlp[1], torch.nn.GELU)
    for name in ("query", "key", "value", "proj"):
        assert getattr(layer.attn, name).weight.shape == (32, 32)
    assert transformer.pos_emb.weight.shape == (24, 32)


@pytest.mark.parametrize("chunks", [[1] * 24, [7, 1, 1, 3, 6, 6], [13, 11], [24]])
def test_cached_chunks_equal_one_full_pass(chunks: list[int]) -> None:
    transformer = Transformer(CONFIG).eval()
    x = torch.randn(3, 24, 32)
    with torch.no_grad():
        full = transformer(x)
        cache = transformer.new_kv_cache(batch_size=3)
        outputs, start = [], 0
        for n in chunks:
            outputs.append(transformer(x[:, start : start + n], cache))
            start += n
            assert cache.size == start
    torch.testing.assert_close(torch.cat(outputs, dim=1), full, atol=1e-5, rtol=1e-5)


def test_attention_is_causal_over_tokens() -> None:
    transformer = Transformer(CONFIG).eval()
    x = torch.randn(1, 24, 32)
    y = x.clone()
    y[:, 10] = torch.randn(32)  # (a constant shift would vanish in the LayerNorm)
    with torch.no_grad():
        a, b = transformer(x), transformer(y)
    torch.testing.assert_close(a[:, :10], b[:, :10])
    assert not torch.allclose(a[:, 10:], b[:, 10:])


def test_block_causal_mask_opens_the_current_block() -> None:
    causal = attention_mask(CONFIG)
    assert torch.equal(causal, torch.ones(24, 24).tril().bool())
    block = attention_mask(TransformerConfig(max_blocks=4, tokens_per_block=6, attention="block_causal"))
    assert block[6, 11] and not block[6, 12] and block[11, 0] and not causal[6, 11]


def test_cache_reset_overflow_and_grad_guard() -> None:
    transformer = Transformer(CONFIG).eval()
    cache = transformer.new_kv_cache(batch_size=2)
    x = torch.randn(2, 20, 32)
    with torch.no_grad():
        first = transformer(x, cache)
        with pytest.raises(AssertionError):
            transformer(x[:, :5], cache)
        cache.reset()
        assert cache.size == 0
        torch.testing.assert_close(transformer(x, cache), first)
    with pytest.raises(AssertionError, match="no_grad"):
        transformer(x[:, :1], cache)
