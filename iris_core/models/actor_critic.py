"""The actor-critic: an online CNN-LSTM trained in imagination, and its Polyak target (docs/models.md §4).

Glossary (H = ``imagination_horizon``): ``obs`` frames float in [0, 1]; ``act`` actions;
``rew`` imagined rewards (B, H); ``end`` imagined terminations (B, H); ``values`` target-network
values V(s_t); ``lambda_returns`` G_t (B, H).

One training step (``compute_loss``) reads as the paper: burn both LSTMs in on real frames, roll
the policy out in the frozen world model, compute λ-returns from target values, then the
REINFORCE-with-baseline, entropy and value terms over the steps up to the first imagined done.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from iris_core.config import ActorCriticConfig
from iris_core.data.structures import Batch
from iris_core.models.cnn_lstm_actor_critic import ActorCriticOutput, CnnLstmActorCritic
from iris_core.models.tokenizer import Tokenizer
from iris_core.models.world_model import WorldModel
from iris_core.rl.imagination import Imagination, imagine
from iris_core.rl.returns import compute_lambda_returns, mask_after_first_done
from iris_core.rl.twohot import bucket_expectation, symexp, symlog, two_hot


@contextmanager
def _eval_mode(*modules: nn.Module) -> Iterator[None]:
    """Imagination uses the frozen models in eval mode (no codebook update, docs/models.md §2)."""
    modes = [m.training for m in modules]
    try:
        for m in modules:
            m.eval()
        yield
    finally:
        for m, mode in zip(modules, modes, strict=True):
            m.train(mode)


def sample_actions(logits_act: Tensor, temperature: float) -> Tensor:
    """``(N, A)`` logits → ``(N,)`` actions drawn from softmax(logits / temperature), no host sync."""
    return torch.multinomial(F.softmax(logits_act / temperature, dim=-1), num_samples=1).squeeze(-1)


def _masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    # A weighted sum instead of boolean indexing: same mean, no device-to-host sync. The first
    # step of every rollout is always kept, so the count is never zero.
    weights = mask.to(x.dtype)
    return (x * weights).sum() / weights.sum()


class ActorCritic(nn.Module):
    def __init__(self, config: ActorCriticConfig, image_channels: int) -> None:
        super().__init__()
        self.config = config
        self.model = CnnLstmActorCritic(config, image_channels)
        self.target_model = copy.deepcopy(self.model)
        self.target_model.requires_grad_(False)
        # The rollout function; the optimisation layer may replace it by a compiled one.
        self.imagine: Callable[..., Imagination] = imagine

    # --- policy interface (environment collection and evaluation) ------------------------------

    def reset(self, n: int) -> None:
        """Zero the recurrent state of both networks for ``n`` parallel environments."""
        self.model.reset(n)
        self.target_model.reset(n)

    def clear(self) -> None:
        self.model.clear()
        self.target_model.clear()

    @torch.no_grad()
    def burn_in(self, obs: Tensor) -> None:
        """Advance the acting (online) network over ``(N, T, C, H, W)`` frames."""
        self.model.burn_in(obs)

    @torch.no_grad()
    def act(
        self, obs: Tensor, should_sample: bool = True, temperature: float = 1.0, rows: Tensor | None = None
    ) -> Tensor:
        """``(N, C, H, W)`` current frames → ``(N,)`` long actions; the LSTM state carries over.

        Sampled at ``temperature`` when ``should_sample`` (the test policy samples too, as the
        reference code does), else greedy. ``rows``: the streams these frames belong to, when only
        some act (the others keep their state); None: all of them.
        """
        assert temperature > 0, f"temperature must be > 0, got {temperature}"
        if rows is None:
            output: ActorCriticOutput = self.model(obs)
        else:
            output = self.model.step_rows(self.model.encode(obs), rows)
        if should_sample:
            return sample_actions(output.logits_act, temperature)
        return output.logits_act.argmax(dim=-1)

    # --- training ------------------------------------------------------------------------------

    @torch.no_grad()
    def update_target(self) -> None:
        """Polyak averaging: target ← τ·target + (1−τ)·online (docs/models.md §4, τ = ``target_tau``)."""
        target = [*self.target_model.parameters(), *self.target_model.buffers()]
        online = [*self.model.parameters(), *self.model.buffers()]
        torch._foreach_lerp_(target, online, 1.0 - self.config.target_tau)

    def imagination_policy(self, frame: Tensor) -> Tensor:
        """The online network acting in imagination: ``(B, C, H, W)`` → ``(B,)`` sampled actions."""
        return sample_actions(self.model(frame).logits_act, self.config.temperature)

    def values_from_output(self, value_out: Tensor) -> Tensor:
        """Critic outputs ``(*, num_value_outputs)`` → values ``(*)``."""
        if self.config.two_hot_rets:
            return symexp(bucket_expectation(value_out, self.config.value_support))
        return value_out[..., 0]

    def compute_loss(
        self, batch: Batch, tokenizer: Tokenizer, world_model: WorldModel
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Loss terms ``loss_actions``, ``loss_entropy``, ``loss_values`` and metric ``policy_entropy``.

        ``batch``: (B, burn_in_length + 1) segments ending on a real frame. Gradients reach the
        online network only, through time over the H imagined steps (not the burn-in). Updates
        the target network once, after its values were used.
        """
        cfg = self.config
        b, t = batch.act.shape
        assert t == cfg.burn_in_length + 1, f"expected segments of {cfg.burn_in_length + 1} frames, got {t}"
        obs = batch.obs_float()

        # Burn-in on the real frames, without gradients (docs/models.md §4; both networks).
        self.reset(b)
        self.model.burn_in(obs[:, :-1])
        self.target_model.burn_in(obs[:, :-1])
        burnt_in_state = self.model.state

        # Rollout in the frozen world model: a pure no-grad pass (docs/models.md §4).
        with _eval_mode(tokenizer, world_model):
            rollout = self.imagine(
                tokenizer,
                world_model,
                self.imagination_policy,
                obs,
                batch.act[:, :-1],
                cfg.imagination_horizon,
            )
        h = cfg.imagination_horizon
        assert rollout.obs.shape == (b, h + 1, *obs.shape[2:]), tuple(rollout.obs.shape)

        # Policy and values with autograd: one batched pass over the H imagined frames from the
        # burnt-in state (BPTT over the horizon). The frames carry no gradient, so this gives the
        # values and gradients of a rollout recorded step by step.
        self.model.state = burnt_in_state
        online = self.model.unroll(rollout.obs[:, :-1])
        logits_act, value_out = online.logits_act, online.value_out  # (B, H, A), (B, H, K)

        # λ-returns from the target network's values of the H visited frames and the bootstrap
        # value of the final frame (docs/models.md §4).
        with torch.no_grad():
            target_values = self.values_from_output(self.target_model.unroll(rollout.obs).value_out)
            values, bootstrap = target_values[:, :-1], target_values[:, -1]
            lambda_returns = compute_lambda_returns(
                rollout.rew, rollout.end, values, bootstrap, cfg.gamma, cfg.lambda_
            )
            mask = mask_after_first_done(rollout.end)
        self.clear()

        # Policy (REINFORCE with the target value as baseline), entropy and value terms.
        log_probs = F.log_softmax(logits_act.float(), dim=-1)
        log_prob_act = log_probs.gather(-1, rollout.act.unsqueeze(-1)).squeeze(-1)
        entropy = -(log_probs.exp() * log_probs).sum(dim=-1)
        # No return or advantage normalisation.
        loss_actions = _masked_mean(-log_prob_act * (lambda_returns - values), mask)
        policy_entropy = _masked_mean(entropy, mask)
        loss_entropy = -cfg.entropy_weight * policy_entropy
        if cfg.two_hot_rets:
            targets = two_hot(symlog(lambda_returns), cfg.value_support)
            loss_values = _masked_mean(-(targets * F.log_softmax(value_out, dim=-1)).sum(dim=-1), mask)
        else:
            loss_values = _masked_mean((value_out[..., 0] - lambda_returns).pow(2), mask)

        self.update_target()
        losses = {"loss_actions": loss_actions, "loss_entropy": loss_entropy, "loss_values": loss_values}
        return losses, {"policy_entropy": policy_entropy.detach()}
