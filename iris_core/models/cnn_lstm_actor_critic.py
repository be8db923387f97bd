"""The policy/value network: frame CNN → LSTMCell → actor and critic heads (docs/models.md §4).

It reads pixels only (real frames in the environment, decoded frames in imagination), one frame
per call, and keeps its recurrent state ``(hx, cx)`` inside the module: ``reset(n)`` zeroes it for
``n`` parallel streams, ``clear()`` drops it. Glossary: ``obs`` frames float in [0, 1],
``logits_act`` (N, num_actions), ``value_out`` (N, num_value_outputs): 255 two-hot logits over
symlog values (Crafter) or one scalar value (Atari).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange
from torch import Tensor, nn

from iris_core.config import ActorCriticConfig
from iris_core.models.convnet import FrameEncoder

LstmState = tuple[Tensor, Tensor]


@dataclass
class ActorCriticOutput:
    logits_act: Tensor  # (N, num_actions)
    value_out: Tensor  # (N, num_value_outputs)


class CnnLstmActorCritic(nn.Module):
    def __init__(self, config: ActorCriticConfig, image_channels: int) -> None:
        super().__init__()
        assert config.num_actions is not None, "set num_actions (IrisConfig.with_num_actions) first"
        self.config = config
        self.frame_encoder = FrameEncoder(config.frame_encoder, in_channels=image_channels)
        self.lstm = nn.LSTMCell(config.lstm_input_dim, config.lstm_dim)
        self.actor_linear = nn.Linear(config.lstm_dim, config.num_actions)
        self.critic_linear = nn.Linear(config.lstm_dim, config.num_value_outputs)
        # A zero critic predicts value 0 everywhere at the start (both for two-hot and scalar).
        nn.init.zeros_(self.critic_linear.weight)
        nn.init.zeros_(self.critic_linear.bias)
        self.hx: Tensor | None = None
        self.cx: Tensor | None = None

    # --- recurrent state ----------------------------------------------------------------------

    def reset(self, n: int) -> None:
        """Zero state for ``n`` streams (on the module's device)."""
        device = self.lstm.weight_hh.device
        self.hx = torch.zeros(n, self.config.lstm_dim, device=device)
        self.cx = torch.zeros(n, self.config.lstm_dim, device=device)

    def clear(self) -> None:
        self.hx, self.cx = None, None

    @property
    def state(self) -> LstmState:
        assert self.hx is not None and self.cx is not None, "no recurrent state: call reset(n) first"
        return self.hx, self.cx

    @state.setter
    def state(self, state: LstmState) -> None:
        self.hx, self.cx = state

    # --- forward ------------------------------------------------------------------------------

    def encode(self, obs: Tensor) -> Tensor:
        """``(N, C, H, W)`` frames → ``(N, lstm_input_dim)`` features, the map flattened (h, w, c)."""
        assert obs.ndim == 4, f"expected (N, C, H, W) frames, got {tuple(obs.shape)}"
        features: Tensor = rearrange(self.frame_encoder(obs), "n c h w -> n (h w c)")
        return features

    def step(self, features: Tensor) -> ActorCriticOutput:
        """One LSTM step on ``(N, lstm_input_dim)`` features; updates the state, returns the heads."""
        hx, cx = self.state
        assert features.shape == (hx.size(0), self.config.lstm_input_dim), (
            f"expected ({hx.size(0)}, {self.config.lstm_input_dim}) features, got {tuple(features.shape)}"
        )
        self.hx, self.cx = self._lstm(features, (hx, cx))
        return ActorCriticOutput(self.actor_linear(self.hx), self.critic_linear(self.hx))

    def _lstm(self, features: Tensor, state: LstmState) -> LstmState:
        # The recurrent state stays float32 under any autocast: rounding it to bf16 at every step
        # would compound over the burn-in and the horizon.
        device_type = features.device.type
        if device_type in ("cpu", "cuda") and torch.is_autocast_enabled(device_type):
            with torch.autocast(device_type, enabled=False):
                hx, cx = self.lstm(features.float(), state)
        else:
            hx, cx = self.lstm(features, state)
        return hx, cx

    def step_rows(self, features: Tensor, rows: Tensor) -> ActorCriticOutput:
        """:meth:`step` for the streams ``rows`` only (``features`` holds theirs, in that order);
        the other streams' states stay as they are."""
        hx, cx = self.state
        assert features.shape == (rows.numel(), self.config.lstm_input_dim), (
            tuple(features.shape),
            tuple(rows.shape),
        )
        h, c = self._lstm(features, (hx[rows], cx[rows]))
        self.hx, self.cx = hx.index_copy(0, rows, h), cx.index_copy(0, rows, c)
        return ActorCriticOutput(self.actor_linear(h), self.critic_linear(h))

    def forward(self, obs: Tensor) -> ActorCriticOutput:
        """One frame per stream: ``(N, C, H, W)`` → heads after consuming it."""
        return self.step(self.encode(obs))

    def unroll(self, obs: Tensor) -> ActorCriticOutput:
        """Consume ``(N, T, C, H, W)`` frames in order → heads ``(N, T, ·)``.

        The CNN sees all N·T frames in one batch (it has no recurrence); only the LSTM is sequential.
        """
        assert obs.ndim == 5, f"expected (N, T, C, H, W) frames, got {tuple(obs.shape)}"
        n, t = obs.shape[:2]
        if t == 0:
            device = self.lstm.weight_hh.device
            return ActorCriticOutput(
                torch.zeros(n, 0, self.actor_linear.out_features, device=device),
                torch.zeros(n, 0, self.critic_linear.out_features, device=device),
            )
        features = self.encode(obs.flatten(0, 1)).view(n, t, -1)
        outputs = [self.step(x) for x in features.unbind(dim=1)]
        return ActorCriticOutput(
            torch.stack([o.logits_act for o in outputs], dim=1),
            torch.stack([o.value_out for o in outputs], dim=1),
        )

    @torch.no_grad()
    def burn_in(self, obs: Tensor) -> None:
        """Advance the state over ``(N, T, C, H, W)`` real frames, without gradients."""
        self.unroll(obs)
