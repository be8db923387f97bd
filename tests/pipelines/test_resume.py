"""Exact resume: the campaign gives the same bits however it is run and wherever it is killed.

(a) `dvc repro` (one process per stage) and the in-process loop write bit-identical episode stores,
checkpoints (weights, optimizer and sampler state, step counters) and collector states.

(b) SIGKILL of `dvc repro` and its stage (the whole process group, as a power cut would) at chosen
points, each followed by a plain `dvc repro`, ends bit-identical to the uninterrupted campaign: no
episode lost or duplicated, step counters continuous, no finished stage run again. The points are
reached deterministically through the stages' fault-injection hook
(:mod:`pipelines.stages.faults`, ``IRIS_TEST_KILL_AT``).
"""

from __future__ import annotations

import itertools
import json
import signal
from pathlib import Path

import pytest
from dvc_workspace import (
    COMPONENTS,
    Campaigns,
    Runner,
    assert_same_checkpoints,
    assert_same_collector,
    assert_same_episodes,
    campaign_stages,
    copy_workspace,
    make_workspace,
    ran_stages,
)

from pipelines.config import write_params

# Optimizer steps each component has taken after iteration 1, 2, 3 of the tiny campaign (TINY).
STEPS = {
    "tokenizer": {1: 4, 2: 6, 3: 8},
    "world_model": {1: 2, 2: 3, 3: 4},
    "actor_critic": {1: 1, 2: 2, 3: 3},
}


def assert_same_iteration(a: Path, b: Path, iteration: int) -> None:
    assert_same_episodes(a, b, iteration)
    assert_same_collector(a, b, iteration)
    steps = assert_same_checkpoints(a, b, iteration)
    assert steps == {c: STEPS[c][iteration] for c in COMPONENTS}


def evaluation_evidence(workspace: Path, iteration: int) -> dict[str, object]:
    evidence: dict[str, object] = json.loads((workspace / "evaluation" / f"{iteration}.json").read_text())
    return evidence


def promotion_outcome(workspace: Path, iteration: int) -> dict[str, object]:
    """The promotion decision and its evidence, without the run ids of this workspace's MLflow."""
    outcome: dict[str, object] = json.loads((workspace / "promotion" / f"{iteration}.json").read_text())
    outcome.pop("mlflow")
    return outcome


def test_dvc_campaign_equals_the_in_process_loop(campaigns: Campaigns) -> None:
    staged, reference = campaigns.dvc.workspace, campaigns.reference
    for iteration in (1, 2):
        assert_same_iteration(staged, reference, iteration)
        assert evaluation_evidence(staged, iteration) == evaluation_evidence(reference, iteration)
        assert promotion_outcome(staged, iteration) == promotion_outcome(reference, iteration)


def kill_and_resume(
    runner: Runner, workspace: Path, kills: list[str], expected: set[str]
) -> tuple[list[list[str]], str]:
    """`dvc repro` killed at each point in turn, then a `dvc repro` that finishes.

    Every killed run must die by SIGKILL in the stage named by its point; every run after a kill
    must start with the stage that was killed (no finished stage runs again); every stage of
    ``expected`` must finish exactly once. Returns the stages each run started and the output of
    all runs."""
    runs: list[list[str]] = []
    outputs = []
    for kill_at in kills:
        result = runner.dvc(workspace, "repro", check=False, env={"IRIS_TEST_KILL_AT": kill_at})
        output = result.stdout + result.stderr
        outputs.append(output)
        assert result.returncode == -signal.SIGKILL, f"{kill_at}: exit {result.returncode}\n{output[-4000:]}"
        runs.append(ran_stages(output))
        assert runs[-1] and runs[-1][-1] == kill_at.split(":")[0], (kill_at, runs[-1], output[-4000:])
    # A killed dvc leaves its lock behind (.dvc/tmp/rwlock names the dead pid): the next dvc sees
    # that the process is gone and goes ahead, so no lock needs removing by hand.
    final = runner.dvc(workspace, "repro")
    outputs.append(final.stdout + final.stderr)
    runs.append(ran_stages(final.stdout))
    for before, after in itertools.pairwise(runs):
        assert after[0] == before[-1], (before, after)
    completed = [stage for run in runs[:-1] for stage in run[:-1]] + runs[-1]
    assert sorted(completed) == sorted(expected)
    assert "Data and pipelines are up to date." in runner.dvc(workspace, "status").stdout
    return runs, "\n".join(outputs)


def assert_no_leftovers(workspace: Path) -> None:
    """No mid-stage checkpoint and no half-written file or store is left behind."""
    partial = workspace / ".iris" / "partial"
    assert not partial.exists() or not any(partial.iterdir()), list(partial.rglob("*"))
    leftovers = [p for p in workspace.rglob("*.partial") if ".git" not in p.parts and ".dvc" not in p.parts]
    assert leftovers == []


