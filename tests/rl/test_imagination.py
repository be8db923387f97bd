"""Imagination: full-context oracle, context use, decoded frames fed back."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor

from iris_core.config import (
    FrameCnnConfig,
    TokenizerConfig,
    TransformerConfig,
    TwoHotConfig,
    WorldModelConfig,
)
from iris_core.models.kv_cache import KVCache
from iris_core.models.tokenizer import Tokenizer
from iris_core.models.world_model import WorldModel
from iris_core.rl.imagination import imagine, sample_categorical
from iris_core.rl.twohot import bucket_expectation, symexp

A, B, T, H, K = 5, 3, 3, 4, 4  # actions, batch, real frames (T−1 burn-in transitions), horizon, tokens


def tiny_models(max_blocks: int = T + H, two_hot_rews: bool = True) -> tuple[Tokenizer, WorldModel]:
    def cnn(latent_dim: int | None) -> FrameCnnConfig:
        return FrameCnnConfig(num_channels=8, mult=(1, 2), down=(1, 1), latent_dim=latent_dim, norm_groups=4)

    tokenizer_config = TokenizerConfig(
        image_size=16,
        num_actions=A,
        decoder_act_channels=2,
        codebook_size=32,
        codebook_dim=8,
        encoder=cnn(8),
        decoder=cnn(None),
        frame_cnn=cnn(4),
    )
    transformer = TransformerConfig(
        max_blocks=max_blocks, tokens_per_block=6, num_layers=2, num_heads=2, embed_dim=32
    )
    world_model_config = WorldModelConfig(
        image_size=16,
        latent_vocab_size=32,
        num_latent_tokens=K,
        num_actions=A,
        two_hot_rews=two_hot_rews,
        reward_support=TwoHotConfig(num_buckets=15, low=-3.0, high=3.0),
        transformer=transformer,
        frame_cnn=cnn(2),  # 2 × 4 × 4 = 32 = embed_dim
    )
    tokenizer, world_model = Tokenizer(tokenizer_config), WorldModel(world_model_config)
    return tokenizer.eval(), world_model.eval()


def random_policy(frame: Tensor) -> Tensor:
    return torch.randint(0, A, (frame.size(0),))


def inputs() -> tuple[Tensor, Tensor]:
    return torch.rand(B, T, 3, 16, 16), torch.randint(0, A, (B, T - 1))


@torch.no_grad()
def full_context_oracle(
    tokenizer: Tokenizer,
    world_model: WorldModel,
    policy: Callable[[Tensor], Tensor],
    obs: Tensor,
    act: Tensor,
) -> dict[str, Tensor]:
    """The rollout re-running the whole token sequence at every query, without a KV cache."""
    frames = world_model.embed_frames(obs.flatten(0, 1)).reshape(B, T, -1)
    tokens = tokenizer.burn_in(obs, act)
    sequence = [world_model.embed_blocks(frames[:, :-1], act, tokens), frames[:, -1:]]
    frame = obs[:, -1]
    out: dict[str, list[Tensor]] = {"obs": [frame], "act": [], "rew": [], "end": []}
    for _ in range(H):
        action = policy(frame)
        sequence.append(world_model.act_emb(action)[:, None])
        last = world_model(torch.cat(sequence, dim=1))[:, -1]
        logits_rewards = world_model.head_rewards(last)
        if world_model.config.two_hot_rews:
            reward = symexp(bucket_expectation(logits_rewards, world_model.config.reward_support))
        else:
            reward = sample_categorical(logits_rewards).float() - 1
        end = sample_categorical(world_model.head_ends(last))
        latents = [sample_categorical(world_model.head_latents(last))]
        for _ in range(K - 1):
            sequence.append(world_model.latents_emb(latents[-1])[:, None])
            latents.append(
                sample_categorical(world_model.head_latents(world_model(torch.cat(sequence, dim=1))[:, -1]))
            )
        sequence.append(world_model.latents_emb(latents[-1])[:, None])
        frame = tokenizer.decode_tokens(frame, action, torch.stack(latents, dim=1), should_clamp=True)
        sequence.append(world_model.embed_frames(frame)[:, None])
        for key, value in zip(out, (frame, action, reward, end), strict=True):
            out[key].append(value)
    return {key: torch.stack(values, dim=1) for key, values in out.items()}


@pytest.mark.parametrize("two_hot_rews", [True, False])
def test_rollout_equals_a_full_context_oracle(two_hot_rews: bool) -> None:
    tokenizer, world_model = tiny_models(two_hot_rews=two_hot_rews)
    obs, act = inputs()
    torch.manual_seed(1)
    rollout = imagine(tokenizer, world_model, random_policy, obs, act, H)
    torch.manual_seed(1)
    expected = full_context_oracle(tokenizer, world_model, random_policy, obs, act)
    assert rollout.obs.shape == (B, H + 1, 3, 16, 16)
    assert rollout.act.shape == rollout.rew.shape == rollout.end.shape == (B, H)
    assert rollout.act.dtype == rollout.end.dtype == torch.long and rollout.rew.dtype == torch.float32
    assert torch.equal(rollout.act, expected["act"]) and torch.equal(rollout.end, expected["end"])
    torch.testing.assert_close(rollout.rew, expected["rew"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(rollout.obs, expected["obs"], atol=1e-6, rtol=0)
    if not two_hot_rews:
        assert set(rollout.rew.unique().tolist()) <= {-1.0, 0.0, 1.0}
    assert set(rollout.end.unique().tolist()) <= {0, 1}


def test_uses_burn_in_plus_horizon_plus_one_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    tokenizer, world_model = tiny_models(max_blocks=T + H)  # (T − 1) + H + 1 blocks exactly
    fed: list[tuple[int, int]] = []
    forward = world_model.forward

    def spy(sequence: Tensor, kv_cache: KVCache | None = None) -> Tensor:
        assert kv_cache is not None
        fed.append((kv_cache.size, sequence.size(1)))
        return forward(sequence, kv_cache)

    monkeypatch.setattr(world_model, "forward", spy)
    imagine(tokenizer, world_model, random_policy, *inputs(), H)
    # Burn-in [I, a, Δ×4]×(T−1) + I_T, then [a], Δ1..Δ3, and per later step [Δ4, I, a], Δ1..Δ3.
    expected_calls = [(0, 6 * (T - 1) + 1)]
    for step in range(H):
        start = expected_calls[-1][0] + expected_calls[-1][1]
        expected_calls.append((start, 1 if step == 0 else 3))
        expected_calls += [(start + expected_calls[-1][1] + j, 1) for j in range(K - 1)]
    assert fed == expected_calls
    assert sum(n for _, n in fed) == 6 * (T - 1 + H) - 1  # the last frame's I-token is never fed
    too_short = tiny_models(max_blocks=T + H - 1)
    with pytest.raises(AssertionError, match="exceed"):
        imagine(*too_short, random_policy, *inputs(), H)


def test_decoded_quantised_frames_are_fed_back(monkeypatch: pytest.MonkeyPatch) -> None:
    tokenizer, world_model = tiny_models()
    obs, act = inputs()
    seen_by_policy: list[Tensor] = []
    decoded_from: list[Tensor] = []
    i_tokens: list[Tensor] = []
    decode_tokens, forward = tokenizer.decode_tokens, world_model.forward

    def policy(frame: Tensor) -> Tensor:
        seen_by_policy.append(frame)
        return random_policy(frame)

    def spy_decode(obs_prev: Tensor, act: Tensor, tokens: Tensor, should_clamp: bool = True) -> Tensor:
        assert should_clamp
        decoded_from.append(obs_prev)
        return decode_tokens(obs_prev, act, tokens, should_clamp)

    def spy_forward(sequence: Tensor, kv_cache: KVCache | None = None) -> Tensor:
        if sequence.size(1) == 3:  # [Δ4, I, a]
            i_tokens.append(sequence[:, 1])
        return forward(sequence, kv_cache)

    monkeypatch.setattr(tokenizer, "decode_tokens", spy_decode)
    monkeypatch.setattr(world_model, "forward", spy_forward)
    rollout = imagine(tokenizer, world_model, policy, obs, act, H)
    assert torch.equal(rollout.obs[:, 0], obs[:, -1])
    assert torch.equal(torch.stack(seen_by_policy, dim=1), rollout.obs[:, :-1])
    assert torch.equal(torch.stack(decoded_from, dim=1), rollout.obs[:, :-1])
    with torch.no_grad():
        for step, i_token in enumerate(i_tokens, start=1):
            torch.testing.assert_close(i_token, world_model.embed_frames(rollout.obs[:, step]))
    imagined = rollout.obs[:, 1:]
    assert imagined.min() >= 0 and imagined.max() <= 1
    torch.testing.assert_close(imagined * 255, (imagined * 255).round(), atol=1e-4, rtol=0)


def test_seeded_runs_are_bit_identical_and_models_stay_frozen() -> None:
    tokenizer, world_model = tiny_models()
    obs, act = inputs()
    state = {k: v.clone() for k, v in tokenizer.state_dict().items()}
    rollouts = []
    for _ in range(2):
        torch.manual_seed(7)
        rollouts.append(imagine(tokenizer, world_model, random_policy, obs, act, H))
    for field in ("obs", "act", "rew", "end"):
        assert torch.equal(getattr(rollouts[0], field), getattr(rollouts[1], field)), field
    assert all(torch.equal(v, state[k]) for k, v in tokenizer.state_dict().items())
    with pytest.raises(AssertionError, match="eval"):
        imagine(tokenizer, world_model.train(), random_policy, obs, act, H)


def test_the_rollout_records_no_graph() -> None:
    """A pure no-grad pass: the policy runs without autograd, no output carries a graph."""
    tokenizer, world_model = tiny_models()
    weight = torch.zeros(A, requires_grad=True)
    grad_enabled: list[bool] = []

    def policy(frame: Tensor) -> Tensor:
        grad_enabled.append(torch.is_grad_enabled())
        logits = frame.mean(dim=(1, 2, 3))[:, None] * weight
        return torch.multinomial(torch.softmax(logits, -1), 1).squeeze(-1)

    rollout = imagine(tokenizer, world_model, policy, *inputs(), H)
    assert grad_enabled == [False] * H
    assert not any(getattr(rollout, f).requires_grad for f in ("obs", "act", "rew", "end"))


def test_sample_categorical_follows_the_softmax() -> None:
    logits = torch.tensor([[0.0, 1.0, 2.0, -1.0]]).expand(40_000, 4)
    counts = torch.bincount(sample_categorical(logits), minlength=4).float() / 40_000
    torch.testing.assert_close(counts, torch.softmax(logits[0], -1), atol=0.01, rtol=0)


def test_bf16_autocast_keeps_float32_quantised_outputs() -> None:
    tokenizer, world_model = tiny_models()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        rollout = imagine(tokenizer, world_model, random_policy, *inputs(), H)
    assert rollout.obs.dtype == rollout.rew.dtype == torch.float32
    imagined = rollout.obs[:, 1:]
    assert torch.equal(imagined, (imagined * 255).round() / 255)
