"""The single-process campaign runs the real loop end to end on a tiny Crafter config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from iris_core.models.agent import Agent
from pipelines.campaign import run_campaign
from pipelines.config import load_config
from pipelines.storage import ZarrEpisodeDataset, read_manifest

TINY = [
    "params=quickstart",
    "common.epochs=2",
    "collection.train.num_envs=2",
    "collection.train.num_steps_first_epoch=120",
    "collection.train.num_steps=60",
    "collection.test.num_envs=2",
    "collection.test.num_episodes=2",
    "env.test.max_episode_steps=40",
    "evaluation.every=2",
    "training.world_model.sequence_length=8",
    "actor_critic.imagination_horizon=2",
    "training.tokenizer.batch_num_samples=2",
    "training.world_model.batch_num_samples=2",
    "training.actor_critic.batch_num_samples=2",
    "training.tokenizer.steps_first_epoch=2",
    "training.tokenizer.steps_per_epoch=1",
    "training.world_model.steps_first_epoch=2",
    "training.world_model.steps_per_epoch=1",
    "training.actor_critic.steps_first_epoch=1",
    "training.actor_critic.steps_per_epoch=1",
]


@pytest.mark.timeout(600)
def test_campaign_runs_every_step_and_writes_its_outputs(tmp_path: Path) -> None:
    config = load_config(overrides=TINY)
    reports = run_campaign(config, tmp_path)

    assert [r.epoch for r in reports] == [1, 2]
    # Collection counts steps of running envs only and carries the overshoot (< num_envs).
    assert 120 <= reports[0].collected_steps < 122
    assert sum(r.collected_steps for r in reports) in (180, 181)

    manifest = read_manifest(str(tmp_path / "episodes" / "manifest.json"))
    assert manifest.stores == ("00001.zarr", "00002.zarr")
    dataset = ZarrEpisodeDataset.from_manifest(str(tmp_path / "episodes" / "manifest.json"))
    assert int(dataset.episode_lengths().sum()) == sum(r.collected_steps for r in reports)

    # Every component trained in both epochs; evaluation ran at epoch 2 only.
    for name in ("tokenizer", "world_model", "actor_critic"):
        assert any(key.startswith(f"{name}/train/") for key in reports[1].train), name
    assert reports[0].evaluation == {}
    evaluation = reports[1].evaluation
    assert evaluation["test/episodes"] == 2
    assert 0.0 <= evaluation["test/crafter_score"] <= 100.0
    assert evaluation["test/length_mean"] <= 40
    assert "world_model/eval/loss_latents" in evaluation

    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert {line["epoch"] for line in lines} == {1, 2}

    checkpoint = torch.load(tmp_path / "agent.pt", weights_only=False)
    assert checkpoint["epoch"] == 2
    agent = Agent(config.with_num_actions(17))
    agent.load_state_dict(checkpoint["agent"])


@pytest.mark.timeout(600)
def test_campaign_starts_test_envs_only_when_it_evaluates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pipelines.campaign as campaign

    made: list[int] = []
    real_make_batch_env = campaign.make_batch_env

    def counting_make_batch_env(spec, num_envs, seed, processes=1):  # type: ignore[no-untyped-def]
        made.append(seed)
        return real_make_batch_env(spec, num_envs, seed, processes=processes)

    monkeypatch.setattr(campaign, "make_batch_env", counting_make_batch_env)
    config = load_config(overrides=[*TINY, "common.epochs=1", "evaluation.should=false"])
    reports = run_campaign(config, tmp_path)
    assert [r.evaluation for r in reports] == [{}]
    assert made == [config.common.seed]  # the train envs only
