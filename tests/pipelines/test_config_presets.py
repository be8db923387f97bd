"""Presets load and carry the paper's numbers (docs/models.md §7, docs/method.md), section by section."""

from __future__ import annotations

from functools import cache, reduce

import pytest
from omegaconf import OmegaConf

from iris_core.config import IrisConfig
from iris_core.training.schedule import Schedule
from pipelines.config import available_presets, env_kind_of, load_config, load_params_preset


def value_at(config: object, path: str) -> object:
    return reduce(getattr, path.split("."), config)


# dotted path -> (Crafter, Atari), every value as the paper's configurations set it (the reference
# implementation's config/params/{crafter,atari}.yaml), tabulated in docs/method.md and docs/models.md §7.
PAPER_VALUES: dict[str, tuple[object, object]] = {
    # schedule and optimisation (docs/method.md §4–§6)
    "common.epochs": (1000, 600),
    "collection.train.num_envs": (16, 1),
    "collection.train.num_steps_first_epoch": (100_000, 2_000),
    "collection.train.num_steps": (10_000, 200),
    "collection.train.stop_after_epochs": (991, 491),
    "collection.train.epsilon": (0.01, 0.01),
    "collection.train.should_sample": (True, True),
    "collection.train.temperature": (1.0, 1.0),
    "collection.test.num_envs": (32, 8),
    "collection.test.num_episodes": (64, 32),
    "collection.test.epsilon": (0.0, 0.0),
    "collection.test.should_sample": (True, True),
    "evaluation.every": (50, 25),
    "training.learning_rate": (1e-4, 1e-4),
    "training.tokenizer.batch_num_samples": (32, 16),
    "training.tokenizer.sequence_length": (21, 21),
    "training.tokenizer.steps_first_epoch": (5000, 400),
    "training.tokenizer.steps_per_epoch": (500, 200),
    "training.tokenizer.start_after_epochs": (0, 5),
    "training.tokenizer.weight_decay": (0.01, 0.0),
    "training.tokenizer.priority_alpha": (5, 1),
    "training.tokenizer.max_grad_norm": (10.0, 10.0),
    "training.tokenizer.optimizer": ("adamw", "adamw"),
    "training.tokenizer.bf16_autocast": (True, True),
    "training.world_model.batch_num_samples": (32, 64),
    "training.world_model.sequence_length": (21, 26),
    "training.world_model.steps_first_epoch": (2500, 120),
    "training.world_model.steps_per_epoch": (500, 120),
    "training.world_model.start_after_epochs": (0, 50),
    "training.world_model.weight_decay": (0.01, 0.01),
    "training.world_model.priority_alpha": (5, 1),
    "training.actor_critic.batch_num_samples": (86, 64),
    "training.actor_critic.sequence_length": (6, 6),
    "training.actor_critic.steps_per_epoch": (500, 200),
    "training.actor_critic.start_after_epochs": (0, 75),
    "training.actor_critic.priority_alpha": (5, 1),
    "training.actor_critic.optimizer": ("adam", "adam"),
    "training.actor_critic.weight_decay": (0.0, 0.0),
    "training.actor_critic.bf16_autocast": (False, False),
    "training.actor_critic.max_grad_norm": (10.0, 10.0),
    # tokenizer (docs/models.md §2, §7)
    "tokenizer.num_tokens": (4, 4),
    "tokenizer.codebook_size": (1024, 1024),
    "tokenizer.codebook_dim": (64, 64),
    "tokenizer.decoder_act_channels": (4, 4),
    "tokenizer.max_codebook_updates_with_revival": (0, 400),
    "tokenizer.codebook_ema_decay": (0.99, 0.99),
    "tokenizer.usage_ema_decay": (0.98, 0.98),
    "tokenizer.commitment_weight": (0.02, 0.02),
    "tokenizer.l2_weight": (1.0, 1.0),
    "tokenizer.l1_weight": (0.1, 0.1),
    "tokenizer.worst_pixel_weight": (0.01, 0.01),
    "tokenizer.encoder.num_channels": (64, 64),
    "tokenizer.encoder.mult": ((1, 1, 2, 2, 4), (1, 1, 2, 2, 4)),
    "tokenizer.encoder.down": ((1, 0, 1, 1, 0), (1, 0, 1, 1, 0)),
    "tokenizer.encoder.latent_dim": (64, 64),
    "tokenizer.decoder.num_channels": (64, 64),
    "tokenizer.decoder.latent_dim": (76, 84),
    "tokenizer.frame_cnn.num_channels": (64, 32),
    "tokenizer.frame_cnn.latent_dim": (8, 16),
    "tokenizer.token_dim": (1024, 1024),
    "tokenizer.tokens_grid_res": (2, 2),
    "tokenizer.token_res": (4, 4),
    "tokenizer.encoder_in_channels": (7, 7),
    # world model (docs/models.md §3, §7)
    "world_model.latent_vocab_size": (1024, 1024),
    "world_model.latents_weight": (1.0, 0.1),
    "world_model.rewards_weight": (1.0, 1.0),
    "world_model.ends_weight": (1.0, 0.1),
    "world_model.two_hot_rews": (True, False),
    "world_model.num_reward_classes": (255, 3),
    "world_model.reward_support.low": (-20.0, -20.0),
    "world_model.reward_support.high": (20.0, 20.0),
    "world_model.transformer.num_layers": (3, 3),
    "world_model.transformer.num_heads": (8, 4),
    "world_model.transformer.embed_dim": (512, 256),
    "world_model.transformer.max_blocks": (21, 26),
    "world_model.transformer.tokens_per_block": (6, 6),
    "world_model.transformer.max_tokens": (126, 156),
    "world_model.transformer.attention": ("causal", "causal"),
    "world_model.transformer.embed_pdrop": (0.0, 0.0),
    "world_model.frame_cnn.num_channels": (32, 32),
    "world_model.frame_cnn.latent_dim": (8, 4),
    # actor-critic (docs/models.md §4, §7)
    "actor_critic.burn_in_length": (5, 5),
    "actor_critic.imagination_horizon": (15, 20),
    "actor_critic.gamma": (0.997, 0.995),
    "actor_critic.lambda_": (0.95, 0.95),
    "actor_critic.entropy_weight": (0.001, 0.002),
    "actor_critic.two_hot_rets": (True, False),
    "actor_critic.num_value_outputs": (255, 1),
    "actor_critic.target_tau": (0.995, 0.995),
    "actor_critic.lstm_dim": (512, 512),
    "actor_critic.lstm_input_dim": (1024, 1024),
    "actor_critic.frame_encoder.num_channels": (32, 32),
    "actor_critic.frame_encoder.latent_dim": (16, 16),
    # environments (docs/method.md §1)
    "env.train.kind": ("crafter", "atari"),
    "env.train.max_episode_steps": (10_000, 20_000),
    "env.test.max_episode_steps": (10_000, 108_000),
    "env.train.noop_max": (0, 30),
    "env.test.noop_max": (0, 1),
    "env.train.frame_skip": (1, 4),
    "env.train.done_on_life_loss": (False, True),
    "env.test.done_on_life_loss": (False, False),
    "env.train.clip_reward": (False, False),
    "env.train.size": (64, 64),
}


