"""Cosine VQ with EMA codebook: straight-through, train-only updates, revival rule."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

from iris_core.config import TokenizerConfig
from iris_core.models.quantizer import Quantizer

MakeConfig = Callable[..., TokenizerConfig]


def test_codebook_is_a_unit_norm_buffer_after_training_updates(make_tokenizer_config: MakeConfig) -> None:
    quantizer = Quantizer(make_tokenizer_config())
    size = quantizer.codebook.size(0)
    assert "codebook" in dict(quantizer.named_buffers())
    assert all(p is not quantizer.codebook for p in quantizer.parameters())
    assert quantizer.codebook.abs().max() <= 1 / size  # uniform(±1/size) initialisation
    torch.testing.assert_close(quantizer.codewords_freqs, torch.full((size,), 1 / size))
    quantizer(torch.randn(6, 4, quantizer.config.token_dim))
    torch.testing.assert_close(quantizer.codebook.norm(dim=-1), torch.ones(size))


def test_codebook_changes_only_in_training_mode(make_tokenizer_config: MakeConfig) -> None:
    quantizer = Quantizer(make_tokenizer_config())
    patches = torch.randn(6, 4, quantizer.config.token_dim)
    state = {k: v.clone() for k, v in quantizer.state_dict().items()}
    quantizer.eval()
    out = quantizer(patches)
    for key, value in quantizer.state_dict().items():
        assert torch.equal(value, state[key]), f"{key} changed in eval mode"
    assert out.codewords_revived == 0 and out.codewords_dead == 0
    quantizer.train()
    quantizer(patches)
    assert not torch.equal(quantizer.codebook, state["codebook"])
    assert not torch.equal(quantizer.codewords_freqs, state["codewords_freqs"])
    assert quantizer.num_codebook_updates == 1


def test_straight_through_gradient_and_commitment_loss(make_tokenizer_config: MakeConfig) -> None:
    config = make_tokenizer_config()
    quantizer = Quantizer(config).eval()
    patches = torch.randn(3, 4, config.token_dim, requires_grad=True)
    out = quantizer(patches)
    assert out.tokens.shape == (3, 4) and out.tokens.dtype == torch.long
    # Forward value: the code; the assigned code is the most cosine-similar one.
    torch.testing.assert_close(out.q, quantizer.codebook[out.tokens])
    z = F.normalize(quantizer.pre_quant_proj(patches), dim=-1)
    torch.testing.assert_close(out.z, z)
    similarity = z @ quantizer.codebook.t()
    assert torch.equal(out.tokens, similarity.argmax(-1))
    expected_commitment = config.commitment_weight * (z - quantizer.codebook[out.tokens]).pow(2).mean()
    torch.testing.assert_close(out.commitment_loss, expected_commitment)
    # Backward: the gradient of q is passed to z unchanged, so it reaches the patches.
    upstream = torch.randn_like(out.q)
    (out.q * upstream).sum().backward()
    assert patches.grad is not None and patches.grad.abs().sum() > 0
    (expected_grad,) = torch.autograd.grad((z * upstream).sum(), patches)
    torch.testing.assert_close(patches.grad, expected_grad)


def test_ema_update_matches_hand_computation(make_tokenizer_config: MakeConfig) -> None:
    config = make_tokenizer_config(max_codebook_updates_with_revival=0)
    quantizer = Quantizer(config)
    size = config.codebook_size
    codebook = quantizer.codebook.clone()
    z = F.normalize(torch.randn(5, config.codebook_dim), dim=-1)
    tokens = torch.tensor([3, 3, 7, 0, 3])
    quantizer.update_codebook(z, tokens)
    expected = codebook.clone()
    for code in range(size):
        members = z[tokens == code]
        update = F.normalize(members.mean(0), dim=0) if len(members) else torch.zeros(config.codebook_dim)
        expected[code] = codebook[code] + (1 - config.codebook_ema_decay) * (update - codebook[code])
    torch.testing.assert_close(quantizer.codebook, F.normalize(expected, dim=-1))
    counts = torch.bincount(tokens, minlength=size).float()
    expected_freqs = (1 / size) * config.usage_ema_decay + (1 - config.usage_ema_decay) * counts / 5
    torch.testing.assert_close(quantizer.codewords_freqs, expected_freqs)


def _entropy_bits(p: torch.Tensor) -> float:
    p = p[p > 0]
    return float(-(p * p.log2()).sum())


@pytest.mark.parametrize(
    ("max_updates", "updates_done", "live_codes", "should_revive"),
    [
        # Crafter (0): only on collapse (entropy < 1 bit).
        (0, 0, 1, True),
        (0, 0, 8, False),  # 3 bits: low, but no collapse
        # Atari (400): also while fewer than 400 updates were made.
        (400, 0, 8, True),
        (400, 399, 8, True),
        (400, 400, 8, False),
        (400, 400, 1, True),
        # None: whenever the entropy is low.
        (None, 10_000, 8, True),
        # Entropy above log2(size) - 2 bits: never, whatever the setting.
        (None, 0, 32, False),
        (400, 0, 32, False),
    ],
)
def test_revival_conditions(
    make_tokenizer_config: MakeConfig,
    max_updates: int | None,
    updates_done: int,
    live_codes: int,
    should_revive: bool,
) -> None:
    config = make_tokenizer_config(codebook_size=64, max_codebook_updates_with_revival=max_updates)
    quantizer = Quantizer(config)
    size = config.codebook_size
    assert config.max_codebook_entropy_bits - config.revival_entropy_margin_bits == 4.0
    freqs = torch.zeros(size)
    freqs[:live_codes] = 1 / live_codes
    quantizer.codewords_freqs.copy_(freqs)
    quantizer.num_codebook_updates.fill_(updates_done)
    num_vectors = 10
    z = F.normalize(torch.randn(num_vectors, config.codebook_dim), dim=-1)
    tokens = torch.zeros(num_vectors, dtype=torch.long)  # every vector on a live code
    before = quantizer.codebook.clone()
    num_dead, num_revived = quantizer.update_codebook(z, tokens)
    revived = int(num_revived)

    after_freqs = config.usage_ema_decay * freqs
    after_freqs[0] += 1 - config.usage_ema_decay
    entropy = _entropy_bits(after_freqs)
    dead = (after_freqs < 1 / (config.dead_code_factor * size)).nonzero().flatten()
    if not should_revive:
        assert revived == 0 and int(num_dead) == 0
        torch.testing.assert_close(quantizer.codewords_freqs, after_freqs)
        return
    assert entropy < 4.0 and len(dead) > 0
    assert revived == min(len(dead), num_vectors)
    assert int(num_dead) == len(dead)  # counted before the cut to the batch, as the reference code logs it
    reset = (quantizer.codewords_freqs == 1 / size).nonzero().flatten()
    assert len(reset) == revived and set(reset.tolist()) <= set(dead.tolist())
    # Each revived code is a distinct vector of the batch; other dead codes keep their direction.
    sources = [int((z @ quantizer.codebook[code]).argmax()) for code in reset]
    for code, source in zip(reset.tolist(), sources, strict=True):
        torch.testing.assert_close(quantizer.codebook[code], z[source])
    assert len(set(sources)) == len(sources)
    untouched = [c for c in dead.tolist() if c not in set(reset.tolist())]
    torch.testing.assert_close(quantizer.codebook[untouched], F.normalize(before[untouched], dim=-1))
    assert quantizer.num_codebook_updates == updates_done + 1


def test_all_dead_codes_revive_when_the_batch_is_large_enough(make_tokenizer_config: MakeConfig) -> None:
    config = make_tokenizer_config(codebook_size=64, max_codebook_updates_with_revival=None)
    quantizer = Quantizer(config)
    freqs = torch.zeros(64)
    freqs[0] = 1.0
    quantizer.codewords_freqs.copy_(freqs)
    z = F.normalize(torch.randn(200, config.codebook_dim), dim=-1)
    dead, revived = quantizer.update_codebook(z, torch.zeros(200, dtype=torch.long))
    assert int(revived) == int(dead) == 63
    assert math.isclose(
        float(quantizer.codebook_entropy()), _entropy_bits(quantizer.codewords_freqs), rel_tol=1e-5
    )