def test_kills_in_a_new_iteration_resume_bit_identically(
    campaigns: Campaigns, runner: Runner, tmp_path: Path
) -> None:
    """Iteration 3 added to the finished campaign, killed during a store write, between the
    store's commit and the manifest, in the middle of the tokenizer's steps and after the
    promotion registered its model; it ends as iteration 3 of the uninterrupted in-process run."""
    workspace = copy_workspace(campaigns.dvc.workspace, tmp_path / "ws")
    params = workspace / "params.yaml"
    write_params(params, params_file=params, overrides=["common.epochs=3"])
    kills = [
        "collect@3:part=1",  # the first episode part is in the store (under its temporary name)
        "collect@3:store_committed",  # the store is in place, its manifest not yet
        "tokenizer@3:step=7",  # 1 of the iteration's 2 steps taken and checkpointed mid-stage
        "promote@3:registered",  # the model version exists in the registry, no decision yet
    ]
    runs, output = kill_and_resume(runner, workspace, kills, campaign_stages([3], [3]))
    assert runs[0] == ["collect@3"]
    assert runs[1] == ["collect@3"]
    assert runs[2] == ["collect@3", "tokenizer@3"]
    assert runs[3][0] == "tokenizer@3" and runs[3][-1] == "promote@3"
    assert runs[4] == ["promote@3"]
    assert "tokenizer@3: continuing from step 7 (mid-stage checkpoint)" in output

    assert_same_iteration(workspace, campaigns.reference, 3)
    assert evaluation_evidence(workspace, 3) == evaluation_evidence(campaigns.reference, 3)
    # Iterations 1 and 2 were not touched.
    for iteration in (1, 2):
        assert_same_iteration(workspace, campaigns.dvc.workspace, iteration)
    # Registered once (the same version number as in the reference's registry), same decision.
    assert promotion_outcome(workspace, 3) == promotion_outcome(campaigns.reference, 3)
    assert_no_leftovers(workspace)


def test_a_killed_training_stage_continues_from_its_mid_stage_checkpoint(
    campaigns: Campaigns, runner: Runner, tmp_path: Path
) -> None:
    """The tokenizer of iteration 1, forced to run again and killed after 2 of its 4 steps,
    continues from step 2 and writes the very file recorded in dvc.lock: nothing after it runs."""
    workspace = copy_workspace(campaigns.dvc.workspace, tmp_path / "ws")
    kill = {"IRIS_TEST_KILL_AT": "tokenizer@1:step=2"}
    killed = runner.dvc(workspace, "repro", "-f", "-s", "tokenizer@1", check=False, env=kill)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-4000:]
    assert not (workspace / "state" / "tokenizer" / "1.pt").exists()  # DVC removed the output
    assert len(list((workspace / ".iris" / "partial" / "tokenizer@1").glob("*.pt"))) == 1
    # Forced again: a plain `dvc repro` would check the stage's earlier result (the same bits, as
    # dvc.lock records) out of DVC's cache instead of running it. A stage killed on its first run
    # has no such result: test_kills_in_a_new_iteration_resume_bit_identically covers that case.
    resumed = runner.dvc(workspace, "repro", "-f", "-s", "tokenizer@1")
    output = resumed.stdout + resumed.stderr
    assert ran_stages(output) == ["tokenizer@1"]
    assert ran_stages(runner.dvc(workspace, "repro").stdout) == []  # same bits: downstream is up to date
    assert "tokenizer@1: continuing from step 2 (mid-stage checkpoint)" in output
    assert "Data and pipelines are up to date." in runner.dvc(workspace, "status").stdout
    assert_same_checkpoints(workspace, campaigns.dvc.workspace, 1)
    assert (workspace / "plots" / "tokenizer" / "1.tsv").read_bytes() == (
        campaigns.dvc.workspace / "plots" / "tokenizer" / "1.tsv"
    ).read_bytes()
    assert_no_leftovers(workspace)


@pytest.mark.slow
def test_a_campaign_killed_five_times_from_scratch(
    campaigns: Campaigns, runner: Runner, tmp_path: Path
) -> None:
    """A fresh campaign killed in both iterations (collection, two training stages, between a
    store's commit and its manifest, promotion) ends equal to the uninterrupted one."""
    workspace = make_workspace(runner, tmp_path / "ws")
    kills = [
        "collect@1:part=1",
        "tokenizer@1:step=2",
        "world_model@1:step=1",
        "collect@2:store_committed",
        "promote@2:registered",
    ]
    runs, output = kill_and_resume(runner, workspace, kills, {"init"} | campaign_stages([1, 2], [1, 2]))
    assert runs[0] == ["init", "collect@1"]
    assert "tokenizer@1: continuing from step 2 (mid-stage checkpoint)" in output
    assert "world_model@1: continuing from step 1 (mid-stage checkpoint)" in output
    for iteration in (1, 2):
        assert_same_iteration(workspace, campaigns.dvc.workspace, iteration)
    assert evaluation_evidence(workspace, 2) == evaluation_evidence(campaigns.dvc.workspace, 2)
    assert_no_leftovers(workspace)
