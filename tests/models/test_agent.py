"""The agent container: built from one IrisConfig, state dict round trip with target net and codebook."""

from __future__ import annotations

import io

import pytest
import torch

from iris_core.config import (
    ActorCriticConfig,
    ComponentTrainingConfig,
    FrameCnnConfig,
    IrisConfig,
    TokenizerConfig,
    TrainingConfig,
    TransformerConfig,
    WorldModelConfig,
)
from iris_core.models.agent import Agent


def small_cnn(latent_dim: int | None) -> FrameCnnConfig:
    return FrameCnnConfig(
        num_channels=8, mult=(1, 1, 1), down=(1, 1, 1), latent_dim=latent_dim, norm_groups=4
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


def test_agent_needs_num_actions() -> None:
    with pytest.raises(AssertionError, match="num_actions"):
        Agent(IrisConfig())


def test_state_dict_round_trip_includes_target_network_and_codebook() -> None:
    config = small_config()
    agent = Agent(config)
    with torch.no_grad():
        # Make the target and the codebook differ from anything a fresh agent would have.
        for p in agent.actor_critic.target_model.parameters():
            p.add_(torch.randn_like(p))
        agent.tokenizer.quantizer.codebook.normal_()
        agent.tokenizer.quantizer.num_codebook_updates.fill_(7)
    state = agent.state_dict()
    assert any(k.startswith("actor_critic.target_model.") for k in state)
    assert "tokenizer.quantizer.codebook" in state

    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    torch.manual_seed(123)
    restored = Agent(config)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    restored_state = restored.state_dict()
    assert restored_state.keys() == state.keys()
    assert all(torch.equal(restored_state[k], v) for k, v in state.items())
    assert not any(p.requires_grad for p in restored.actor_critic.target_model.parameters())


def test_load_components_restores_only_the_named_ones() -> None:
    config = small_config()
    source = Agent(config)
    torch.manual_seed(99)
    agent = Agent(config)
    before = {k: v.clone() for k, v in agent.state_dict().items()}
    agent.load_components(source.state_dict(), ["tokenizer"])
    for key, value in agent.state_dict().items():
        expected = source.state_dict()[key] if key.startswith("tokenizer.") else before[key]
        assert torch.equal(value, expected), key
    with pytest.raises(ValueError, match="unknown component"):
        agent.load_components(source.state_dict(), ["policy"])
