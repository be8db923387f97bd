"""The context-aware tokenizer: a conditional VQ autoencoder of transitions (docs/models.md §2).

Glossary: ``obs_prev`` x_t, ``act`` a_t, ``obs_next`` x_{t+1}, all frames float in [0, 1]
``(N, C, H, W)``; ``tokens`` the ``num_tokens`` Δ-token indices of a transition ``(N, K)``;
``q`` their quantised vectors ``(N, K, codebook_dim)``.

The encoder sees (x_t, a_t, x_{t+1}) and the decoder rebuilds x_{t+1} from (x_t, a_t, tokens),
so the tokens only carry what the context does not predict. The action conditions each side
differently: a learned full-resolution plane for the encoder, a learned
``decoder_act_channels``×8×8 tensor for the decoder.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange
from torch import Tensor, nn

from iris_core.config import TokenizerConfig
from iris_core.data.structures import Batch
from iris_core.models.convnet import FrameDecoder, FrameEncoder
from iris_core.models.initialization import init_weights
from iris_core.models.quantizer import Quantizer, QuantizerOutput

# The 8×8 latent map is cut into a (h × w) grid of tokens; each token is its (k × l) patch
# flattened in (patch-row, patch-col, channel) order (docs/models.md §2).
MAP_TO_PATCHES = "n c (h k) (w l) -> n (h w) (k l c)"
PATCHES_TO_MAP = "n (h w) (k l c) -> n c (h k) (w l)"


@dataclass
class TokenizerEncoding:
    tokens: Tensor  # (N, K) long
    q: Tensor  # (N, K, codebook_dim) straight-through quantised vectors
    commitment_loss: Tensor  # () weighted, over every transition (padding included)
    codebook_entropy: Tensor  # () bits
    codewords_dead: Tensor  # () long, dead codes found by this call's codebook update
    codewords_revived: Tensor  # () long, of which replaced


class Tokenizer(nn.Module):
    def __init__(self, config: TokenizerConfig) -> None:
        super().__init__()
        assert config.num_actions is not None, "set num_actions (IrisConfig.with_num_actions) first"
        self.config = config
        latent_res = config.latent_resolution
        self.encoder_act_emb = nn.Embedding(config.num_actions, config.image_size**2)
        self.decoder_act_emb = nn.Embedding(config.num_actions, config.decoder_act_channels * latent_res**2)
        self.encoder = FrameEncoder(config.encoder, in_channels=config.encoder_in_channels)
        self.quantizer = Quantizer(config)
        self.frame_cnn = FrameEncoder(config.frame_cnn, in_channels=config.image_channels)
        self.decoder = FrameDecoder(config.decoder, out_channels=config.image_channels)
        self.apply(init_weights)

    def _check_transition(self, obs_prev: Tensor, act: Tensor) -> None:
        c, s = self.config.image_channels, self.config.image_size
        assert obs_prev.ndim == 4 and obs_prev.shape[1:] == (c, s, s), tuple(obs_prev.shape)
        assert act.shape == obs_prev.shape[:1] and act.dtype == torch.long, (tuple(act.shape), act.dtype)

    def to_patches(self, latent_map: Tensor) -> Tensor:
        """``(N, latent_dim, 8, 8)`` encoder map → ``(N, K, token_dim)`` token patch vectors."""
        return rearrange(
            latent_map, MAP_TO_PATCHES, h=self.config.tokens_grid_res, w=self.config.tokens_grid_res
        )

    def to_map(self, patches: Tensor) -> Tensor:
        """Exact inverse of :meth:`to_patches`."""
        res = self.config.token_res
        return rearrange(patches, PATCHES_TO_MAP, h=self.config.tokens_grid_res, k=res, l=res)

    def encode(self, obs_prev: Tensor, act: Tensor, obs_next: Tensor) -> TokenizerEncoding:
        """Tokens of the transitions x_t →(a_t) x_{t+1}. Updates the codebook in training mode."""
        self._check_transition(obs_prev, act)
        assert obs_next.shape == obs_prev.shape, (tuple(obs_next.shape), tuple(obs_prev.shape))
        act_plane = rearrange(self.encoder_act_emb(act), "n (h w) -> n 1 h w", h=self.config.image_size)
        latent_map = self.encoder(torch.cat((obs_prev, act_plane, obs_next), dim=1))
        out: QuantizerOutput = self.quantizer(self.to_patches(latent_map))
        return TokenizerEncoding(
            out.tokens,
            out.q,
            out.commitment_loss,
            out.codebook_entropy,
            out.codewords_dead,
            out.codewords_revived,
        )

    def decode(self, obs_prev: Tensor, act: Tensor, q: Tensor, should_clamp: bool) -> Tensor:
        """``(N, K, codebook_dim)`` quantised vectors → x_{t+1} ``(N, C, H, W)``.

        ``should_clamp`` (inference only, docs/models.md §1) clamps to [0, 1] and rounds to multiples of
        1/255, so decoded frames look like stored ones; the training loss sees the raw output.
        """
        self._check_transition(obs_prev, act)
        assert q.shape == (act.size(0), self.config.num_tokens, self.config.codebook_dim), tuple(q.shape)
        q_map = self.to_map(self.quantizer.post_quant_proj(q))
        context = self.frame_cnn(obs_prev)
        act_tensor = rearrange(
            self.decoder_act_emb(act), "n (c h w) -> n c h w", h=context.size(2), w=context.size(3)
        )
        obs_next: Tensor = self.decoder(
            torch.cat((context, act_tensor.to(context.dtype), q_map.to(context.dtype)), dim=1)
        )
        if should_clamp:
            # In float32: multiples of 1/255 are not representable in bfloat16.
            obs_next = obs_next.float().clamp(0.0, 1.0).mul(255).round().div(255)
        return obs_next

    def embed_tokens(self, tokens: Tensor) -> Tensor:
        """``(N, K)`` token indices → ``(N, K, codebook_dim)`` codebook rows (input of :meth:`decode`)."""
        return self.quantizer.embed_tokens(tokens)

    def decode_tokens(
        self, obs_prev: Tensor, act: Tensor, tokens: Tensor, should_clamp: bool = True
    ) -> Tensor:
        return self.decode(obs_prev, act, self.embed_tokens(tokens), should_clamp)

    def compute_loss(self, batch: Batch) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Weighted loss terms (their sum is the objective) and metrics, as device tensors.

        Teacher-forced over the T−1 transitions of each segment. The reconstruction error counts
        only transitions whose two frames are real (docs/models.md §2); the commitment term counts all.
        """
        cfg = self.config
        obs = batch.obs_float()
        b, t = batch.act.shape
        obs_prev = obs[:, :-1].flatten(0, 1)
        obs_next = obs[:, 1:].flatten(0, 1)
        act = batch.act[:, :-1].flatten()

        encoding = self.encode(obs_prev, act, obs_next)
        reconstruction = self.decode(obs_prev, act, encoding.q, should_clamp=False)

        both_real = (batch.mask_padding[:, :-1] & batch.mask_padding[:, 1:]).flatten().to(obs.dtype)  # (N,)
        num_real = both_real.sum().clamp(min=1)
        delta = (obs_next - reconstruction).flatten(1)  # (N, C·H·W)
        per_transition_l2 = delta.pow(2).mean(dim=1)
        per_transition_l1 = delta.abs().mean(dim=1)
        per_transition_worst = delta.pow(2).amax(dim=1)

        def masked_mean(per_transition: Tensor) -> Tensor:
            # A sum over a 0/1 mask rather than boolean indexing: no device-to-host sync.
            return (per_transition * both_real).sum() / num_real

        losses = {
            "commitment_loss": encoding.commitment_loss,
            "reconstruction_loss_l2": cfg.l2_weight * masked_mean(per_transition_l2),
            "reconstruction_loss_l1": cfg.l1_weight * masked_mean(per_transition_l1),
            "reconstruction_loss_l2_worst_pixel": cfg.worst_pixel_weight * masked_mean(per_transition_worst),
        }
        metrics = {
            "codebook_entropy": encoding.codebook_entropy,
            "codewords_dead": encoding.codewords_dead,  # what the reference code logs as revived
            "codewords_revived": encoding.codewords_revived,
        }
        assert delta.size(0) == b * (t - 1)
        return losses, metrics

    @torch.no_grad()
    def burn_in(self, obs: Tensor, act: Tensor) -> Tensor:
        """Tokens of the real transitions before imagination.

        ``obs`` ``(B, T, C, H, W)``, ``act`` ``(B, T−1)`` → ``(B, T−1, K)``; eval mode, no gradients.
        """
        assert not self.training, "burn_in must not update the codebook: call tokenizer.eval() first"
        b, t = obs.shape[:2]
        assert obs.ndim == 5 and act.shape == (b, t - 1), (tuple(obs.shape), tuple(act.shape))
        encoding = self.encode(obs[:, :-1].flatten(0, 1), act.flatten(), obs[:, 1:].flatten(0, 1))
        return encoding.tokens.reshape(b, t - 1, self.config.num_tokens)
