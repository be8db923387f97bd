"""The config dataclasses: derived sizes, their checks, and immutability."""

from __future__ import annotations

import pickle
from dataclasses import fields, replace

import pytest

from iris_core.config import (
    ActorCriticConfig,
    CommonConfig,
    ComponentTrainingConfig,
    ConfigError,
    EnvConfig,
    EnvSpec,
    FrameCnnConfig,
    IrisConfig,
    TokenizerConfig,
    TrainCollectionConfig,
    TrainingConfig,
    TransformerConfig,
    WorldModelConfig,
    check_env_id,
    config_to_dict,
)
from iris_core.config import (
    TestCollectionConfig as CollectionTestConfig,
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


# ---------------------------------------------------------------------------------------------
# No silent mis-configuration (docs/configuration.md)
# ---------------------------------------------------------------------------------------------


def test_keys_that_did_nothing_are_gone() -> None:
    names = {cls: {f.name for f in fields(cls)} for cls in (CommonConfig, TrainCollectionConfig, EnvConfig)}
    assert "do_checkpoint" not in names[CommonConfig]
    assert "num_episodes_to_save" not in names[TrainCollectionConfig]
    assert "keymap" not in names[EnvConfig]
    assert CollectionTestConfig().num_episodes_to_save == 10  # read by the evaluate stage


@pytest.mark.parametrize(
    ("kind", "env_id", "ok"),
    [
        ("crafter", "crafter", True),
        ("crafter", "PongNoFrameskip-v4", False),
        ("crafter", "Crafter", False),
        ("atari", "BreakoutNoFrameskip-v4", True),
        ("atari", "MsPacmanNoFrameskip-v4", True),
        ("atari", "crafter", False),
        ("atari", "Breakout-v4", False),
        ("atari", "ALE/Breakout-v5", False),
        ("atari", "breakoutNoFrameskip-v4", False),
    ],
)
def test_env_ids_must_fit_the_kind(kind: str, env_id: str, ok: bool) -> None:
    atari = {"noop_max": 30, "frame_skip": 4} if kind == "atari" else {}
    if ok:
        assert EnvSpec(kind=kind, id=env_id, **atari).id == env_id  # type: ignore[arg-type]
    else:
        with pytest.raises(ConfigError) as info:
            EnvSpec(kind=kind, id=env_id, **atari)  # type: ignore[arg-type]
        assert info.value.key == "id" and repr(env_id) in info.value.message
    assert (check_env_id(kind, env_id) is None) == ok


def test_options_of_the_other_kind_are_refused() -> None:
    for kwargs, key in (
        ({"noop_max": 1}, "noop_max"),
        ({"clip_reward": True}, "clip_reward"),
        ({"frame_skip": 4}, "frame_skip"),
        ({"done_on_life_loss": True}, "done_on_life_loss"),
    ):
        with pytest.raises(ConfigError) as info:
            EnvSpec(kind="crafter", id="crafter", **kwargs)  # type: ignore[arg-type]
        assert info.value.key == key
    with pytest.raises(ConfigError, match="Crafter only") as info:
        EnvSpec(kind="atari", id="PongNoFrameskip-v4", fast=False)
    assert info.value.key == "fast"


def test_the_frame_size_is_set_by_the_train_env() -> None:
    with pytest.raises(ConfigError) as info:
        EnvConfig(train=EnvSpec(size=32))
    assert info.value.key == "test.size" and "env.train.size (32)" in info.value.message
    small_env = EnvConfig(train=EnvSpec(size=32), test=EnvSpec(id=None, size=32))
    with pytest.raises(ConfigError) as info:
        IrisConfig(env=small_env)
    assert info.value.key == "tokenizer.image_size"
    assert "env.train.size (32), got 64" in info.value.message
    config = IrisConfig()
    wide = replace(config.world_model.frame_cnn, latent_dim=32)  # 32 × 4² = embed_dim at 32×32
    for name, component in (
        ("world_model", replace(config.world_model, image_size=32, frame_cnn=wide)),
        ("actor_critic", replace(config.actor_critic, image_size=32)),
    ):
        with pytest.raises(ConfigError) as info:
            replace(config, **{name: component})
        assert info.value.key == f"{name}.image_size" and "env.train.size (64)" in info.value.message
    with pytest.raises(ConfigError, match="must be 3"):
        replace(config, tokenizer=replace(config.tokenizer, image_channels=1))


def test_the_i_token_width_follows_the_frame_size() -> None:
    def world_model(image_size: int, embed_dim: int = 512) -> WorldModelConfig:
        return WorldModelConfig(
            image_size=image_size,
            transformer=TransformerConfig(embed_dim=embed_dim),
            frame_cnn=FrameCnnConfig(num_channels=32, latent_dim=None),
        )

    assert world_model(64).frame_cnn.latent_dim == 8  # the paper's value, derived
    assert world_model(32).frame_cnn.latent_dim == 32
    assert world_model(64, embed_dim=256).frame_cnn.latent_dim == 4  # Atari's
    with pytest.raises(ConfigError, match=r"cannot be derived.*48×48 frames \(env.train.size\)") as info:
        world_model(48)
    assert info.value.key == "frame_cnn.latent_dim"
