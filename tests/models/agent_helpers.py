"""A small agent with the paper's structure, its batches and losses: shared by the runtime tests."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from iris_core.config import (
    ActorCriticConfig,
    ComponentTrainingConfig,
    FrameCnnConfig,
    IrisConfig,
    RuntimeConfig,
    TokenizerConfig,
    TrainingConfig,
    TransformerConfig,
    WorldModelConfig,
)
from iris_core.data.structures import Batch, SegmentId
from iris_core.models.agent import Agent

OFF = RuntimeConfig(channels_last=False, checkpoint_cnns=False, cpu_kernels=False, compile=False)


def small_cnn(latent_dim: int | None) -> FrameCnnConfig:
    # Three downsamples (64×64 → 8×8) as in the paper's CNNs, at a fraction of the width.
    return FrameCnnConfig(
        num_channels=8, mult=(1, 2, 2), down=(1, 1, 1), latent_dim=latent_dim, norm_groups=4
    )


def small_config() -> IrisConfig:
    return IrisConfig(
        training=TrainingConfig(world_model=ComponentTrainingConfig(sequence_length=6)),
        tokenizer=TokenizerConfig(
            codebook_size=32, codebook_dim=8, decoder_act_channels=2,
            encoder=small_cnn(8), decoder=small_cnn(None), frame_cnn=small_cnn(4),
        ),
        world_model=WorldModelConfig(
            transformer=TransformerConfig(num_layers=1, num_heads=2, embed_dim=64), frame_cnn=small_cnn(1)
        ),
        actor_critic=ActorCriticConfig(burn_in_length=2, imagination_horizon=3, lstm_dim=16,
                                       frame_encoder=small_cnn(2)),
    ).with_num_actions(5)  # fmt: skip


def make_batch(batch_size: int, length: int, num_actions: int = 5) -> Batch:
    mask = torch.ones(batch_size, length, dtype=torch.bool)
    mask[0, :2] = False  # left padding: all-zero frames
    obs = torch.randint(0, 256, (batch_size, length, 3, 64, 64), dtype=torch.uint8)
    obs[~mask] = 0
    return Batch(
        obs=obs,
        act=torch.randint(0, num_actions, (batch_size, length)),
        rew=torch.randn(batch_size, length).round(),
        end=torch.zeros(batch_size, length, dtype=torch.long),
        mask_padding=mask,
        segment_ids=[SegmentId(i, 0, length) for i in range(batch_size)],
    )


def component_losses(
    agent: Agent, name: str, batch: Batch, frozen: Agent | None = None, seed: int = 3
) -> dict[str, Tensor]:
    """Loss terms of one component and the gradients of their sum, by parameter name.

    The frozen models come from ``frozen`` when given (by default from ``agent``).
    """
    agent.zero_grad(set_to_none=True)
    frozen = agent if frozen is None else frozen
    deps: dict[str, nn.Module] = {}
    if name != "tokenizer":
        deps["tokenizer"] = frozen.tokenizer.eval()
    if name == "actor_critic":
        deps["world_model"] = frozen.world_model.eval()
    component = getattr(agent, name).train()
    torch.manual_seed(seed)
    losses, _ = component.compute_loss(batch, **deps)
    torch.stack([v.float() for v in losses.values()]).sum().backward()
    grads = {f"grad/{k}": p.grad.clone() for k, p in component.named_parameters() if p.grad is not None}
    return {**{k: v.detach() for k, v in losses.items()}, **grads}


BATCHES = {"tokenizer": (2, 6), "world_model": (2, 6), "actor_critic": (2, 3)}
