"""Imagination: rolling a policy out inside the frozen world model (docs/models.md §4).

Glossary: ``obs`` frames float in [0, 1], ``act`` actions, ``rew`` rewards, ``end`` sampled
terminations, ``latent_tokens`` Δ-tokens, H ``horizon``.

From T real frames (T−1 burn-in transitions): the tokenizer encodes the real transitions, the
world model reads [I, a, Δ×K]×(T−1) then I_T into a fresh KV cache. Then, per step, the policy
acts on the current frame; the world model is fed [ΔK of the previous step (if any), I-token of
the current frame (fed by the burn-in on the first step), action], and its output at the action
position gives the reward, the end and Δ1; K−1 single-token calls give Δ2..ΔK. ΔK is held back
and fed with the next step's I-token and action, since its own output has no use. The next frame
is decoded from (current frame, action, Δ-tokens), clamped and quantised like a stored frame.

The whole rollout runs without autograd and reads nothing back from the device: a pure function
of its inputs and the random stream, which compiles to one graph (the horizon is unrolled, the KV
cache has static shapes). A learner that back-propagates through the policy re-runs it over the
imagined frames afterwards (``ActorCritic.compute_loss``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from iris_core.models.tokenizer import Tokenizer
from iris_core.models.world_model import WorldModel
from iris_core.rl.twohot import bucket_expectation, symexp


@dataclass
class Imagination:
    obs: Tensor  # (B, H+1, C, H, W) float: obs[:, 0] the last real frame, then the decoded frames
    act: Tensor  # (B, H) long, the policy's actions
    rew: Tensor  # (B, H) float, reward after act[:, t]
    end: Tensor  # (B, H) long, 1 where the episode ends after act[:, t]


def sample_categorical(logits: Tensor) -> Tensor:
    """``(B, V)`` logits → ``(B,)`` samples of softmax(logits), i.e. at temperature 1.

    Gumbel-max: argmax(logits − log E) with E ~ Exp(1) is an exact categorical sample, and unlike
    ``torch.multinomial`` it never waits for the device to validate the probabilities.
    """
    noise = torch.empty_like(logits, dtype=torch.float32).exponential_().log()
    return (logits.float() - noise).argmax(dim=-1)


@torch.no_grad()
def imagine(
    tokenizer: Tokenizer,
    world_model: WorldModel,
    policy: Callable[[Tensor], Tensor],
    obs: Tensor,
    act: Tensor,
    horizon: int,
) -> Imagination:
    """Roll ``policy`` out for ``horizon`` steps after a burn-in on real frames and actions.

    ``obs`` ``(B, T, C, H, W)`` float in [0, 1], ``act`` ``(B, T−1)`` the burn-in actions.
    ``policy`` maps the current frame ``(B, C, H, W)`` to sampled actions ``(B,)``; it is called
    once per step, in order, first on the last real frame, without autograd.
    """
    b, t = obs.shape[:2]
    assert obs.ndim == 5 and act.shape == (b, t - 1) and act.dtype == torch.long, (
        tuple(obs.shape),
        tuple(act.shape),
    )
    assert horizon > 0
    assert not tokenizer.training and not world_model.training, "imagine with frozen (eval-mode) models"
    max_blocks = world_model.config.transformer.max_blocks
    assert max_blocks is not None and (t - 1) + horizon + 1 <= max_blocks, (
        f"burn-in {t - 1} + horizon {horizon} + 1 blocks exceed the world model's {max_blocks}"
    )
    two_hot_rews = world_model.config.two_hot_rews
    support = world_model.config.reward_support
    num_latent_tokens = world_model.num_latent_tokens

    kv_cache = world_model.new_kv_cache(b)
    world_model.burn_in(obs, act, tokenizer.burn_in(obs, act), kv_cache)

    frame = obs[:, -1]
    frames, actions, rewards, ends = [frame], [], [], []
    pending: list[Tensor] = []  # [ΔK embedding of the previous step, I-token of the current frame]
    for step in range(horizon):
        action = policy(frame)
        assert action.shape == (b,) and action.dtype == torch.long, (tuple(action.shape), action.dtype)
        inputs = torch.cat([*pending, world_model.act_emb(action)[:, None]], dim=1)
        out = world_model(inputs, kv_cache)[:, -1]  # action position
        logits_rewards = world_model.head_rewards(out)
        if two_hot_rews:
            reward = symexp(bucket_expectation(logits_rewards.float(), support).float())
        else:
            reward = (sample_categorical(logits_rewards) - 1).float()  # sign classes −1, 0, 1
        end = sample_categorical(world_model.head_ends(out))

        latent_tokens = [sample_categorical(world_model.head_latents(out))]
        for _ in range(num_latent_tokens - 1):
            out = world_model(world_model.latents_emb(latent_tokens[-1])[:, None], kv_cache)[:, -1]
            latent_tokens.append(sample_categorical(world_model.head_latents(out)))

        frame = tokenizer.decode_tokens(frame, action, torch.stack(latent_tokens, dim=1), should_clamp=True)
        if step < horizon - 1:  # the last frame's I-token would never be fed
            pending = [
                world_model.latents_emb(latent_tokens[-1])[:, None],
                world_model.embed_frames(frame)[:, None],
            ]

        frames.append(frame)
        actions.append(action)
        rewards.append(reward)
        ends.append(end)

    return Imagination(
        obs=torch.stack(frames, dim=1),
        act=torch.stack(actions, dim=1),
        rew=torch.stack(rewards, dim=1),
        end=torch.stack(ends, dim=1),
    )
