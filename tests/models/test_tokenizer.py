"""Tokenizer: token/patch layout, encode/decode contracts, masked loss against a loop oracle."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from iris_core.config import IrisConfig, TokenizerConfig
from iris_core.data.structures import Batch
from iris_core.models.tokenizer import Tokenizer

MakeConfig = Callable[..., TokenizerConfig]


def make_batch(b: int, t: int, size: int, num_actions: int, mask: torch.Tensor | None = None) -> Batch:
    mask = torch.ones(b, t, dtype=torch.bool) if mask is None else mask
    return Batch(
        obs=torch.randint(0, 256, (b, t, 3, size, size), dtype=torch.uint8),
        act=torch.randint(0, num_actions, (b, t)),
        rew=torch.randn(b, t),
        end=torch.zeros(b, t, dtype=torch.long),
        mask_padding=mask,
        segment_ids=[],
    )


def test_patch_layout_matches_a_hand_built_layout() -> None:
    tokenizer = Tokenizer(IrisConfig().with_num_actions(17).tokenizer)
    latent_map = torch.randn(2, 64, 8, 8)
    patches = tokenizer.to_patches(latent_map)
    assert patches.shape == (2, 4, 1024)
    # Token (i, j) of the 2×2 grid is the 4×4×64 patch at rows 4i.., cols 4j.., flattened
    # row-major over (patch-row, patch-col, channel).
    for n in range(2):
        for i in range(2):
            for j in range(2):
                expected = [
                    latent_map[n, c, 4 * i + r, 4 * j + s]
                    for r in range(4)
                    for s in range(4)
                    for c in range(64)
                ]
                assert torch.equal(patches[n, 2 * i + j], torch.stack(expected))
    assert torch.equal(tokenizer.to_map(patches), latent_map)


def test_encode_decode_contracts(make_tokenizer_config: MakeConfig) -> None:
    config = make_tokenizer_config()
    tokenizer = Tokenizer(config).eval()
    obs_prev, obs_next = torch.rand(2, 6, 3, 16, 16).unbind(0)
    act = torch.randint(0, 5, (6,))
    encoding = tokenizer.encode(obs_prev, act, obs_next)
    assert encoding.tokens.shape == (6, 4) and encoding.tokens.dtype == torch.long
    assert encoding.q.shape == (6, 4, config.codebook_dim)
    torch.testing.assert_close(tokenizer.embed_tokens(encoding.tokens), encoding.q)
    raw = tokenizer.decode(obs_prev, act, encoding.q, should_clamp=False)
    clamped = tokenizer.decode_tokens(obs_prev, act, encoding.tokens)
    assert raw.shape == clamped.shape == (6, 3, 16, 16)
    assert clamped.min() >= 0 and clamped.max() <= 1
    torch.testing.assert_close(clamped * 255, (clamped * 255).round(), atol=1e-4, rtol=0)
    torch.testing.assert_close(clamped, raw.clamp(0, 1), atol=0.5 / 255 + 1e-6, rtol=0)
    # The encoder sees the next frame, the decoder does not: tokens change with it.
    other = tokenizer.encode(obs_prev, act, torch.rand_like(obs_next)).tokens
    assert not torch.equal(other, encoding.tokens)


def test_burn_in_needs_eval_mode(make_tokenizer_config: MakeConfig) -> None:
    tokenizer = Tokenizer(make_tokenizer_config())
    obs, act = torch.rand(2, 4, 3, 16, 16), torch.randint(0, 5, (2, 3))
    with pytest.raises(AssertionError, match="eval"):
        tokenizer.burn_in(obs, act)
    tokenizer.eval()
    tokens = tokenizer.burn_in(obs, act)
    assert tokens.shape == (2, 3, 4)
    flat = tokenizer.encode(obs[:, :-1].flatten(0, 1), act.flatten(), obs[:, 1:].flatten(0, 1)).tokens
    assert torch.equal(tokens.flatten(0, 1), flat)


def test_loss_masks_match_a_loop_oracle(make_tokenizer_config: MakeConfig) -> None:
    config = make_tokenizer_config(
        l2_weight=1.0, l1_weight=0.3, worst_pixel_weight=0.7, commitment_weight=0.05
    )
    tokenizer = Tokenizer(config).eval()
    mask = torch.tensor([[False, False, True, True, True], [True, True, True, False, False]])
    batch = make_batch(2, 5, 16, 5, mask)
    losses, metrics = tokenizer.compute_loss(batch)

    obs = batch.obs.float() / 255
    sq, ab, worst, commitments, kept = 0.0, 0.0, 0.0, [], 0
    for b in range(2):
        for t in range(4):
            prev, nxt, a = obs[b, t : t + 1], obs[b, t + 1 : t + 2], batch.act[b, t : t + 1]
            encoding = tokenizer.encode(prev, a, nxt)
            commitments.append(encoding.commitment_loss)
            if mask[b, t] and mask[b, t + 1]:
                delta = nxt - tokenizer.decode(prev, a, encoding.q, should_clamp=False)
                sq += delta.pow(2).mean()
                ab += delta.abs().mean()
                worst += delta.pow(2).max()
                kept += 1
    assert kept == 4
    expected = {
        "commitment_loss": torch.stack(commitments).mean(),
        "reconstruction_loss_l2": 1.0 * sq / kept,
        "reconstruction_loss_l1": 0.3 * ab / kept,
        "reconstruction_loss_l2_worst_pixel": 0.7 * worst / kept,
    }
    assert losses.keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(losses[key], value, rtol=1e-4, atol=1e-6, msg=key)
    assert set(metrics) == {"codebook_entropy", "codewords_dead", "codewords_revived"}


def test_padded_frames_only_reach_the_commitment_term(make_tokenizer_config: MakeConfig) -> None:
    tokenizer = Tokenizer(make_tokenizer_config()).eval()
    mask = torch.tensor([[False, True, True, True]])
    batch = make_batch(1, 4, 16, 5, mask)
    losses, _ = tokenizer.compute_loss(batch)
    batch.obs[0, 0] = 255 - batch.obs[0, 0]
    changed, _ = tokenizer.compute_loss(batch)
    assert not torch.equal(losses["commitment_loss"], changed["commitment_loss"])
    for key in ("reconstruction_loss_l2", "reconstruction_loss_l1", "reconstruction_loss_l2_worst_pixel"):
        torch.testing.assert_close(changed[key], losses[key])


def test_training_step_updates_codebook_and_reaches_the_encoder(make_tokenizer_config: MakeConfig) -> None:
    tokenizer = Tokenizer(make_tokenizer_config()).train()
    codebook = tokenizer.quantizer.codebook.clone()
    losses, metrics = tokenizer.compute_loss(make_batch(2, 3, 16, 5))
    assert not torch.equal(tokenizer.quantizer.codebook, codebook)
    assert all(v.ndim == 0 for v in [*losses.values(), *metrics.values()])
    # The reconstruction term alone reaches the encoder only through the straight-through estimator.
    losses["reconstruction_loss_l2"].backward()
    for module in (tokenizer.encoder, tokenizer.quantizer.pre_quant_proj, tokenizer.encoder_act_emb):
        grads = [p.grad for p in module.parameters()]
        assert (
            all(g is not None for g in grads)
            and sum(float(g.abs().sum()) for g in grads if g is not None) > 0
        )


@pytest.mark.parametrize(("preset", "decoder_in"), [("crafter", 76), ("atari", 84)])
def test_paper_sizes_forward_backward(preset: str, decoder_in: int, presets: dict[str, IrisConfig]) -> None:
    config = presets[preset].tokenizer
    assert config.num_actions is not None
    tokenizer = Tokenizer(config)
    assert tokenizer.decoder.in_channels == decoder_in
    assert tokenizer.encoder_act_emb.weight.shape == (config.num_actions, 64 * 64)
    assert tokenizer.decoder_act_emb.weight.shape == (config.num_actions, 4 * 8 * 8)
    assert tokenizer.quantizer.pre_quant_proj.weight.shape == (64, 1024)
    assert tokenizer.quantizer.codebook.shape == (1024, 64)
    losses, _ = tokenizer.compute_loss(make_batch(1, 2, 64, config.num_actions))
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in tokenizer.parameters())


def test_seeded_training_steps_are_bit_identical(make_tokenizer_config: MakeConfig) -> None:
    # Revival draws random codes and vectors: a collapsed usage makes every step revive.
    results = []
    for _ in range(2):
        torch.manual_seed(3)
        tokenizer = Tokenizer(make_tokenizer_config(max_codebook_updates_with_revival=None))
        tokenizer.quantizer.codewords_freqs.zero_()[0] = 1.0
        losses, metrics = tokenizer.compute_loss(make_batch(2, 3, 16, 5))
        assert metrics["codewords_revived"] > 0
        results.append((losses, tokenizer.quantizer.codebook.clone()))
    for key in results[0][0]:
        assert torch.equal(results[0][0][key], results[1][0][key]), key
    assert torch.equal(results[0][1], results[1][1])
