"""The config dataclasses: derived sizes, their checks, and immutability."""

from __future__ import annotations

import pickle
from dataclasses import replace

import pytest

from iris_core.config import (
    ActorCriticConfig,
    ComponentTrainingConfig,
    ConfigError,
    FrameCnnConfig,
    IrisConfig,
    TokenizerConfig,
    TrainCollectionConfig,
    TrainingConfig,
    config_to_dict,
)


def test_derived_sizes_of_the_paper_config() -> None:
    config = IrisConfig()
    assert config.tokenizer.decoder.latent_dim == 8 + 4 + 64
    assert config.tokenizer.latent_resolution == 8
    assert config.world_model.transformer.tokens_per_block == 1 + 1 + 4
    assert config.world_model.transformer.max_blocks == config.training.world_model.sequence_length == 21
    assert config.training.actor_critic.sequence_length == config.actor_critic.burn_in_length + 1
    assert config.world_model.frame_cnn.output_size(64) == config.world_model.transformer.embed_dim
    assert config.evaluation.tokenizer_batch_num_samples == config.training.tokenizer.batch_num_samples


def test_deriving_never_mutates_a_shared_sub_config() -> None:
    decoder = FrameCnnConfig(num_channels=64)
    small = TokenizerConfig(frame_cnn=FrameCnnConfig(num_channels=32, latent_dim=4), decoder=decoder)
    large = TokenizerConfig(frame_cnn=FrameCnnConfig(num_channels=32, latent_dim=16), decoder=decoder)
    assert decoder.latent_dim is None
    assert (small.decoder.latent_dim, large.decoder.latent_dim) == (4 + 4 + 64, 16 + 4 + 64)


def test_with_num_actions_returns_a_copy() -> None:
    config = IrisConfig()
    with_actions = config.with_num_actions(4)
    assert config.num_actions is None
    assert with_actions.actor_critic.num_actions == 4
    assert with_actions.world_model.transformer == config.world_model.transformer


def test_nested_errors_carry_the_full_key_path() -> None:
    with pytest.raises(ConfigError) as info:
        IrisConfig(actor_critic=ActorCriticConfig(imagination_horizon=30))
    assert info.value.key == "actor_critic.imagination_horizon"
    with pytest.raises(ConfigError) as info:
        IrisConfig(
            training=replace(TrainingConfig(), actor_critic=ComponentTrainingConfig(sequence_length=9))
        )
    assert info.value.key == "training.actor_critic.sequence_length"
    assert "derived value 6" in info.value.message


def test_inconsistent_num_actions_is_rejected() -> None:
    config = IrisConfig()
    with pytest.raises(ConfigError, match="disagree on num_actions"):
        replace(config, tokenizer=replace(config.tokenizer, num_actions=17))


def test_config_error_survives_pickling() -> None:
    error = ConfigError("a.b", "bad")
    again = pickle.loads(pickle.dumps(error))
    assert (again.key, again.message, str(again)) == ("a.b", "bad", "a.b: bad")


def test_groupnorm_divisibility_is_checked() -> None:
    with pytest.raises(ConfigError, match="not divisible by norm_groups"):
        FrameCnnConfig(num_channels=48)


def test_plain_adam_refuses_weight_decay() -> None:
    with pytest.raises(ConfigError, match="plain Adam takes no weight decay"):
        ComponentTrainingConfig(optimizer="adam", weight_decay=0.01)


def test_schedule_counts_per_epoch() -> None:
    component = ComponentTrainingConfig(start_after_epochs=5, steps_first_epoch=400, steps_per_epoch=200)
    assert [component.steps_in_epoch(e) for e in (1, 5, 6, 7)] == [0, 0, 200, 200]
    collection = TrainCollectionConfig(stop_after_epochs=3, num_steps=10, num_steps_first_epoch=100)
    assert [collection.steps_in_epoch(e) for e in (1, 2, 3, 4)] == [100, 10, 10, 0]


def test_config_to_dict_is_plain() -> None:
    tree = config_to_dict(IrisConfig())
    assert tree["tokenizer"]["encoder"]["mult"] == [1, 1, 2, 2, 4]
    assert tree["actor_critic"]["lambda_"] == 0.95
