"""Override precedence, params.yaml round trip, and every kind of bad input (spec: foundation issue)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from iris_core.config import ConfigError
from pipelines.cli import app
from pipelines.config import ConfigLoadError, load_config, merged_config, write_params

runner = CliRunner()


# ---------------------------------------------------------------------------------------------
# Precedence
# ---------------------------------------------------------------------------------------------


def test_overrides_beat_presets() -> None:
    config = load_config(env="atari", params="atari", overrides=["env.train.id=PongNoFrameskip-v4"])
    assert config.env.train.id == "PongNoFrameskip-v4"
    # The test env follows the train id unless it is set itself (as in the paper code).
    assert config.env.test.id == "PongNoFrameskip-v4"
    config = load_config(
        env="atari",
        params="atari",
        overrides=["env.train.id=PongNoFrameskip-v4", "env.test.id=BoxingNoFrameskip-v4"],
    )
    assert (config.env.train.id, config.env.test.id) == ("PongNoFrameskip-v4", "BoxingNoFrameskip-v4")


def test_preset_selection_inside_overrides_beats_arguments() -> None:
    config = load_config(env="crafter", params="crafter", overrides=["env=atari", "params=atari"])
    assert config.env.train.kind == "atari"
    assert config.world_model.transformer.embed_dim == 256


def test_later_overrides_beat_earlier_ones() -> None:
    config = load_config(overrides=["training.learning_rate=0.001", "training.learning_rate=0.0003"])
    assert config.training.learning_rate == pytest.approx(3e-4)


def test_params_file_is_the_base_and_overrides_apply_on_top(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    write_params(path, env="atari", params="atari", overrides=["actor_critic.gamma=0.99"])
    config = load_config(params_file=path)
    assert config.actor_critic.gamma == pytest.approx(0.99)
    assert config.env.train.kind == "atari"
    config = load_config(params_file=path, overrides=["actor_critic.gamma=0.9"])
    assert config.actor_critic.gamma == pytest.approx(0.9)


def test_derived_sizes_follow_their_sources() -> None:
    config = load_config(overrides=["training.world_model.sequence_length=31"])
    assert config.world_model.transformer.max_blocks == 31
    assert config.training.tokenizer.sequence_length == 31  # defaults to the world model's length
    config = load_config(overrides=["tokenizer.frame_cnn.latent_dim=16"])
    assert config.tokenizer.decoder.latent_dim == 16 + 4 + 64


# ---------------------------------------------------------------------------------------------
# params.yaml round trip
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "params", "overrides"),
    [
        ("crafter", "crafter", []),
        ("atari", "atari", ["env.train.id=MsPacmanNoFrameskip-v4"]),
        ("crafter", "quickstart", ["world_model.transformer.num_layers=1", "common.seed=7"]),
    ],
)
def test_params_yaml_round_trip(tmp_path: Path, env: str, params: str, overrides: list[str]) -> None:
    path = tmp_path / "params.yaml"
    written = write_params(path, env=env, params=params, overrides=overrides)
    assert (
        load_config(params_file=path) == written == load_config(env=env, params=params, overrides=overrides)
    )
    text = path.read_text()
    assert "${" not in text  # plain values only: DVC rewrites interpolations
    # Writing what was read gives the same file (a fixed point).
    again = tmp_path / "again.yaml"
    data = yaml.safe_load(text)
    again.write_text(yaml.safe_dump(data, sort_keys=False))
    assert load_config(params_file=again) == written


def test_cli_write_then_show_from_file(tmp_path: Path) -> None:
    out = tmp_path / "params.yaml"
    result = runner.invoke(app, ["config", "write", "-o", str(out), "env=atari", "params=atari"])
    assert result.exit_code == 0, result.output
    shown = runner.invoke(app, ["config", "show", "-f", str(out)])
    assert shown.exit_code == 0, shown.output
    resolved = yaml.safe_load(shown.stdout)
    assert resolved["world_model"]["transformer"]["max_blocks"] == 26
    assert resolved["env"]["test"]["id"] == "BreakoutNoFrameskip-v4"


def test_a_failed_write_leaves_the_old_file(tmp_path: Path) -> None:
    out = tmp_path / "params.yaml"
    out.write_text("keep: me\n")
    result = runner.invoke(app, ["config", "write", "-o", str(out), "training.learning_rate=-1"])
    assert result.exit_code == 2
    assert out.read_text() == "keep: me\n"


# ---------------------------------------------------------------------------------------------
# Bad input: clear message naming the key, exit code 2
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        # unknown key, with the closest valid key
        (
            ["world_model.transformer.num_layer=4"],
            "world_model.transformer.num_layer: unknown key; did you mean "
            "'world_model.transformer.num_layers'?",
        ),
        (["trainng.learning_rate=1"], "trainng: unknown key; did you mean 'training'?"),
        (
            ["actor_critic.lambda=0.9"],
            "actor_critic.lambda: unknown key; did you mean 'actor_critic.lambda_'?",
        ),
        # wrong type
        (["training.learning_rate=fast"], "training.learning_rate: expected a number, got 'fast' (str)"),
        (
            ["world_model.transformer.num_layers=2.5"],
            "world_model.transformer.num_layers: expected an integer",
        ),
        (["world_model.two_hot_rews=maybe"], "world_model.two_hot_rews: expected true or false"),
        (["tokenizer.encoder.mult=3"], "tokenizer.encoder.mult: expected a list"),
        (["tokenizer=3"], "tokenizer: expected a mapping of keys"),
        # out of range
        (["training.learning_rate=-0.001"], "training.learning_rate: must be > 0, got -0.001"),
        (["actor_critic.gamma=1.5"], "actor_critic.gamma: must be in [0, 1], got 1.5"),
        (
            ["actor_critic.imagination_horizon=16"],
            "actor_critic.imagination_horizon: burn_in_length (5) + "
            "imagination_horizon (16) + 1 = 22 exceeds the world model's context of 21 blocks",
        ),
        (["tokenizer.num_tokens=3"], "tokenizer.num_tokens: must be a perfect square, got 3"),
        (
            ["world_model.transformer.num_heads=7"],
            "world_model.transformer.num_heads: embed_dim 512 is not divisible",
        ),
        (
            ["world_model.frame_cnn.latent_dim=4"],
            "world_model.frame_cnn.latent_dim: the I-token CNN outputs 4×8² = 256 features, but "
            "transformer.embed_dim is 512",
        ),
        (
            ["world_model.transformer.embed_dim=520"],
            "world_model.frame_cnn.latent_dim: cannot be derived: transformer.embed_dim 520",
        ),
        (
            ["tokenizer.decoder.latent_dim=70"],
            "tokenizer.decoder.latent_dim: must equal its derived value 76, got 70",
        ),
        (
            ["training.actor_critic.optimizer=sgd"],
            "training.actor_critic.optimizer: must be one of ['adamw', 'adam']",
        ),
        (["env.train.kind=doom"], "env.train.kind: must be one of ['crafter', 'atari']"),
        # unknown presets list the available ones
        (["env=atary"], "env: unknown preset 'atary'; available: atari, crafter"),
        (["params=huge"], "params: unknown preset 'huge'; available: atari, crafter, quickstart"),
        # malformed override
        (["learning_rate"], "override 'learning_rate' is not of the form key=value"),
    ],
)
def test_bad_input_exits_2_naming_the_key(args: list[str], expected: str) -> None:
    result = runner.invoke(app, ["config", "show", *args])
    assert result.exit_code == 2, result.output
    assert "error: invalid configuration: " in result.stderr
    assert expected in result.stderr, result.stderr


def test_unreadable_yaml_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("common:\n  epochs: 3\n  seed: [1, 2\ntraining: {}\n")
    result = runner.invoke(app, ["config", "show", "-f", str(path)])
    assert result.exit_code == 2
    assert f"invalid YAML at {path}:" in result.stderr
    line = int(result.stderr.split(f"{path}:")[1].split(":")[0])
    assert line in (3, 4)


def test_bad_value_inside_a_params_file_names_the_key(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    write_params(path)
    path.write_text(path.read_text().replace("lstm_dim: 512", "lstm_dim: -3"))
    with pytest.raises(ConfigError, match=r"^actor_critic\.lstm_dim: must be > 0, got -3$"):
        load_config(params_file=path)


def test_missing_params_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigLoadError, match="file not found"):
        load_config(params_file=tmp_path / "nope.yaml")


def test_params_file_must_be_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigLoadError, match="must hold a mapping"):
        merged_config(params_file=path)


def test_console_script_runs_the_paper_override_example() -> None:
    iris = Path(sys.executable).with_name("iris")
    cmd = [str(iris), "config", "show", "env=atari", "params=atari", "env.train.id=BreakoutNoFrameskip-v4"]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=120)
    assert done.returncode == 0, done.stderr
    shown = yaml.safe_load(done.stdout)
    assert shown["env"]["train"]["id"] == "BreakoutNoFrameskip-v4"
    assert shown["world_model"]["transformer"]["num_heads"] == 4
    bad = subprocess.run([*cmd[:3], "training.learning_rate=-1"], capture_output=True, text=True, check=False)
    assert bad.returncode == 2
    assert "training.learning_rate" in bad.stderr


def test_the_workspace_params_yaml_is_valid_and_plain() -> None:
    path = Path(__file__).resolve().parents[2] / "params.yaml"
    config = load_config(params_file=path)
    assert config == load_config(params="quickstart")
    assert "${" not in path.read_text()


def test_the_workspace_params_yaml_is_up_to_date(tmp_path: Path) -> None:
    # Every key of the schema is written out, so `dvc params diff` sees every change.
    path = Path(__file__).resolve().parents[2] / "params.yaml"
    fresh = tmp_path / "params.yaml"
    write_params(fresh, params="quickstart")
    assert path.read_text() == fresh.read_text(), "regenerate with: iris config write params=quickstart"


# ---------------------------------------------------------------------------------------------
# The loop section: iterations follow common.epochs, K and the evaluation cadence
# ---------------------------------------------------------------------------------------------


def test_params_text_generates_the_iterations_dvc_reads(tmp_path: Path) -> None:
    from pipelines.config import load_experiment

    path = tmp_path / "params.yaml"
    write_params(path, params="quickstart", overrides=["common.epochs=5", "evaluation.every=2"])
    loop = load_experiment(params_file=path).loop
    assert list(loop.iterations) == ["1", "2", "3", "4", "5"]
    assert loop.iterations["3"] == {"prev": "2"}
    # Each promotion depends on the one before (the first: on init's actor-critic).
    assert loop.evaluations == {
        "2": {"prev": "1", "after": "state/actor_critic/0.pt"},
        "4": {"prev": "3", "after": "promotion/2.json"},
    }

    # K = 2: epochs 1-2, 3-4, 5; evaluated where an epoch of the iteration is on the cadence.
    write_params(path, params_file=path, overrides=["loop.epochs_per_iteration=2"])
    loop = load_experiment(params_file=path).loop
    assert list(loop.iterations) == ["1", "2", "3"]
    assert list(loop.evaluations) == ["1", "2"]

    # Adding epochs regenerates the chain (what adding an iteration means).
    write_params(path, params_file=path, overrides=["common.epochs=8"])
    assert list(load_experiment(params_file=path).loop.iterations) == ["1", "2", "3", "4"]


def test_stale_iterations_are_refused_with_the_fix(tmp_path: Path) -> None:
    from pipelines.config import load_experiment

    path = tmp_path / "params.yaml"
    write_params(path, params="quickstart")
    text = path.read_text().replace("  epochs: 3\n", "  epochs: 4\n")
    path.write_text(text)
    with pytest.raises(ConfigError, match=r"loop.iterations.*iris config write"):
        load_experiment(params_file=path)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("loop.epochs_per_iteration=0", "loop.epochs_per_iteration"),
        ("loop.promotion_confidence=1.5", "loop.promotion_confidence"),
        ("loop.log_every_step=3", "loop.log_every_step"),
    ],
)
def test_bad_loop_settings_name_the_key(override: str, key: str) -> None:
    from pipelines.config import load_experiment

    with pytest.raises(ConfigError) as error:
        load_experiment(params="quickstart", overrides=[override])
    assert error.value.key == key
