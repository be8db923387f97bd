"""World model: KV-cached inference and masked losses against a loop oracle."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

from iris_core.config import IrisConfig, TokenizerConfig, WorldModelConfig
from iris_core.data.structures import Batch
from iris_core.models.tokenizer import Tokenizer
from iris_core.models.world_model import WorldModel
from iris_core.rl.twohot import symlog, two_hot

MakeTokenizerConfig = Callable[..., TokenizerConfig]
MakeWorldModelConfig = Callable[..., WorldModelConfig]


def make_batch(b: int, t: int, size: int, num_actions: int, mask: torch.Tensor, end: torch.Tensor) -> Batch:
    return Batch(
        obs=torch.randint(0, 256, (b, t, 3, size, size), dtype=torch.uint8),
        act=torch.randint(0, num_actions, (b, t)),
        rew=torch.tensor([-2.5, 0.0, 0.3, 1.0, 7.0, -0.1])[torch.randint(0, 6, (b, t))],
        end=end,
        mask_padding=mask,
        segment_ids=[],
    )


def test_cached_imagination_pattern_equals_one_full_pass(
    make_world_model_config: MakeWorldModelConfig,
) -> None:
    world_model = WorldModel(make_world_model_config(max_blocks=6)).eval()
    b, t, k = 2, 6, 4
    obs = torch.rand(b, t, 3, 16, 16)
    act = torch.randint(0, 5, (b, t))
    tokens = torch.randint(0, 32, (b, t, k))
    with torch.no_grad():
        frames = world_model.embed_frames(obs.flatten(0, 1)).reshape(b, t, -1)
        full = world_model(world_model.embed_blocks(frames, act, tokens))  # (B, 36, E)

        burn_in = 2  # blocks fed by burn_in, then I-token of frame 2
        cache = world_model.new_kv_cache(b)
        outputs = [world_model.burn_in(obs[:, : burn_in + 1], act[:, :burn_in], tokens[:, :burn_in], cache)]
        for step in range(burn_in, t):
            a = world_model.act_emb(act[:, step])[:, None]
            if step == burn_in:
                outputs.append(world_model(a, cache))
            else:
                last_latent = world_model.latents_emb(tokens[:, step - 1, -1])[:, None]
                outputs.append(world_model(torch.cat((last_latent, frames[:, step, None], a), dim=1), cache))
            for j in range(k - 1):
                outputs.append(world_model(world_model.latents_emb(tokens[:, step, j])[:, None], cache))
        cached = torch.cat(outputs, dim=1)
    assert cache.size == t * 6 - 1
    torch.testing.assert_close(cached, full[:, :-1], atol=1e-5, rtol=1e-5)
    for head in (world_model.head_latents, world_model.head_rewards, world_model.head_ends):
        torch.testing.assert_close(head(cached), head(full[:, :-1]), atol=1e-5, rtol=1e-5)


def oracle_losses(
    world_model: WorldModel, tokenizer: Tokenizer, batch: Batch
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The paper's losses with plain loops over (segment, time step, token)."""
    cfg = world_model.config
    obs = batch.obs.float() / 255
    b, t = batch.act.shape
    k = 4
    ce_latents, correct, ce_rewards, ce_ends = [], [], [], []
    for i in range(b):
        sequence = []
        tokens = []
        for s in range(t):
            if s < t - 1:
                step_tokens = tokenizer.encode(
                    obs[i, s : s + 1], batch.act[i, s : s + 1], obs[i, s + 1 : s + 2]
                ).tokens[0]
            else:
                step_tokens = torch.zeros(k, dtype=torch.long)  # dummy tokens of the last frame
            tokens.append(step_tokens)
            sequence.append(world_model.embed_frames(obs[i, s : s + 1]))
            sequence.append(world_model.act_emb(batch.act[i, s : s + 1]))
            sequence.append(world_model.latents_emb(step_tokens))
        outputs = world_model(torch.cat(sequence)[None])[0]  # (T·6, E)
        for s in range(t):
            action_position = 6 * s + 1
            if batch.mask_padding[i, s]:
                reward = batch.rew[i, s : s + 1]
                logits = world_model.head_rewards(outputs[action_position : action_position + 1])
                if cfg.two_hot_rews:
                    ce_rewards.append(F.cross_entropy(logits, two_hot(symlog(reward), cfg.reward_support)))
                else:
                    ce_rewards.append(F.cross_entropy(logits, (reward.sign() + 1).long()))
                logits = world_model.head_ends(outputs[action_position : action_position + 1])
                ce_ends.append(F.cross_entropy(logits, batch.end[i, s : s + 1]))
            if s < t - 1 and batch.mask_padding[i, s]:
                for j in range(k):
                    # Output at the action position (j = 0) or at Δj predicts Δ(j+1).
                    logits = world_model.head_latents(outputs[action_position + j : action_position + j + 1])
                    ce_latents.append(F.cross_entropy(logits, tokens[s][j : j + 1]))
                    correct.append((logits.argmax(-1) == tokens[s][j]).float()[0])
    losses = {
        "loss_latents": cfg.latents_weight * torch.stack(ce_latents).mean(),
        "loss_rewards": cfg.rewards_weight * torch.stack(ce_rewards).mean(),
        "loss_ends": cfg.ends_weight * torch.stack(ce_ends).mean(),
    }
    return losses, torch.stack(correct).mean()