@cache
def paper_config(name: str) -> IrisConfig:
    return load_config(env=name, params=name)


@pytest.mark.parametrize("preset_index", [0, 1], ids=["crafter", "atari"])
@pytest.mark.parametrize("path", sorted(PAPER_VALUES))
def test_paper_presets_match_the_paper(path: str, preset_index: int) -> None:
    name = ("crafter", "atari")[preset_index]
    assert value_at(paper_config(name), path) == PAPER_VALUES[path][preset_index]


def test_crafter_preset_equals_the_schema_defaults() -> None:
    # The dataclass defaults are the paper's Crafter configuration; the YAML preset must agree.
    assert load_config(env="crafter", params="crafter") == IrisConfig()


def test_total_optimizer_steps_follow_the_schedule() -> None:
    # docs/method.md §5: Crafter 504,500 / 502,000 / 500,000; Atari 119,000 / 66,000 / 105,000.
    expected = {"crafter": (504_500, 502_000, 500_000), "atari": (119_000, 66_000, 105_000)}
    for name, totals in expected.items():
        config = load_config(env=name, params=name)
        components = (config.training.tokenizer, config.training.world_model, config.training.actor_critic)
        got = tuple(sum(c.steps_in_epoch(e) for e in range(1, config.common.epochs + 1)) for c in components)
        assert got == totals, name


