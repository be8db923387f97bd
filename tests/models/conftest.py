"""Tiny tokenizer and world-model configurations: the paper's structure at test-sized widths."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from iris_core.config import (
    ComponentTrainingConfig,
    FrameCnnConfig,
    IrisConfig,
    TokenizerConfig,
    TrainingConfig,
    TransformerConfig,
    TwoHotConfig,
    WorldModelConfig,
)

NUM_ACTIONS = 5


def tiny_cnn(latent_dim: int | None) -> FrameCnnConfig:
    # Two stages, two downsamples: 16×16 frames → 4×4 latent maps.
    return FrameCnnConfig(num_channels=8, mult=(1, 2), down=(1, 1), latent_dim=latent_dim, norm_groups=4)


def tiny_tokenizer_config(**overrides: object) -> TokenizerConfig:
    kwargs: dict[str, object] = {
        "image_size": 16,
        "num_actions": NUM_ACTIONS,
        "num_tokens": 4,
        "decoder_act_channels": 2,
        "codebook_size": 32,
        "codebook_dim": 8,
        "encoder": tiny_cnn(8),
        "decoder": tiny_cnn(None),
        "frame_cnn": tiny_cnn(4),
    }
    kwargs.update(overrides)
    return TokenizerConfig(**kwargs)  # type: ignore[arg-type]


def tiny_world_model_config(
    max_blocks: int = 6, two_hot_rews: bool = True, **overrides: object
) -> WorldModelConfig:
    kwargs: dict[str, object] = {
        "image_size": 16,
        "latent_vocab_size": 32,
        "num_latent_tokens": 4,
        "num_actions": NUM_ACTIONS,
        "two_hot_rews": two_hot_rews,
        "reward_support": TwoHotConfig(num_buckets=15, low=-3.0, high=3.0),
        "transformer": TransformerConfig(
            max_blocks=max_blocks, tokens_per_block=6, num_layers=2, num_heads=2, embed_dim=32
        ),
        "frame_cnn": tiny_cnn(2),  # 2 × 4 × 4 = 32 = embed_dim
    }
    kwargs.update(overrides)
    return WorldModelConfig(**kwargs)  # type: ignore[arg-type]


@pytest.fixture
def make_tokenizer_config() -> Callable[..., TokenizerConfig]:
    return tiny_tokenizer_config


@pytest.fixture
def make_world_model_config() -> Callable[..., WorldModelConfig]:
    return tiny_world_model_config


def atari_config(num_actions: int) -> IrisConfig:
    """The paper's Atari sizes built from the dataclasses."""
    return IrisConfig(
        tokenizer=TokenizerConfig(
            max_codebook_updates_with_revival=400,
            frame_cnn=FrameCnnConfig(num_channels=32, latent_dim=16),
        ),
        world_model=WorldModelConfig(
            latents_weight=0.1,
            ends_weight=0.1,
            two_hot_rews=False,
            transformer=TransformerConfig(num_heads=4, embed_dim=256),
            frame_cnn=FrameCnnConfig(num_channels=32, latent_dim=4),
        ),
        training=TrainingConfig(
            tokenizer=ComponentTrainingConfig(sequence_length=21),
            world_model=ComponentTrainingConfig(sequence_length=26, batch_num_samples=64),
        ),
    ).with_num_actions(num_actions)


@pytest.fixture
def presets() -> dict[str, IrisConfig]:
    """Crafter with its 17 actions and Atari with 4 (Breakout-like)."""
    return {"crafter": IrisConfig().with_num_actions(17), "atari": atari_config(4)}
