"""The in-process loop runs every real stage of a tiny Crafter campaign and writes exactly the
declared outputs; MLflow holds one parent run, a child run per stage and a registered version per
evaluated iteration."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from pipelines.config import load_experiment, write_params
from pipelines.stages.runner import run_campaign, stage_order
from pipelines.storage import ZarrEpisodeDataset, read_manifest
from pipelines.workspace import COMPONENTS, Workspace

TINY = [
    "params=quickstart",
    "common.epochs=2",
    "evaluation.every=1",
    "collection.train.num_envs=2",
    "collection.train.env_processes=1",
    "collection.train.num_steps_first_epoch=120",
    "collection.train.num_steps=60",
    "collection.test.num_envs=2",
    "collection.test.env_processes=1",
    "collection.test.num_episodes=2",
    "env.test.max_episode_steps=40",
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


@pytest.mark.timeout(900)
def test_in_process_campaign_writes_every_declared_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    ws = Workspace(tmp_path)
    write_params(ws.params, overrides=TINY)
    experiment = load_experiment(params_file=ws.params)
    results = run_campaign(tmp_path)
    assert len(results) == len(stage_order(experiment.loop)) == 1 + 2 * 6

    # Collection: 120 random steps then 60 with the policy; overshoot carried (< num_envs).
    collected = [json.loads(ws.metrics("collect", i).read_text())["collect/steps"] for i in (1, 2)]
    assert 120 <= collected[0] < 122 and sum(collected) in (180, 181)
    assert read_manifest(str(ws.manifest(2))).stores == ("../episodes/1.zarr", "../episodes/2.zarr")
    dataset = ZarrEpisodeDataset.from_manifest(str(ws.manifest(2)))
    assert int(dataset.episode_lengths().sum()) == sum(collected)

    # Checkpoints count the paper's optimizer steps and load as plain weights.
    expected_steps = {"tokenizer": 3, "world_model": 3, "actor_critic": 2}
    for name in COMPONENTS:
        checkpoint = torch.load(ws.checkpoint(name, 2), weights_only=True)
        assert checkpoint["steps"] == expected_steps[name]
        assert checkpoint["epochs_done"] == 2
        curve = ws.plot(name, 2).read_text().splitlines()
        assert curve[0].split("\t")[:2] == ["step", "epoch"]
    evaluation = json.loads(ws.metrics("evaluate", 2).read_text())
    assert evaluation["test/episodes"] == 2 and 0.0 <= evaluation["test/crafter_score"] <= 100.0
    assert "world_model/eval/loss_latents" in evaluation
    assert (ws.media(2) / "reconstructions.png").stat().st_size > 0
    assert (ws.media(2) / "test_episode.mp4").stat().st_size > 0

    # Promotion: the first version becomes champion; the second is gated against it.
    first = json.loads(ws.promotion(1).read_text())
    second = json.loads(ws.promotion(2).read_text())
    assert first["decision"] == "promoted" and first["version"] == 1
    assert second["version"] == 2 and second["champion_version"] == 1
    assert len(second["champion_returns"]) == len(second["challenger_returns"]) == 2

    # MLflow: one parent, one child run per stage execution, versions with aliases.
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("delta-iris").experiment_id], max_results=100)
    parents = [r for r in runs if r.data.tags.get("iris.run_kind") == "campaign"]
    children = [r for r in runs if r.data.tags.get("iris.run_kind") == "stage"]
    assert len(parents) == 1 and len(children) == len(results)
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    assert "training.learning_rate" in parents[0].data.params
    tokenizer_run = next(r for r in children if r.data.tags["iris.stage"] == "tokenizer")
    assert "iris.dataset_manifest_md5" in tokenizer_run.data.tags
    history = client.get_metric_history(tokenizer_run.info.run_id, "tokenizer/train/loss_total")
    assert [m.step for m in history]  # per optimizer step
    champion = client.get_model_version_by_alias("delta-iris-crafter", "champion")
    assert int(champion.version) in (1, 2)