def test_total_env_steps_follow_the_schedule() -> None:
    for name, total in {"crafter": 10_000_000, "atari": 100_000}.items():
        config = load_config(env=name, params=name)
        steps = sum(config.collection.train.steps_in_epoch(e) for e in range(1, config.common.epochs + 1))
        assert steps == total, name


def test_quickstart_preset_is_small_and_valid() -> None:
    config = load_config(params="quickstart")
    paper = load_config(params="crafter")
    assert config.env == paper.env
    assert config.world_model.transformer.embed_dim < paper.world_model.transformer.embed_dim
    assert config.common.epochs < paper.common.epochs
    assert config.collection.train.num_steps_first_epoch < paper.collection.train.num_steps_first_epoch


def test_every_preset_file_loads() -> None:
    # Each params preset with its own env preset (preset.env), and with every env preset of its game.
    for params in available_presets("params"):
        preset = load_params_preset(params)
        assert load_config(params=params) == load_config(env=preset.env, params=params)
        kind = load_config(params=params).env.train.kind
        for env in available_presets("env"):
            if env_kind_of(env) == kind:
                load_config(env=env, params=params)
    assert set(available_presets("params")) >= {"crafter", "atari", "quickstart", "quickstart-atari"}
    assert set(available_presets("env")) >= {"crafter", "atari"}


def test_the_paper_presets_are_complete_and_alike() -> None:
    # Neither is merged over another preset (preset.base: null), and both list the same keys.
    def keys(tree: object, prefix: str = "") -> set[str]:
        if not isinstance(tree, dict):
            return {prefix}
        return {k for name, value in tree.items() for k in keys(value, f"{prefix}{name}.")}

    crafter, atari = (load_params_preset(name) for name in ("crafter", "atari"))
    assert crafter.base is None and atari.base is None
    assert keys(OmegaConf.to_container(crafter.values)) == keys(OmegaConf.to_container(atari.values))


def test_quickstart_atari_preset_is_small_bounded_and_valid() -> None:
    """An Atari campaign in minutes on 2 CPU cores: >= 3 iterations, each evaluated, small models,
    short epochs, and test episodes bounded by the env's time limit."""
    config = load_config(params="quickstart-atari")
    paper = load_config(params="atari")
    small = load_config(params="quickstart")
    assert config.env.train.kind == "atari" and config.env.train.id == "BreakoutNoFrameskip-v4"
    assert config.env.train.frame_skip == paper.env.train.frame_skip  # the paper's wrappers
    assert config.common.epochs >= 3 and config.evaluation.every == 1
    assert Schedule(config, 1).evaluated_iterations() == list(range(1, config.common.epochs + 1))
    # Every component trains in every iteration (the paper's Atari starts them at epochs 6, 51, 76).
    for component in (config.training.tokenizer, config.training.world_model, config.training.actor_critic):
        assert component.start_after_epochs == 0
    # The models of the Crafter quickstart on 32×32 frames, shorter epochs; Atari's heads.
    for path in (
        "tokenizer.encoder",
        "tokenizer.codebook_size",
        "world_model.transformer.embed_dim",
        "world_model.transformer.num_layers",
        "actor_critic.lstm_dim",
        "training.tokenizer.batch_num_samples",
        "training.world_model.batch_num_samples",
    ):
        assert value_at(config, path) == value_at(small, path), path
    assert config.env.train.size == config.tokenizer.image_size == 32
    for name in ("tokenizer", "world_model", "actor_critic"):
        ours, theirs = value_at(config.training, name), value_at(small.training, name)
        assert ours.steps_first_epoch <= theirs.steps_first_epoch, name  # type: ignore[attr-defined]
        assert ours.steps_per_epoch <= theirs.steps_per_epoch, name  # type: ignore[attr-defined]
    assert (config.world_model.two_hot_rews, config.actor_critic.two_hot_rets) == (False, False)
    # Bounded evaluation: test episodes of at most 500 agent steps (the paper: 27,000).
    assert config.env.test.max_episode_steps // config.env.test.frame_skip <= 500
    assert config.collection.test.num_episodes <= 4
    assert config.collection.train.num_steps_first_epoch < paper.collection.train.num_steps_first_epoch


def test_num_actions_is_set_everywhere_at_once() -> None:
    config = load_config().with_num_actions(17)
    counts = (config.tokenizer.num_actions, config.world_model.num_actions, config.actor_critic.num_actions)
    assert counts == (17, 17, 17)
    assert config.num_actions == 17
