"""The `train` flow on the toy pipeline, against a real Prefect API and real DVC."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from toy_pipeline import control, params_yaml, read_artifact, runs

from pipelines.flows import train
from pipelines.flows.dag import plan_from_params
from pipelines.flows.lock import CampaignRunningError
from pipelines.flows.stages import PermanentStageError

pytestmark = pytest.mark.usefixtures("prefect_api")


def test_the_flow_runs_every_stage_in_order_then_a_rerun_is_a_noop(
    tmp_path: Path, toy_dvc_yaml: Path
) -> None:
    workspace = tmp_path / "seed-0"
    text = params_yaml(iterations=2, evaluations=[2])
    expected = plan_from_params(yaml.safe_load(text)).stages()

    summary = train(workspace=str(workspace), params_yaml=text, dvc_yaml=str(toy_dvc_yaml), retries=0)

    assert runs(workspace) == expected
    assert summary["ran"] == expected
    assert [outcome["stage"] for outcome in summary["stages"]] == expected
    assert summary["iterations"]["2"]["promotion"]["decision"] == "promoted"
    assert summary["iterations"]["1"]["promotion"] is None

    # The artifacts: one markdown summary per iteration, and the campaign's progress at 100 %.
    markdown = read_artifact("seed-0-iteration-2").data
    assert "# Campaign `seed-0`: iteration 2" in markdown
    assert "**Promotion: promoted**: version 2 of `toy-agent`" in markdown
    assert "| test/return_mean | 3 |" in markdown
    assert "| world_model | 0.3333 | 0.5 |" in markdown
    assert "| world_model@2 | world_model/eval/loss_total | 0.5 |" in markdown
    assert "/#/experiments/0/runs/run-evaluate-2)" in markdown
    assert "No evaluation in this iteration." in read_artifact("seed-0-iteration-1").data
    progress = read_artifact("seed-0-progress")
    assert float(progress.data) == pytest.approx(100.0)

    rerun = train(workspace=str(workspace), retries=0)
    assert rerun["ran"] == []
    assert runs(workspace) == expected  # no stage command started again
    # One `dvc status` found every stage up to date, so no `dvc repro` was needed.
    assert [outcome.get("checked_by") for outcome in rerun["stages"]] == ["dvc status"] * len(expected)


def test_a_resumed_flow_passes_over_the_finished_stages_and_runs_the_rest(
    tmp_path: Path, toy_dvc_yaml: Path
) -> None:
    workspace = tmp_path / "resumed"
    text = params_yaml(iterations=2, evaluations=[2])
    expected = plan_from_params(yaml.safe_load(text)).stages()
    train(workspace=str(workspace), params_yaml=text, dvc_yaml=str(toy_dvc_yaml), retries=0)
    # As if the campaign had died during world_model@2: its output and everything after it is missing.
    stale = expected.index("world_model@2")
    lost = ("state/world_model/2.pt", "state/actor_critic/2.pt", "evaluation/2.json", "promotion/2.json")
    for path in lost:
        (workspace / path).unlink()

    resumed = train(workspace=str(workspace), retries=0)

    checked = [outcome["stage"] for outcome in resumed["stages"] if outcome.get("checked_by") == "dvc status"]
    assert checked == expected[:stale]
    assert [outcome["stage"] for outcome in resumed["stages"]] == expected
    for path in lost:
        assert (workspace / path).exists(), path  # rerun, or restored from DVC's run cache
    rerun = runs(workspace)[len(expected) :]
    assert set(rerun) <= set(expected[stale:])
    assert "promote@2" in rerun  # its output is not cached, so only running it brings it back


def test_a_transient_failure_is_retried_and_succeeds(tmp_path: Path, toy_dvc_yaml: Path) -> None:
    workspace = tmp_path / "flaky"
    control(workspace, "world_model@1", "transient-once")
    # A permanent-failure status file left by an earlier attempt must not turn this crash permanent.
    (workspace / ".iris" / "status").mkdir(parents=True)
    (workspace / ".iris" / "status" / "world_model@1.json").write_text('{"permanent": true, "error": "old"}')

    summary = train(
        workspace=str(workspace),
        params_yaml=params_yaml(iterations=1, evaluations=[]),
        dvc_yaml=str(toy_dvc_yaml),
        retries=1,
        retry_delay_seconds=0,
    )

    assert runs(workspace).count("world_model@1") == 2
    assert runs(workspace)[-1] == "actor_critic@1"
    assert summary["ran"][-1] == "actor_critic@1"


def test_a_permanent_failure_is_not_retried_and_fails_the_flow_with_its_error(
    tmp_path: Path, toy_dvc_yaml: Path
) -> None:
    workspace = tmp_path / "broken"
    control(workspace, "tokenizer@1", "permanent:loss is NaN at step 3")

    with pytest.raises(PermanentStageError, match=r"^tokenizer@1: loss is NaN at step 3$"):
        train(
            workspace=str(workspace),
            params_yaml=params_yaml(iterations=1, evaluations=[]),
            dvc_yaml=str(toy_dvc_yaml),
            retries=3,
            retry_delay_seconds=0,
        )

    assert runs(workspace) == ["init", "collect@1", "tokenizer@1"]


def test_the_workspace_lock_refuses_a_second_concurrent_flow(tmp_path: Path, toy_dvc_yaml: Path) -> None:
    workspace = tmp_path / "busy"
    control(workspace, "collect@1", "wait")
    parameters = {
        "workspace": str(workspace),
        "params_yaml": params_yaml(iterations=1, evaluations=[]),
        "dvc_yaml": str(toy_dvc_yaml),
        "retries": 0,
    }
    first: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: first.update(train(**parameters)))
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while "collect@1" not in runs(workspace) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "collect@1" in runs(workspace), "the first flow never reached collect@1"

        with pytest.raises(CampaignRunningError, match="already running"):
            train(**parameters)
    finally:
        (workspace / ".iris" / "toy" / "collect@1.release").touch()
        thread.join(timeout=120)
    assert first["ran"][-1] == "actor_critic@1"
    assert runs(workspace).count("collect@1") == 1


def test_a_stage_missing_from_dvc_yaml_fails_the_flow_before_any_stage_runs(
    tmp_path: Path, toy_dvc_yaml: Path
) -> None:
    pipeline = yaml.safe_load(toy_dvc_yaml.read_text())
    del pipeline["stages"]["promote"]
    without_promote = tmp_path / "dvc.yaml"
    without_promote.write_text(yaml.safe_dump(pipeline))
    workspace = tmp_path / "incomplete"

    with pytest.raises(ValueError, match=r"no stages \['promote@1'\]"):
        train(
            workspace=str(workspace),
            params_yaml=params_yaml(iterations=1, evaluations=[1]),
            dvc_yaml=str(without_promote),
        )

    assert runs(workspace) == []
