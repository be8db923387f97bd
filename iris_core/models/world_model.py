"""The world model: a causal transformer over blocks [I, a, Δ1..ΔK] (docs/models.md §3).

Glossary: ``obs`` frames ``(B, T, C, H, W)`` float in [0, 1], ``act`` actions, ``latent_tokens``
the tokenizer's Δ-tokens of each transition ``(B, T−1, K)``, ``rew`` rewards, ``end``
terminations. Per time step t the block is the I-token (a continuous embedding of x_t by the
world model's own CNN), the action token of a_t, and the K Δ-tokens of x_t → x_{t+1}.

Prediction map: the output at the action position gives the reward and the end of (x_t, a_t)
and Δ1; the output at Δk gives Δ(k+1); the output at ΔK is unused, and nothing predicts the next
I-token (imagination computes it from the decoded frame).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from iris_core.config import WorldModelConfig
from iris_core.data.structures import Batch
from iris_core.models.convnet import FrameEncoder
from iris_core.models.initialization import init_weights
from iris_core.models.kv_cache import KVCache
from iris_core.models.tokenizer import Tokenizer
from iris_core.models.transformer import Transformer
from iris_core.rl.twohot import symlog, two_hot


def _head(embed_dim: int, num_outputs: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(embed_dim, embed_dim), nn.ReLU(), nn.Linear(embed_dim, num_outputs))


class WorldModel(nn.Module):
    def __init__(self, config: WorldModelConfig) -> None:
        super().__init__()
        assert config.num_actions is not None, "set num_actions (IrisConfig.with_num_actions) first"
        assert config.latent_vocab_size is not None and config.num_latent_tokens is not None
        self.config = config
        tcfg = config.transformer
        assert tcfg.tokens_per_block == 2 + config.num_latent_tokens, "a block is [I, a, Δ1..ΔK]"
        embed_dim = tcfg.embed_dim
        self.num_latent_tokens = config.num_latent_tokens
        self.frame_cnn = FrameEncoder(config.frame_cnn, in_channels=config.image_channels)
        assert config.frame_cnn.output_size(config.image_size) == embed_dim, (
            "I-token size must equal embed_dim"
        )
        self.frame_ln = nn.LayerNorm(embed_dim)
        self.act_emb = nn.Embedding(config.num_actions, embed_dim)
        self.latents_emb = nn.Embedding(config.latent_vocab_size, embed_dim)
        self.transformer = Transformer(tcfg)
        self.head_latents = _head(embed_dim, config.latent_vocab_size)
        self.head_rewards = _head(embed_dim, config.num_reward_classes)
        self.head_ends = _head(embed_dim, 2)
        self.apply(init_weights)

    # --- embeddings ---------------------------------------------------------------------------

    def embed_frames(self, obs: Tensor) -> Tensor:
        """I-tokens: ``(N, C, H, W)`` → ``(N, E)``, the CNN map flattened in (h, w, c) order, then LN."""
        out: Tensor = self.frame_ln(rearrange(self.frame_cnn(obs), "n c h w -> n (h w c)"))
        return out

    def embed_blocks(self, frames: Tensor, act: Tensor, latent_tokens: Tensor) -> Tensor:
        """Blocks [I_t, a_t, Δ_t,1..K]: I-tokens ``(B, T, E)``, ``act`` ``(B, T)``, ``latent_tokens``
        ``(B, T, K)`` → ``(B, T·(K+2), E)``."""
        b, t = act.shape
        assert frames.shape[:2] == (b, t) and latent_tokens.shape == (b, t, self.num_latent_tokens)
        blocks = torch.cat(
            (frames[:, :, None], self.act_emb(act)[:, :, None], self.latents_emb(latent_tokens)), dim=2
        )
        return rearrange(blocks, "b t p e -> b (t p) e")

    # --- transformer ---------------------------------------------------------------------------

    def forward(self, sequence: Tensor, kv_cache: KVCache | None = None) -> Tensor:
        """``(B, n, E)`` embeddings → ``(B, n, E)`` transformer outputs at the fed positions."""
        out: Tensor = self.transformer(sequence, kv_cache)
        return out

    def new_kv_cache(self, batch_size: int) -> KVCache:
        return self.transformer.new_kv_cache(batch_size)

    @torch.no_grad()
    def burn_in(self, obs: Tensor, act: Tensor, latent_tokens: Tensor, kv_cache: KVCache) -> Tensor:
        """Feeds [I, a, Δ×K]×(T−1) then I_T of real frames into ``kv_cache``; returns the outputs.

        ``obs`` ``(B, T, C, H, W)``, ``act`` ``(B, T−1)``, ``latent_tokens`` ``(B, T−1, K)``.
        """
        b, t = obs.shape[:2]
        assert act.shape == (b, t - 1), (tuple(obs.shape), tuple(act.shape))
        frames = self.embed_frames(obs.flatten(0, 1)).reshape(b, t, -1)
        sequence = torch.cat((self.embed_blocks(frames[:, :-1], act, latent_tokens), frames[:, -1:]), dim=1)
        out: Tensor = self(sequence, kv_cache)
        return out

    # --- training ------------------------------------------------------------------------------

    def compute_loss(self, batch: Batch, tokenizer: Tokenizer) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Weighted loss terms (Δ-tokens, rewards, ends; their sum is the objective) and metrics."""
        cfg, k = self.config, self.num_latent_tokens
        assert not tokenizer.training, "the tokenizer must be in eval mode (no codebook update)"
        # At most one end per segment; checked on the device so the step does not wait for it.
        torch._assert_async(torch.all(batch.end.sum(dim=1) <= 1), "a segment holds more than one end")
        obs = batch.obs_float()
        b, t = batch.act.shape
        with torch.no_grad():
            encoding = tokenizer.encode(
                obs[:, :-1].flatten(0, 1), batch.act[:, :-1].flatten(), obs[:, 1:].flatten(0, 1)
            )
        latent_tokens = encoding.tokens.reshape(b, t - 1, k)

        # The last frame has no next frame: dummy Δ-tokens 0, whose predictions are dropped.
        inputs = torch.cat((latent_tokens, latent_tokens.new_zeros(b, 1, k)), dim=1)
        frames = self.embed_frames(obs.flatten(0, 1)).reshape(b, t, -1)  # I-tokens (B, T, E)
        outputs = self(self.embed_blocks(frames, batch.act, inputs)).reshape(
            b, t, k + 2, -1
        )  # (B, T, K+2, E)

        # Action position and Δ1..Δ(K−1) predict Δ1..ΔK of the next frame.
        logits_latents = self.head_latents(outputs[:, :-1, 1 : 1 + k])  # (B, T−1, K, V)
        logits_rewards = self.head_rewards(outputs[:, :, 1])  # (B, T, R)
        logits_ends = self.head_ends(outputs[:, :, 1])  # (B, T, 2)

        if cfg.two_hot_rews:
            labels_rewards = two_hot(symlog(batch.rew), cfg.reward_support)  # (B, T, R) soft targets
        else:
            labels_rewards = (batch.rew.sign() + 1).long()  # 3 sign classes
        ce_latents = F.cross_entropy(logits_latents.flatten(0, 2), latent_tokens.flatten(), reduction="none")
        ce_rewards = F.cross_entropy(
            logits_rewards.flatten(0, 1), labels_rewards.flatten(0, 1), reduction="none"
        )
        ce_ends = F.cross_entropy(logits_ends.flatten(0, 1), batch.end.flatten(), reduction="none")
        correct = (logits_latents.argmax(dim=-1) == latent_tokens).float()

        # Δ-tokens: transitions whose first frame is real, as the reference code masks them;
        # rewards, ends: real frames.
        mask_latents = batch.mask_padding[:, :-1, None].expand(b, t - 1, k).flatten().float()
        mask_frames = batch.mask_padding.flatten().float()
        losses = {
            "loss_latents": cfg.latents_weight * _masked_mean(ce_latents, mask_latents),
            "loss_rewards": cfg.rewards_weight * _masked_mean(ce_rewards, mask_frames),
            "loss_ends": cfg.ends_weight * _masked_mean(ce_ends, mask_frames),
        }
        metrics = {"latent_accuracy": _masked_mean(correct.flatten(), mask_latents)}
        return losses, metrics


def _masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``values`` where ``mask`` is 1 (0 when it is empty), without a device sync."""
    assert values.shape == mask.shape, (tuple(values.shape), tuple(mask.shape))
    return (values * mask).sum() / mask.sum().clamp(min=1)
