"""The world model as an environment: burn in on real frames, then step it with any actions.

Glossary as in ``iris_core.rl.imagination``: ``obs`` frames float in [0, 1], ``act`` actions,
``rew`` predicted rewards, ``end`` sampled terminations, ``latent_tokens`` the K Δ-tokens of a
step. One step feeds [ΔK of the previous step, I-token of the current frame, action], reads the
reward, the end and Δ1 at the action position, samples Δ2..ΔK one token at a time, and decodes
the next frame from (current frame, action, Δ-tokens) with the tokenizer.

The KV cache holds ``max_blocks`` blocks. When the next step would not fit, the context is
rebuilt: the cache is emptied and burnt in again on the last ``context_frames`` frames and the
actions between them (the paper code instead restarts from the current frame alone). So a long
rollout keeps a short memory of what it dreamed, never the whole episode.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from iris_core.models.kv_cache import KVCache
from iris_core.models.tokenizer import Tokenizer
from iris_core.models.world_model import WorldModel
from iris_core.rl.imagination import sample_categorical
from iris_core.rl.twohot import bucket_expectation, symexp


@dataclass
class DreamStep:
    obs: Tensor  # (B, C, H, W) float, the decoded next frame
    rew: Tensor  # (B,) float, predicted reward of (current frame, action)
    end: Tensor  # (B,) long, sampled termination
    end_prob: Tensor  # (B,) float, predicted probability of termination
    latent_tokens: Tensor  # (B, K) long, the sampled Δ-tokens the frame was decoded from


class WorldModelEnv:
    def __init__(self, tokenizer: Tokenizer, world_model: WorldModel, context_frames: int) -> None:
        assert not tokenizer.training and not world_model.training, "use eval-mode models"
        max_blocks = world_model.config.transformer.max_blocks
        assert max_blocks is not None and max_blocks >= 2, max_blocks
        self.tokenizer = tokenizer
        self.world_model = world_model
        # A context of c frames takes c−1 blocks plus an I-token; a step then needs K more tokens.
        self.context_frames = max(1, min(context_frames, max_blocks - 1))
        self.num_latent_tokens = world_model.num_latent_tokens
        self.kv_cache: KVCache | None = None
        self.frames: list[Tensor] = []  # (B, C, H, W) each: the recent frames, current one last
        self.actions: list[Tensor] = []  # (B,) each: the actions between consecutive frames
        self.pending: list[Tensor] = []  # embeddings to feed before the next action
        self.num_rebuilds = 0

    @property
    def obs(self) -> Tensor:
        """The current frame ``(B, C, H, W)``."""
        return self.frames[-1]

    @torch.no_grad()
    def reset(self, obs: Tensor, act: Tensor) -> Tensor:
        """Burn in on real frames ``obs`` ``(B, T, C, H, W)`` in [0, 1] and the ``(B, T−1)`` actions
        between them; returns the current frame ``obs[:, -1]``. Only the last ``context_frames``
        frames are fed (all of them when they fit)."""
        b, t = obs.shape[:2]
        assert obs.ndim == 5 and act.shape == (b, t - 1) and act.dtype == torch.long
        self.frames = list(obs.unbind(1))
        self.actions = list(act.unbind(1))
        self.kv_cache = self.world_model.new_kv_cache(b)
        self._burn_in()
        return self.obs

    def _burn_in(self) -> None:
        assert self.kv_cache is not None
        self.frames = self.frames[-self.context_frames :]
        self.actions = self.actions[len(self.actions) - (len(self.frames) - 1) :]
        self.kv_cache.reset()
        if not self.actions:  # a single frame: its I-token alone
            self.world_model(self.world_model.embed_frames(self.obs)[:, None], self.kv_cache)
        else:
            obs, act = torch.stack(self.frames, dim=1), torch.stack(self.actions, dim=1)
            self.world_model.burn_in(obs, act, self.tokenizer.burn_in(obs, act), self.kv_cache)
        self.pending = []  # the I-token of the current frame was fed by the burn-in

    @torch.no_grad()
    def step(self, action: Tensor) -> DreamStep:
        """Act ``(B,)`` long in the dream; returns the next frame, reward and end."""
        wm, kv_cache = self.world_model, self.kv_cache
        assert kv_cache is not None, "reset first"
        assert action.shape == (kv_cache.batch_size,) and action.dtype == torch.long, action
        if kv_cache.num_tokens_left < len(self.pending) + self.num_latent_tokens:
            self.num_rebuilds += 1
            self._burn_in()
        inputs = torch.cat([*self.pending, wm.act_emb(action)[:, None]], dim=1)
        out = wm(inputs, kv_cache)[:, -1]  # the action position
        logits_rewards = wm.head_rewards(out)
        if wm.config.two_hot_rews:
            rew = symexp(bucket_expectation(logits_rewards.float(), wm.config.reward_support).float())
        else:
            rew = (sample_categorical(logits_rewards) - 1).float()  # sign classes −1, 0, 1
        logits_ends = wm.head_ends(out)
        end = sample_categorical(logits_ends)
        end_prob = F.softmax(logits_ends.float(), dim=-1)[:, 1]

        latent_tokens = [sample_categorical(wm.head_latents(out))]
        for _ in range(self.num_latent_tokens - 1):
            out = wm(wm.latents_emb(latent_tokens[-1])[:, None], kv_cache)[:, -1]
            latent_tokens.append(sample_categorical(wm.head_latents(out)))
        tokens = torch.stack(latent_tokens, dim=1)

        next_obs = self.tokenizer.decode_tokens(self.obs, action, tokens, should_clamp=True)
        self.pending = [wm.latents_emb(tokens[:, -1])[:, None], wm.embed_frames(next_obs)[:, None]]
        # Only what a rebuilt context needs is kept.
        self.frames = [*self.frames, next_obs][-self.context_frames :]
        self.actions = [*self.actions, action][len(self.actions) + 1 - (len(self.frames) - 1) :]
        return DreamStep(next_obs, rew, end, end_prob, tokens)