@pytest.mark.parametrize("two_hot_rews", [True, False])
def test_masked_losses_match_a_loop_oracle(
    make_tokenizer_config: MakeTokenizerConfig,
    make_world_model_config: MakeWorldModelConfig,
    two_hot_rews: bool,
) -> None:
    tokenizer = Tokenizer(make_tokenizer_config()).eval()
    config = make_world_model_config(
        max_blocks=5, two_hot_rews=two_hot_rews, latents_weight=0.3, rewards_weight=0.7, ends_weight=1.3
    )
    world_model = WorldModel(config)
    # Left padding, right padding (the last real frame's transition into padding is trained on
    # its Δ-tokens), and a segment that ends.
    mask = torch.tensor([[False, False, True, True, True], [True, True, True, False, False], [True] * 5])
    end = torch.zeros(3, 5, dtype=torch.long)
    end[1, 2] = 1
    end[2, 4] = 1
    batch = make_batch(3, 5, 16, 5, mask, end)
    losses, metrics = world_model.compute_loss(batch, tokenizer)
    with torch.no_grad():
        expected, accuracy = oracle_losses(world_model, tokenizer, batch)
    assert losses.keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(losses[key], value, atol=1e-5, rtol=1e-5, msg=key)
    torch.testing.assert_close(metrics["latent_accuracy"], accuracy)


def test_tokenizer_must_be_frozen_and_segments_end_once(
    make_tokenizer_config: MakeTokenizerConfig, make_world_model_config: MakeWorldModelConfig
) -> None:
    tokenizer = Tokenizer(make_tokenizer_config())
    world_model = WorldModel(make_world_model_config(max_blocks=4))
    end = torch.zeros(2, 4, dtype=torch.long)
    batch = make_batch(2, 4, 16, 5, torch.ones(2, 4, dtype=torch.bool), end)
    with pytest.raises(AssertionError, match="eval"):
        world_model.compute_loss(batch, tokenizer)
    tokenizer.eval()
    codebook = tokenizer.quantizer.codebook.clone()
    losses, _ = world_model.compute_loss(batch, tokenizer)
    sum(losses.values()).backward()
    assert torch.equal(tokenizer.quantizer.codebook, codebook)
    assert all(p.grad is None for p in tokenizer.parameters())
    assert world_model.frame_cnn.layers[0].weight.grad is not None  # the I-token CNN is trained
    batch.end[0, 1] = batch.end[0, 3] = 1
    with pytest.raises(RuntimeError, match="more than one end"):
        world_model.compute_loss(batch, tokenizer)


@pytest.mark.parametrize(
    ("preset", "embed_dim", "reward_classes"), [("crafter", 512, 255), ("atari", 256, 3)]
)
def test_paper_sizes_forward_backward(
    presets: dict[str, IrisConfig], preset: str, embed_dim: int, reward_classes: int
) -> None:
    config = presets[preset]
    assert config.num_actions is not None
    world_model = WorldModel(config.world_model)
    tokenizer = Tokenizer(config.tokenizer).eval()
    assert world_model.act_emb.weight.shape == (config.num_actions, embed_dim)
    assert world_model.latents_emb.weight.shape == (1024, embed_dim)
    assert world_model.head_rewards[-1].out_features == reward_classes
    assert world_model.head_ends[-1].out_features == 2
    assert world_model.transformer.pos_emb.weight.shape[0] == config.world_model.transformer.max_tokens
    assert world_model.embed_frames(torch.rand(1, 3, 64, 64)).shape == (1, embed_dim)
    t = 3  # a short segment keeps the test fast; the context size is checked above
    batch = make_batch(
        1, t, 64, config.num_actions, torch.ones(1, t, dtype=torch.bool), torch.zeros(1, t, dtype=torch.long)
    )
    losses, _ = world_model.compute_loss(batch, tokenizer)
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in world_model.parameters())
