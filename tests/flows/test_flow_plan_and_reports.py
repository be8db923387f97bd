"""The stage order from params.yaml and the markdown of an iteration: pure functions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from toy_pipeline import params_yaml

from pipelines.flows.dag import plan_from_params
from pipelines.flows.reports import artifact_key, iteration_markdown, read_iteration


def test_the_plan_walks_iterations_in_prev_order_with_evaluations_where_listed() -> None:
    params = yaml.safe_load(params_yaml(iterations=3, evaluations=[2, 3]))
    # Key order in the file must not matter: only the prev chain does.
    params["loop"]["iterations"] = dict(reversed(list(params["loop"]["iterations"].items())))
    plan = plan_from_params(params)
    assert plan.iterations == ("1", "2", "3")
    assert plan.stages() == [
        "init",
        *["collect@1", "tokenizer@1", "world_model@1", "actor_critic@1"],
        *["collect@2", "tokenizer@2", "world_model@2", "actor_critic@2", "evaluate@2", "promote@2"],
        *["collect@3", "tokenizer@3", "world_model@3", "actor_critic@3", "evaluate@3", "promote@3"],
    ]
    assert plan.closing_stage("1") == "actor_critic@1"
    assert plan.closing_stage("2") == "promote@2"


@pytest.mark.parametrize(
    ("loop", "message"),
    [
        ({"iterations": {"1": {"prev": "0"}, "3": {"prev": "2"}}}, "not reachable"),
        ({"iterations": {"1": {"prev": "0"}, "2": {"prev": "0"}}}, "both follow"),
        ({"iterations": {"1": {"prev": "0"}}, "evaluations": {"2": {"prev": "1"}}}, "do not exist"),
        ({"iterations": {"1": {}}}, "'prev' key"),
        ({}, "no loop.iterations"),
    ],
)
def test_a_broken_loop_section_is_refused(loop: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        plan_from_params({"loop": loop} if loop else {})


def test_artifact_keys_are_lowercase_dashes() -> None:
    assert artifact_key("Seed_0 run", "iteration", "12") == "seed-0-run-iteration-12"
    assert artifact_key("__") == "campaign"


def _write(path: Path, value: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value))


def test_the_iteration_markdown_has_decision_evidence_scores_losses_and_mlflow_links(tmp_path: Path) -> None:
    _write(
        tmp_path / "metrics/tokenizer/4.json",
        {"tokenizer/iteration/loss_total": 0.5, "tokenizer/seconds": 7.0},
    )
    _write(
        tmp_path / "metrics/evaluate/4.json",
        {"test/return_mean": 3.14159, "tokenizer/eval/loss_total": 0.012345},
    )
    _write(
        tmp_path / "promotion/4.json",
        {
            "iteration": 4,
            "decision": "rejected",
            "reason": "the interval includes zero",
            "registered_model": "delta-iris",
            "version": 5,
            "champion_version": 3,
            "evidence": {"mean_difference": 0.1, "ci_low": -0.2, "ci_high": None, "num_pairs": 16},
            "mlflow": {
                "tracking_uri": "sqlite:///mlflow.db",
                "experiment_id": "7",
                "parent_run_id": "p1",
                "run_ids": {"evaluate@4": "r9"},
            },
        },
    )
    markdown = iteration_markdown(read_iteration(tmp_path, "4"), "seed-0", ui_base="http://ui:5000")
    assert markdown.startswith("# Campaign `seed-0`: iteration 4\n")
    assert "**Promotion: rejected**: version 5 of `delta-iris` (champion was version 3)." in markdown
    assert "the interval includes zero" in markdown
    assert "| ci_low | -0.2 |" in markdown
    assert "| num_pairs | 16 |" in markdown
    assert "| ci_high | n/a |" in markdown
    assert (
        "## Scores (evaluate@4)\n\n| metric | value |\n|---|---|\n| test/return_mean | 3.142 |\n\n"
        in markdown
    )
    assert "| tokenizer | 0.5 | 0.01235 |" in markdown  # train and held-out loss of a component
    assert "| tokenizer@4 | tokenizer/seconds | 7 |" in markdown
    assert "| evaluate@4 | tokenizer/eval/loss_total | 0.01235 |" in markdown
    assert "## MLflow runs\n\n- [campaign run](http://ui:5000/#/experiments/7/runs/p1)" in markdown
    assert "- [evaluate@4](http://ui:5000/#/experiments/7/runs/r9)" in markdown


def test_an_iteration_without_evaluation_says_so(tmp_path: Path) -> None:
    _write(tmp_path / "metrics/world_model/1.json", {"world_model/iteration/loss_total": 2.0})
    markdown = iteration_markdown(read_iteration(tmp_path, "1"), "c", ui_base="http://x")
    assert "No evaluation in this iteration." in markdown
    assert "| world_model | 2 | n/a |" in markdown
    assert "| world_model@1 | world_model/iteration/loss_total | 2 |" in markdown
    assert "MLflow" not in markdown


def test_mlflow_runs_without_an_experiment_id_are_listed_by_id(tmp_path: Path) -> None:
    _write(tmp_path / "promotion/1.json", {"decision": "promoted", "mlflow": {"run_id": "abc"}})
    markdown = iteration_markdown(read_iteration(tmp_path, "1"), "c", ui_base="http://x")
    assert "- promotion run: run `abc`" in markdown
