"""The campaign as a DVC pipeline, with real `dvc` and the real stages on a tiny config.

`dvc repro` runs every stage once; a second one runs none; a new iteration runs only its own
stages; a changed hyperparameter re-runs exactly the stages that read it and what follows from
them; experiments, metrics, plots, the DAG and params diffs work on the campaign's files.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from dvc_workspace import COMPONENTS, Campaigns, Runner, campaign_stages, copy_workspace, ran_stages

from pipelines.config import write_params

UP_TO_DATE = "Data and pipelines are up to date."


def output_mtimes(workspace: Path) -> dict[str, int]:
    """Modification times of every file a stage writes (everything but git, DVC and scratch)."""
    folders = ("state", "data", "metrics", "plots", "evaluation", "media", "promotion")
    return {
        str(path.relative_to(workspace)): path.stat().st_mtime_ns
        for folder in folders
        for path in (workspace / folder).rglob("*")
        if path.is_file()
    }


def changed_stages(runner: Runner, workspace: Path) -> set[str]:
    """The stages `dvc status` reports (each as a line ``<stage>:`` at the start)."""
    output = runner.dvc(workspace, "status").stdout
    return set(re.findall(r"^(\S+):$", output, flags=re.MULTILINE))


def change_params(workspace: Path, *overrides: str) -> None:
    path = workspace / "params.yaml"
    write_params(path, params_file=path, overrides=list(overrides))


def test_repro_runs_every_stage_once_in_dependency_order(campaigns: Campaigns) -> None:
    stages = campaigns.dvc.stages
    expected = {"init"} | campaign_stages([1, 2], [1, 2])
    assert sorted(stages) == sorted(expected)  # each exactly once
    position = {name: n for n, name in enumerate(stages)}
    assert stages[0] == "init"
    for i in (1, 2):
        chain = [f"collect@{i}", *(f"{c}@{i}" for c in COMPONENTS)]
        assert [position[s] for s in chain] == sorted(position[s] for s in chain)
    assert position["collect@2"] > position["actor_critic@1"]
    assert position["actor_critic@2"] < position["evaluate@2"] < position["promote@2"]
    lock = yaml.safe_load((campaigns.dvc.workspace / "dvc.lock").read_text())
    assert set(lock["stages"]) == expected
    for kind in ("collect", *COMPONENTS):
        assert (campaigns.dvc.workspace / "metrics" / kind / "2.json").is_file(), kind
    assert (campaigns.dvc.workspace / "data" / "episodes" / "2.zarr").is_dir()
    promotion = json.loads((campaigns.dvc.workspace / "promotion" / "2.json").read_text())
    assert promotion["decision"] in ("promoted", "rejected")


def test_a_second_repro_runs_nothing(campaigns: Campaigns, runner: Runner) -> None:
    workspace = campaigns.dvc.workspace
    before = output_mtimes(workspace)
    assert len(before) > 20
    assert UP_TO_DATE in runner.dvc(workspace, "status").stdout
    result = runner.dvc(workspace, "repro")
    assert ran_stages(result.stdout + result.stderr) == []
    assert output_mtimes(workspace) == before
    assert UP_TO_DATE in runner.dvc(workspace, "status").stdout


def test_metrics_plots_dag_and_params_diff(campaigns: Campaigns, runner: Runner) -> None:
    workspace = campaigns.dvc.workspace
    metrics = json.loads(runner.dvc(workspace, "metrics", "show", "--json").stdout)
    shown = json.dumps(metrics)
    for kind in ("collect", *COMPONENTS):
        for i in (1, 2):
            assert f"metrics/{kind}/{i}.json" in shown, (kind, i)
    assert "metrics/evaluate/2.json" in shown
    plots = runner.dvc(workspace, "plots", "show", "--json")
    for component in COMPONENTS:
        assert f"plots/{component}/1.tsv" in plots.stdout
    assert "loss_total" in plots.stdout
    dag = runner.dvc(workspace, "dag").stdout
    for stage in {"init"} | campaign_stages([1, 2], [1, 2]):
        assert stage in dag, stage
    # Nothing changed since the commit: an empty diff; then one changed key shows.
    assert runner.dvc(workspace, "params", "diff").stdout.strip() == ""


def test_adding_an_iteration_plans_only_its_stages(
    campaigns: Campaigns, runner: Runner, tmp_path: Path
) -> None:
    """`common.epochs=3` adds iteration 3; everything before it stays up to date (the run itself:
    test_resume.py's kill test, and the slow test below)."""
    workspace = copy_workspace(campaigns.dvc.workspace, tmp_path / "ws")
    change_params(workspace, "common.epochs=3")
    params = yaml.safe_load((workspace / "params.yaml").read_text())
    # Newest first (DVC's cycle check walks the stage graph once in this order).
    assert list(params["loop"]["iterations"]) == ["3", "2", "1"]
    assert list(params["loop"]["evaluations"]) == ["3", "2", "1"]
    # (`dvc repro --dry` cannot list them: it stops at tokenizer@3, whose manifest does not exist.)
    assert changed_stages(runner, workspace) == campaign_stages([3], [3])


@pytest.mark.slow
def test_adding_an_iteration_runs_only_its_stages(
    campaigns: Campaigns, runner: Runner, tmp_path: Path
) -> None:
    workspace = copy_workspace(campaigns.dvc.workspace, tmp_path / "ws")
    change_params(workspace, "common.epochs=3")
    result = runner.dvc(workspace, "repro")
    assert sorted(ran_stages(result.stdout)) == sorted(campaign_stages([3], [3]))
    assert UP_TO_DATE in runner.dvc(workspace, "status").stdout


def test_each_stage_is_invalidated_by_the_params_it_reads_only(
    campaigns: Campaigns, runner: Runner, tmp_path: Path
) -> None:
    workspace = copy_workspace(campaigns.dvc.workspace, tmp_path / "ws")
    evaluated = campaign_stages([], [1, 2])
    cases = {
        # a training count of one component: that component's stages only
        "training.world_model.steps_per_epoch=2": {"world_model@1", "world_model@2"},
        "training.actor_critic.steps_per_epoch=2": {"actor_critic@1", "actor_critic@2"},
        "training.tokenizer.steps_per_epoch=3": {"tokenizer@1", "tokenizer@2"},
        # a sampler setting: init creates the samplers (it re-runs) and the component trains
        "training.tokenizer.priority_alpha=4": {"init", "tokenizer@1", "tokenizer@2"},
        # the world model's segments: the tokenizer and actor-critic read them too (by design)
        "training.world_model.sequence_length=9": {
            "init",
            *(f"{c}@{i}" for c in COMPONENTS for i in (1, 2)),
            "evaluate@1",
            "evaluate@2",
        },
        # the training envs' step counts: collection only
        "collection.train.num_steps=61": {"collect@1", "collect@2"},
        # the test episodes: evaluation and the promotion replays
        "collection.test.num_episodes=3": evaluated,
        "loop.promotion_confidence=0.9": {"promote@1", "promote@2"},
        # where mid-stage checkpoints are taken changes no result: no stage
        "loop.checkpoint_every_seconds=60": set(),
    }
    original = (workspace / "params.yaml").read_text()
    for override, expected in cases.items():
        (workspace / "params.yaml").write_text(original)
        change_params(workspace, override)
        assert changed_stages(runner, workspace) == expected, override


def test_a_world_model_hyperparameter_reruns_the_world_model_and_what_follows(
    campaigns: Campaigns, runner: Runner, tmp_path: Path
) -> None:
    """init re-runs (it builds every component) but writes the same tokenizer, actor-critic and
    collector files, each component being seeded on its own: collect@1 and tokenizer@1 stay."""
    workspace = copy_workspace(campaigns.dvc.workspace, tmp_path / "ws")
    change_params(workspace, "world_model.transformer.num_layers=1")
    diff = runner.dvc(workspace, "params", "diff").stdout
    assert "world_model.transformer.num_layers" in diff
    result = runner.dvc(workspace, "repro", "actor_critic@1")
    assert ran_stages(result.stdout) == ["init", "world_model@1", "actor_critic@1"]
    changed = changed_stages(runner, workspace)
    # The new policy collects iteration 2; the stages reading the world model's params follow.
    assert "collect@2" in changed
    assert changed >= {"world_model@2", "actor_critic@2", "evaluate@2"}
    assert not changed & {"init", "collect@1", "tokenizer@1", "world_model@1", "actor_critic@1"}


@pytest.mark.slow
def test_a_world_model_hyperparameter_full_rerun(
    campaigns: Campaigns, runner: Runner, tmp_path: Path
) -> None:
    workspace = copy_workspace(campaigns.dvc.workspace, tmp_path / "ws")
    change_params(workspace, "world_model.transformer.num_layers=1")
    result = runner.dvc(workspace, "repro")
    ran = set(ran_stages(result.stdout))
    assert ran == {"init"} | campaign_stages([1, 2], [1, 2]) - {"collect@1", "tokenizer@1"}


def test_an_experiment_runs_and_is_listed(campaigns: Campaigns, runner: Runner, tmp_path: Path) -> None:
    """`dvc exp run -S` on a key only the promotion reads: only the promotions run."""
    workspace = copy_workspace(campaigns.dvc.workspace, tmp_path / "ws")
    result = runner.dvc(workspace, "exp", "run", "-n", "stricter-gate", "-S", "loop.promotion_confidence=0.9")
    assert ran_stages(result.stdout) == ["promote@1", "promote@2"]
    shown = runner.dvc(workspace, "exp", "show", "--json").stdout
    assert "stricter-gate" in shown
    assert "0.9" in shown


@pytest.mark.slow
def test_a_world_model_experiment(campaigns: Campaigns, runner: Runner, tmp_path: Path) -> None:
    workspace = copy_workspace(campaigns.dvc.workspace, tmp_path / "ws")
    result = runner.dvc(
        workspace, "exp", "run", "-n", "one-layer", "-S", "world_model.transformer.num_layers=1"
    )
    assert "world_model@1" in ran_stages(result.stdout)
    assert "one-layer" in runner.dvc(workspace, "exp", "show", "--json").stdout
