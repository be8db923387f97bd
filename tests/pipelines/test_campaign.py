"""What the in-process loop (the reference campaign of the DVC tests: 3 iterations, each
evaluated) leaves behind besides the bits test_resume.py compares: the declared outputs, the
MLflow runs and the registry."""

from __future__ import annotations

import json

import torch
from dvc_workspace import Campaigns
from mlflow import MlflowClient

from pipelines.storage import ZarrEpisodeDataset, read_manifest
from pipelines.workspace import COMPONENTS, Workspace


def test_outputs_of_every_stage(campaigns: Campaigns) -> None:
    ws = Workspace(campaigns.reference)
    # Collection: 120 random steps, then 60 per iteration with the policy; the overshoot past a
    # target (< num_envs) is deducted from the next collection.
    collected = [json.loads(ws.metrics("collect", i).read_text())["collect/steps"] for i in (1, 2, 3)]
    assert 120 <= collected[0] < 122 and sum(collected) in (240, 241)
    stores = read_manifest(str(ws.manifest(3))).stores
    assert stores == ("../episodes/1.zarr", "../episodes/2.zarr", "../episodes/3.zarr")
    dataset = ZarrEpisodeDataset.from_manifest(str(ws.manifest(3)))
    assert int(dataset.episode_lengths().sum()) == sum(collected)
    for name in COMPONENTS:
        checkpoint = torch.load(ws.checkpoint(name, 3), weights_only=True)  # plain tensors and values
        assert checkpoint["epochs_done"] == 3
        header = ws.plot(name, 3).read_text().splitlines()[0].split("\t")
        assert header[:2] == ["step", "epoch"] and "loss_total" in header
    evaluation = json.loads(ws.metrics("evaluate", 3).read_text())
    assert evaluation["test/episodes"] == 2 and 0.0 <= evaluation["test/crafter_score"] <= 100.0
    assert "world_model/eval/loss_latents" in evaluation
    assert (ws.media(3) / "reconstructions.png").stat().st_size > 0
    assert (ws.media(3) / "test_episode.mp4").stat().st_size > 0


def test_promotions_gate_each_challenger_against_the_champion(campaigns: Campaigns) -> None:
    ws = Workspace(campaigns.reference)
    outcomes = [json.loads(ws.promotion(i).read_text()) for i in (1, 2, 3)]
    assert outcomes[0]["decision"] == "promoted" and outcomes[0]["champion_version"] is None
    assert [o["version"] for o in outcomes] == [1, 2, 3]
    for outcome in outcomes[1:]:
        # The champion was replayed on the challenger's evaluation seeds: paired returns.
        assert outcome["champion_version"] in (1, 2)
        assert len(outcome["champion_returns"]) == len(outcome["challenger_returns"]) == 2
        assert outcome["decision"] in ("promoted", "rejected")
    client = MlflowClient(f"sqlite:///{ws.root / 'mlflow.db'}")
    champion = int(client.get_model_version_by_alias("delta-iris-crafter", "champion").version)
    promoted = [o["version"] for o in outcomes if o["decision"] == "promoted"]
    assert champion == promoted[-1]
    version = client.get_model_version("delta-iris-crafter", str(outcomes[1]["version"]))
    assert version.tags["iris.decision"] == outcomes[1]["decision"] and "iris.iteration" in version.tags


def test_mlflow_holds_a_parent_run_and_a_child_run_per_stage(campaigns: Campaigns) -> None:
    ws = Workspace(campaigns.reference)
    client = MlflowClient(f"sqlite:///{ws.root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("delta-iris")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("iris.run_kind") == "campaign"]
    children = [r for r in runs if r.data.tags.get("iris.run_kind") == "stage"]
    assert len(parents) == 1
    assert len(children) == 1 + 3 * 6  # init, then collect, 3 components, evaluate, promote
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    assert parents[0].data.params["training.learning_rate"] == "0.0001"
    tokenizer = next(
        r
        for r in children
        if r.data.tags["iris.stage"] == "tokenizer" and r.data.tags["iris.iteration"] == "2"
    )
    assert tokenizer.data.tags["iris.dataset_manifest_md5"]
    assert "data/manifests/2.json" in json.loads(tokenizer.data.tags["dvc.deps_md5"])
    history = client.get_metric_history(tokenizer.info.run_id, "tokenizer/train/loss_total")
    assert [m.step for m in history] == [5, 6]  # per optimizer step, counted over the campaign
