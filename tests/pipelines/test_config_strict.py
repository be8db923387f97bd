"""No silent mis-configuration: every key does what it says, presets of different games, env ids of
the wrong kind, empty files and duplicate keys are refused (exit code 2, one line naming the key,
no traceback), and the frame size is one key."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from iris_core.config import FRAME_SIZE_FOLLOWERS, IrisConfig, config_to_dict
from iris_core.models.agent import Agent
from pipelines.cli import app
from pipelines.config import (
    REMOVED_KEYS,
    _all_keys,
    available_presets,
    config_dir,
    load_config,
    load_params_preset,
    without_removed_keys,
    write_params,
)
from pipelines.tracking.policy import load_agent_config

runner = CliRunner()
PROJECT = Path(__file__).resolve().parents[2]


def refused(args: list[str], *words: str) -> str:
    """Run ``iris <args>``: exit code 2, one error line holding every word, no traceback."""
    result = runner.invoke(app, args)
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


def accepted(args: list[str]) -> str:
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return result.stdout


def show(*overrides: str) -> dict[str, object]:
    shown = yaml.safe_load(accepted(["config", "show", *overrides]))
    assert isinstance(shown, dict)
    return shown


# ---------------------------------------------------------------------------------------------
# 1. Every key does what it says or is gone
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", sorted(REMOVED_KEYS))
def test_a_removed_key_is_refused_as_removed(key: str, tmp_path: Path) -> None:
    refused(["config", "show", f"{key}=true"], f"{key}: unknown key", "removed", "delete it")
    # ... also through `iris train` (before any workspace is made) and in a params file.
    workspace = tmp_path / "ws"
    refused(["train", "params=quickstart", f"{key}=1", "--workspace", str(workspace)], key, "removed")
    assert not workspace.exists()
    params = tmp_path / "params.yaml"
    write_params(params, params="quickstart")
    *parents, leaf = key.split(".")
    tree = yaml.safe_load(params.read_text())
    node = tree
    for name in parents:
        node = node[name]
    node[leaf] = 1
    params.write_text(yaml.safe_dump(tree, sort_keys=False))
    refused(["config", "show", "-f", str(params)], key, "removed")


def test_models_registered_before_a_key_was_removed_still_load(tmp_path: Path) -> None:
    tree = config_to_dict(load_config(params="quickstart"))
    tree["common"]["do_checkpoint"] = True
    tree["env"]["keymap"] = "crafter"
    tree["collection"]["train"]["num_episodes_to_save"] = 10
    path = tmp_path / "config.json"
    path.write_text(json.dumps(tree))
    assert load_agent_config(path) == load_config(params="quickstart")
    assert "do_checkpoint" not in without_removed_keys(tree)["common"]


def test_the_removed_keys_are_nowhere_in_the_presets() -> None:
    for group in ("env", "params"):
        for path in (config_dir() / group).glob("*.yaml"):
            text = path.read_text()
            for key in REMOVED_KEYS:
                assert not re.search(rf"^\s*{key.split('.')[-1]}:", text, re.M) or key.endswith(
                    "train.num_episodes_to_save"
                ), (path, key)
    tree = yaml.safe_load((PROJECT / "config/params/crafter.yaml").read_text())
    assert "num_episodes_to_save" not in tree["collection"]["train"]
    assert "num_episodes_to_save" in tree["collection"]["test"]


def _source_text() -> str:
    files = [*sorted((PROJECT / "iris_core").rglob("*.py")), *sorted((PROJECT / "pipelines").rglob("*.py"))]
    return "\n".join(path.read_text() for path in files)


def test_every_config_key_has_a_reader() -> None:
    # A key nothing reads does nothing: some code must access the field by name (``.key``).
    source = _source_text()
    unread = [
        key for key in _all_keys(IrisConfig) if not re.search(rf"\.{re.escape(key.split('.')[-1])}\b", source)
    ]
    assert unread == []


# ---------------------------------------------------------------------------------------------
# 2. Presets of one game
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("selection", "params", "env"),
    [
        (["env=atari", "params=crafter"], "params=crafter is a Crafter preset", "env=atari is Atari"),
        (["params=quickstart", "env=atari"], "params=quickstart is a Crafter preset", "env=atari is Atari"),
        (["env=crafter", "params=atari"], "params=atari is an Atari preset", "env=crafter is Crafter"),
        (
            ["params=quickstart-atari", "env=crafter"],
            "params=quickstart-atari is an Atari preset",
            "env=crafter is Crafter",
        ),
        (["params=atari", "env.train.kind=crafter"], "params=atari", "env.train.kind=crafter is Crafter"),
    ],
)
def test_presets_of_different_games_are_refused(
    selection: list[str], params: str, env: str, tmp_path: Path
) -> None:
    out = tmp_path / "params.yaml"
    line = refused(["config", "write", "-o", str(out), *selection], params, env, "allow_mixed_presets=true")
    assert line.startswith("error: invalid configuration: params: ")
    assert not out.exists()
    workspace = tmp_path / "ws"
    refused(["train", *selection, "--workspace", str(workspace)], params, env)
    assert not workspace.exists()


def test_the_console_script_refuses_mixed_presets_in_one_line(tmp_path: Path) -> None:
    iris = Path(sys.executable).with_name("iris")
    out = tmp_path / "params.yaml"
    cmd = [str(iris), "config", "write", "-o", str(out), "env=atari", "params=crafter"]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert done.stderr.strip() == (
        "error: invalid configuration: params: params=crafter is a Crafter preset but env=atari is Atari: "
        "use presets of one game (params presets for Atari: atari, quickstart-atari), or add "
        "allow_mixed_presets=true to mix them on purpose"
    )
    assert not out.exists()


def test_mixing_on_purpose_takes_the_flag() -> None:
    shown = show("env=atari", "params=crafter", "allow_mixed_presets=true")
    assert shown["env"]["train"]["kind"] == "atari"  # type: ignore[index]
    assert shown["world_model"]["two_hot_rews"] is True  # type: ignore[index]  # Crafter's params
    assert "allow_mixed_presets" not in json.dumps(shown)  # a selection, not a config key
    refused(
        ["config", "show", "env=atari", "params=crafter", "allow_mixed_presets=maybe"], "allow_mixed_presets"
    )
    refused(["config", "show", "env=atari", "params=crafter", "allow_mixed_presets=false"], "params=crafter")


def test_one_preset_selects_the_other_of_its_game() -> None:
    for selection in (["params=atari"], ["env=atari"], ["params=quickstart-atari"]):
        shown = show(*selection)
        assert shown["env"]["train"]["kind"] == "atari", selection  # type: ignore[index]
        assert shown["world_model"]["two_hot_rews"] is False, selection  # type: ignore[index]
    assert show("params=atari") == show("env=atari", "params=atari") == show("env=atari")
    assert show("params=quickstart")["env"]["train"]["kind"] == "crafter"  # type: ignore[index]


def test_every_params_preset_names_an_env_preset_of_its_game() -> None:
    kinds = {"crafter": "crafter", "atari": "atari", "quickstart": "crafter", "quickstart-atari": "atari"}
    for name in available_presets("params"):
        preset = load_params_preset(name)
        assert preset.env in available_presets("env")
        if name in kinds:
            assert load_config(params=name).env.train.kind == kinds[name]


# ---------------------------------------------------------------------------------------------
# 3. Env ids of the env's kind
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["env.train.id=PongNoFrameskip-v4"], ["env.train.id", "'PongNoFrameskip-v4' is not a Crafter id"]),
        (["env.test.id=BreakoutNoFrameskip-v4"], ["env.test.id", "not a Crafter id"]),
        (["params=atari", "env.train.id=crafter"], ["env.train.id", "'crafter' is not an Atari id"]),
        (["params=atari", "env.train.id=Pong"], ["env.train.id", "<Game>NoFrameskip-v4"]),
        (["params=atari", "env.train.id=ALE/Pong-v5"], ["env.train.id", "not an Atari id"]),
        (["params=atari", "env.train.id=PongNoFrameskip-v0"], ["env.train.id", "not an Atari id"]),
        (["params=atari", "env.test.id=crafter"], ["env.test.id", "not an Atari id"]),
        # options of the other kind do nothing: refused too
        (["env.train.noop_max=30"], ["env.train.noop_max", "Atari only"]),
        (["env.test.clip_reward=true"], ["env.test.clip_reward", "Atari only"]),
        (["params=atari", "env.train.fast=false"], ["env.train.fast", "Crafter only"]),
    ],
)
def test_an_env_id_or_option_of_another_kind_is_refused(
    args: list[str], words: list[str], tmp_path: Path
) -> None:
    refused(["config", "show", *args], *words)
    refused(["train", *args, "--workspace", str(tmp_path / "ws")], *words)
    assert not (tmp_path / "ws").exists()


def test_atari_ids_of_any_game_are_accepted() -> None:
    for game in ("PongNoFrameskip-v4", "MsPacmanNoFrameskip-v4", "PrivateEyeNoFrameskip-v4"):
        assert load_config(params="atari", overrides=[f"env.train.id={game}"]).env.test.id == game


# ---------------------------------------------------------------------------------------------
# 4. Empty files, files that are not mappings, duplicate keys
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("", ["params_file", "is empty"]),
        ("# only a comment\n\n", ["params_file", "is empty"]),
        ("- 1\n- 2\n", ["params_file", "must hold a mapping of keys, got list"]),
        ("just text\n", ["params_file", "must hold a mapping of keys, got str"]),
    ],
)
def test_an_empty_or_flat_params_file_is_refused(text: str, words: list[str], tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    refused(["config", "show", "-f", str(path)], *words, str(path))
    refused(["train", "-f", str(path), "--workspace", str(tmp_path / "ws")], *words)
    assert not (tmp_path / "ws").exists()


def test_a_duplicate_key_in_a_params_file_is_refused_naming_key_and_file(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    write_params(path, params="quickstart")
    text = path.read_text()
    top = text.replace("common:\n  epochs: 3\n", "common:\n  epochs: 3\n  epochs: 300\n")
    assert top != text
    path.write_text(top)
    refused(
        ["config", "show", "-f", str(path)], "common.epochs: duplicate key", str(path), "keep the last one"
    )
    refused(["train", "-f", str(path), "--workspace", str(tmp_path / "ws")], "common.epochs", str(path))
    # a whole section twice
    path.write_text(text + "common:\n  seed: 3\n")
    refused(["config", "show", "-f", str(path)], "common: duplicate key", str(path))


@pytest.mark.parametrize("group", ["env", "params"])
def test_a_duplicate_key_in_a_preset_is_refused(
    group: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "config"
    shutil.copytree(config_dir(), root)
    preset = root / group / "crafter.yaml"
    text = preset.read_text()
    if group == "env":
        preset.write_text(
            text.replace("  max_episode_steps: 10000\n", "  max_episode_steps: 10000\n  size: 32\n", 1)
        )
        key = "train.size"
    else:
        preset.write_text(text.replace("  seed: 0\n", "  seed: 0\n  seed: 1\n", 1))
        key = "common.seed"
    monkeypatch.setenv("IRIS_CONFIG_DIR", str(root))
    refused(["config", "show"], f"{key}: duplicate key", str(preset))


def test_a_duplicate_key_in_an_override_value_is_refused() -> None:
    refused(
        ["config", "show", "world_model.transformer={num_layers: 1, num_layers: 2}"],
        "world_model.transformer.num_layers: duplicate key",
        "override",
    )


def test_an_empty_preset_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "config"
    shutil.copytree(config_dir(), root)
    (root / "params" / "blank.yaml").write_text("# nothing yet\n")
    monkeypatch.setenv("IRIS_CONFIG_DIR", str(root))
    refused(["config", "show", "params=blank"], "params:", "blank.yaml is empty")


# ---------------------------------------------------------------------------------------------
# 5. The frame size is one key
# ---------------------------------------------------------------------------------------------


def _at(tree: dict[str, object], key: str) -> object:
    node: object = tree
    for name in key.split("."):
        assert isinstance(node, dict)
        node = node[name]
    return node


@pytest.mark.parametrize("params", ["crafter", "atari", "quickstart", "quickstart-atari"])
def test_changing_the_frame_size_is_one_key(params: str, tmp_path: Path) -> None:
    shown = show(f"params={params}", "env.train.size=32")
    for key in FRAME_SIZE_FOLLOWERS:
        assert _at(shown, key) == 32, key
    config = load_config(params=params, overrides=["env.train.size=32"])
    wm = config.world_model
    assert wm.frame_cnn.output_size(32) == wm.transformer.embed_dim  # the I-token CNN widened
    assert config.actor_critic.lstm_input_dim == config.actor_critic.frame_encoder.output_size(32)
    # params.yaml keeps the followers null: they follow a later change of env.train.size too.
    path = tmp_path / "params.yaml"
    write_params(path, params=params, overrides=["env.train.size=32"])
    written = yaml.safe_load(path.read_text())
    assert all(_at(written, key) is None for key in FRAME_SIZE_FOLLOWERS)
    assert load_config(params_file=path, overrides=["env.train.size=16"]).tokenizer.image_size == 16


def test_an_agent_runs_at_another_frame_size() -> None:
    config = load_config(params="quickstart", overrides=["env.train.size=32"]).with_num_actions(5)
    agent = Agent(config).eval()
    obs = torch.rand(2, 3, 32, 32)
    act = torch.tensor([1, 4])
    with torch.no_grad():
        encoding = agent.tokenizer.encode(obs, act, obs)
        assert agent.tokenizer.decode(obs, act, encoding.q, should_clamp=True).shape == obs.shape
        assert agent.world_model.embed_frames(obs).shape == (2, config.world_model.transformer.embed_dim)
        agent.actor_critic.reset(2)
        assert agent.actor_critic.act(obs).shape == (2,)


@pytest.mark.parametrize("key", FRAME_SIZE_FOLLOWERS)
def test_a_size_that_disagrees_with_the_frame_size_names_both_keys(key: str) -> None:
    refused(
        ["config", "show", f"{key}=32"], f"{key}: must equal env.train.size (64), got 32", f"leave {key} null"
    )


def test_a_frame_size_the_networks_cannot_take_names_the_frame_size() -> None:
    refused(["config", "show", "env.train.size=48"], "world_model.frame_cnn.latent_dim", "env.train.size")
    refused(["config", "show", "env.train.size=20"], "tokenizer.encoder.down", "env.train.size")
    refused(["config", "show", "tokenizer.image_channels=1"], "tokenizer.image_channels: must be 3", "RGB")
