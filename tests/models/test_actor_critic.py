"""Actor-critic: the loss against a plain re-statement of the paper's recipe, gradients, Polyak, acting.

The tokenizer and world model are tiny (64×64 frames, few channels); the actor-critic network
has the paper's sizes (FrameEncoder width 32 → 1024 features → LSTMCell(1024, 512)).
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from iris_core.config import (
    ActorCriticConfig,
    ComponentTrainingConfig,
    FrameCnnConfig,
    TokenizerConfig,
    TrainingConfig,
    TransformerConfig,
    TwoHotConfig,
    WorldModelConfig,
)
from iris_core.data.structures import Batch, SegmentId
from iris_core.models.actor_critic import ActorCritic, sample_actions
from iris_core.models.tokenizer import Tokenizer
from iris_core.models.world_model import WorldModel
from iris_core.rl.imagination import imagine
from iris_core.rl.returns import compute_lambda_returns, mask_after_first_done
from iris_core.rl.twohot import bucket_expectation, symexp, symlog, two_hot
from iris_core.training.optim import make_optimizer
from iris_core.training.train_component import train_component

BURN_IN, HORIZON, BATCH = 2, 3, 3


def small_cnn(latent_dim: int | None) -> FrameCnnConfig:
    # Three downsamples: 64×64 frames → 8×8 maps, like the paper's CNNs, at a fraction of the width.
    return FrameCnnConfig(
        num_channels=8, mult=(1, 1, 1), down=(1, 1, 1), latent_dim=latent_dim, norm_groups=4
    )


def frozen_models(num_actions: int, two_hot_rews: bool) -> tuple[Tokenizer, WorldModel]:
    tokenizer = Tokenizer(
        TokenizerConfig(
            num_actions=num_actions,
            codebook_size=32,
            codebook_dim=8,
            decoder_act_channels=2,
            encoder=small_cnn(8),
            decoder=small_cnn(None),
            frame_cnn=small_cnn(4),
        )
    )
    world_model = WorldModel(
        WorldModelConfig(
            latent_vocab_size=32,
            num_latent_tokens=4,
            num_actions=num_actions,
            two_hot_rews=two_hot_rews,
            transformer=TransformerConfig(
                max_blocks=BURN_IN + HORIZON + 1, tokens_per_block=6, num_layers=1, num_heads=2, embed_dim=64
            ),
            frame_cnn=small_cnn(1),  # 1 × 8 × 8 = 64 = embed_dim
        )
    )
    return tokenizer.eval(), world_model.eval()


def actor_critic_config(num_actions: int, two_hot_rets: bool) -> ActorCriticConfig:
    return ActorCriticConfig(
        burn_in_length=BURN_IN,
        imagination_horizon=HORIZON,
        num_actions=num_actions,
        two_hot_rets=two_hot_rets,
        gamma=0.9,  # far from 1 so that discounting matters in the comparison
        entropy_weight=0.01,
        value_support=TwoHotConfig(),
    )


def make_batch(num_actions: int, batch_size: int = BATCH) -> Batch:
    length = BURN_IN + 1
    mask = torch.ones(batch_size, length, dtype=torch.bool)
    mask[0, 0] = False  # left padding, as the actor-critic sampler produces near episode starts
    obs = torch.randint(0, 256, (batch_size, length, 3, 64, 64), dtype=torch.uint8)
    obs[~mask] = 0
    return Batch(
        obs=obs,
        act=torch.randint(0, num_actions, (batch_size, length)),
        rew=torch.zeros(batch_size, length),
        end=torch.zeros(batch_size, length, dtype=torch.long),
        mask_padding=mask,
        segment_ids=[SegmentId(i, 0, length) for i in range(batch_size)],
    )


def randomise_critics(actor_critic: ActorCritic) -> None:
    # The critic starts at zero; distinct random online and target critics make a test able to
    # tell which network's values a loss term used.
    for model in (actor_critic.model, actor_critic.target_model):
        with torch.no_grad():
            model.critic_linear.weight.normal_(0.0, 0.05)
            model.critic_linear.bias.normal_(0.0, 0.5)


def paper_loss(
    ac: ActorCritic, batch: Batch, tokenizer: Tokenizer, world_model: WorldModel
) -> dict[str, Tensor]:
    """The paper's recipe as the reference code writes it: online network with autograd inside
    the rollout, target network stepped alongside, boolean-mask means, library cross-entropy."""
    cfg = ac.config
    obs = batch.obs_float()
    ac.reset(obs.size(0))
    ac.model.burn_in(obs[:, :-1])
    ac.target_model.burn_in(obs[:, :-1])
    outputs, target_outputs = [], []

    def policy(frame: Tensor) -> Tensor:
        with torch.enable_grad():  # the rollout itself runs without autograd
            outputs.append(ac.model(frame))
        with torch.no_grad():
            target_outputs.append(ac.target_model(frame))
        return sample_actions(outputs[-1].logits_act.detach(), cfg.temperature)

    rollout = imagine(tokenizer, world_model, policy, obs, batch.act[:, :-1], cfg.imagination_horizon)
    with torch.no_grad():
        bootstrap_out = ac.target_model(rollout.obs[:, -1]).value_out
    ac.clear()

    def to_value(value_out: Tensor) -> Tensor:
        if cfg.two_hot_rets:
            return symexp(bucket_expectation(value_out, cfg.value_support))
        return value_out[..., 0]

    values = to_value(torch.stack([o.value_out for o in target_outputs], dim=1))
    returns = compute_lambda_returns(
        rollout.rew, rollout.end, values, to_value(bootstrap_out), cfg.gamma, cfg.lambda_
    )
    mask = mask_after_first_done(rollout.end)
    logits_act = torch.stack([o.logits_act for o in outputs], dim=1)
    value_out = torch.stack([o.value_out for o in outputs], dim=1)
    dist = torch.distributions.Categorical(logits=logits_act)
    loss_actions = torch.mean(-dist.log_prob(rollout.act)[mask] * (returns[mask] - values[mask]))
    entropy = dist.entropy()[mask].mean()
    if cfg.two_hot_rets:
        loss_values = F.cross_entropy(value_out[mask], two_hot(symlog(returns[mask]), cfg.value_support))
    else:
        loss_values = F.mse_loss(value_out[mask][:, 0], returns[mask])
    return {
        "loss_actions": loss_actions,
        "loss_entropy": -cfg.entropy_weight * entropy,
        "loss_values": loss_values,
    }


def grads(module: nn.Module) -> dict[str, Tensor | None]:
    return {name: None if p.grad is None else p.grad.clone() for name, p in module.named_parameters()}


@pytest.mark.parametrize(("num_actions", "two_hot_rets"), [(17, True), (4, False)], ids=["crafter", "atari"])
def test_loss_and_gradients_match_the_paper_recipe(num_actions: int, two_hot_rets: bool) -> None:
    torch.set_num_threads(1)
    tokenizer, world_model = frozen_models(num_actions, two_hot_rews=two_hot_rets)
    ac = ActorCritic(actor_critic_config(num_actions, two_hot_rets), image_channels=3)
    randomise_critics(ac)
    batch = make_batch(num_actions)

    torch.manual_seed(1)
    expected = paper_loss(ac, batch, tokenizer, world_model)
    torch.stack(list(expected.values())).sum().backward()
    expected_grads = grads(ac.model)
    ac.zero_grad(set_to_none=True)
    target_before = [p.clone() for p in ac.target_model.parameters()]

    torch.manual_seed(1)
    losses, metrics = ac.compute_loss(batch, tokenizer, world_model)
    assert set(losses) == {"loss_actions", "loss_entropy", "loss_values"}
    for name, value in expected.items():
        torch.testing.assert_close(losses[name], value, rtol=1e-5, atol=1e-6, msg=name)
    torch.testing.assert_close(
        metrics["policy_entropy"], -expected["loss_entropy"] / ac.config.entropy_weight
    )
    torch.stack(list(losses.values())).sum().backward()

    for name, grad in grads(ac.model).items():
        reference = expected_grads[name]
        assert grad is not None and reference is not None, f"no gradient for {name}"
        torch.testing.assert_close(grad, reference, rtol=1e-4, atol=1e-6, msg=name)
    # Only the online network learns: no gradient reaches the target, the world model or the tokenizer.
    for module in (ac.target_model, world_model, tokenizer):
        assert all(p.grad is None for p in module.parameters())
    # One Polyak update per loss call, with the online weights of before the optimiser step.
    tau = ac.config.target_tau
    for before, online, after in zip(
        target_before, ac.model.parameters(), ac.target_model.parameters(), strict=True
    ):
        torch.testing.assert_close(after, tau * before + (1 - tau) * online)
    assert ac.model.hx is None, "compute_loss leaves no recurrent state behind"


def test_loss_is_bit_identical_across_seeded_runs() -> None:
    torch.set_num_threads(1)
    results = []
    for _ in range(2):
        torch.manual_seed(0)
        tokenizer, world_model = frozen_models(17, two_hot_rews=True)
        ac = ActorCritic(actor_critic_config(17, True), image_channels=3)
        batch = make_batch(17)
        losses, _ = ac.compute_loss(batch, tokenizer, world_model)
        torch.stack(list(losses.values())).sum().backward()
        results.append((losses, grads(ac.model), [p.clone() for p in ac.target_model.parameters()]))
    (losses_a, grads_a, target_a), (losses_b, grads_b, target_b) = results
    assert all(torch.equal(losses_a[k], losses_b[k]) for k in losses_a)
    assert all(torch.equal(grads_a[k], grads_b[k]) for k in grads_a)  # type: ignore[arg-type]
    assert all(torch.equal(a, b) for a, b in zip(target_a, target_b, strict=True))


def test_frozen_models_keep_their_mode_and_codebook() -> None:
    tokenizer, world_model = frozen_models(4, two_hot_rews=False)
    tokenizer.train()
    codebook = tokenizer.quantizer.codebook.clone()
    ac = ActorCritic(actor_critic_config(4, False), image_channels=3)
    ac.compute_loss(make_batch(4), tokenizer, world_model)
    assert tokenizer.training and not world_model.training
    assert torch.equal(tokenizer.quantizer.codebook, codebook)


def test_polyak_update_hand_computed() -> None:
    ac = ActorCritic(replace(actor_critic_config(3, True), target_tau=0.9), image_channels=3)
    with torch.no_grad():
        for p in ac.model.parameters():
            p.fill_(3.0)
        for p in ac.target_model.parameters():
            p.fill_(1.0)
    ac.update_target()
    # 0.9 · 1 + 0.1 · 3 = 1.2; the online network is untouched.
    assert all(torch.allclose(p, torch.full_like(p, 1.2)) for p in ac.target_model.parameters())
    assert all(torch.equal(p, torch.full_like(p, 3.0)) for p in ac.model.parameters())
    assert not any(p.requires_grad for p in ac.target_model.parameters())


def test_policy_interface_keeps_state_between_calls() -> None:
    ac = ActorCritic(actor_critic_config(6, True), image_channels=3)
    with pytest.raises(AssertionError, match="reset"):
        ac.act(torch.rand(2, 3, 64, 64))
    ac.reset(2)
    ac.burn_in(torch.rand(2, 0, 3, 64, 64))  # an empty burn-in leaves the zero state
    assert torch.equal(ac.model.hx, torch.zeros(2, 512))  # type: ignore[arg-type]
    ac.burn_in(torch.rand(2, 4, 3, 64, 64))
    state_after_burn_in = ac.model.hx.clone()  # type: ignore[union-attr]
    frame = torch.rand(2, 3, 64, 64)
    act = ac.act(frame, should_sample=True, temperature=1.0)
    assert act.shape == (2,) and act.dtype == torch.long and bool(((act >= 0) & (act < 6)).all())
    assert not torch.equal(ac.model.hx, state_after_burn_in)  # type: ignore[arg-type]
    greedy = ac.act(frame, should_sample=False, temperature=1.0)
    assert torch.equal(greedy, ac.model.actor_linear(ac.model.hx).argmax(-1))
    assert ac.target_model.hx is not None and torch.equal(ac.target_model.hx, torch.zeros(2, 512))


def test_acting_on_some_streams_equals_acting_on_all() -> None:
    """Rows that act get the actions and states of a full-batch call; the other rows keep theirs."""
    torch.manual_seed(0)
    ac = ActorCritic(actor_critic_config(6, True), image_channels=3)
    ac.reset(4)
    ac.burn_in(torch.rand(4, 3, 3, 64, 64))
    before = ac.model.state
    frames = torch.rand(4, 3, 64, 64)
    greedy_all = ac.act(frames, should_sample=False)
    after_all = ac.model.state
    ac.model.state = before
    rows = torch.tensor([0, 2])
    greedy_rows = ac.act(frames[rows], should_sample=False, rows=rows)
    assert torch.equal(greedy_rows, greedy_all[rows])
    for state, full, old in zip(ac.model.state, after_all, before, strict=True):
        torch.testing.assert_close(state[rows], full[rows])
        assert torch.equal(state[[1, 3]], old[[1, 3]])


def test_trains_through_the_generic_loop() -> None:
    torch.set_num_threads(1)
    tokenizer, world_model = frozen_models(17, two_hot_rews=True)
    ac = ActorCritic(actor_critic_config(17, True), image_channels=3)
    training = TrainingConfig()
    component = ComponentTrainingConfig(optimizer="adam", weight_decay=0.0, bf16_autocast=False)
    online_before = [p.clone() for p in ac.model.parameters()]
    target_before = [p.clone() for p in ac.target_model.parameters()]
    batch = make_batch(17)
    report = train_component(
        ac, make_optimizer(ac, training, component), component, lambda: batch, 2, name="actor_critic",
        deps={"tokenizer": tokenizer, "world_model": world_model},
    )  # fmt: skip
    assert set(report) == {
        "loss_actions",
        "loss_entropy",
        "loss_values",
        "loss_total",
        "policy_entropy",
        "grad_norm",
    }
    assert all(not torch.equal(a, b) for a, b in zip(online_before, ac.model.parameters(), strict=True))
    assert all(
        not torch.equal(a, b) for a, b in zip(target_before, ac.target_model.parameters(), strict=True)
    )


def test_recurrent_state_stays_float32_under_bf16_autocast() -> None:
    """The LSTM runs outside autocast (on CUDA autocast would run LSTM cells in bf16)."""
    ac = ActorCritic(actor_critic_config(4, False), image_channels=3)
    autocast_in_lstm: list[bool] = []
    ac.model.lstm.register_forward_pre_hook(
        lambda *_: autocast_in_lstm.append(torch.is_autocast_enabled("cpu"))
    )
    ac.reset(2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ac.act(torch.rand(2, 3, 64, 64))
    hx, cx = ac.model.state
    assert hx.dtype == cx.dtype == torch.float32
    assert autocast_in_lstm == [False]
