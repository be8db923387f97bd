"""Campaign and stage runs against a real SQLite tracking store."""

from __future__ import annotations

import json
import math
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_GIT_COMMIT, MLFLOW_PARENT_RUN_ID

from iris_core.config import config_to_dict
from pipelines.config import load_config
from pipelines.tracking import campaign_run_id, finish_campaign, flatten_params, stage_run
from pipelines.tracking.runs import PARAMS_ARTIFACT, stage_run_ids

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_flatten_params_uses_dotted_keys_and_json_values() -> None:
    tree = {"a": {"b": {"c": 1}, "d": [1, 2]}, "e": "text", "f": None, "g": True, "h": 0.5}
    assert flatten_params(tree) == {
        "a.b.c": "1",
        "a.d": "[1, 2]",
        "e": "text",
        "f": "null",
        "g": "true",
        "h": "0.5",
    }


def test_campaign_run_holds_the_whole_flattened_config(workspace: Path) -> None:
    config = load_config(overrides=["params=quickstart"]).with_num_actions(17)
    tree = config_to_dict(config)
    run_id = campaign_run_id(
        workspace, "config-campaign", name="quickstart", params=tree, tags={"env": "crafter"}
    )
    run = MlflowClient().get_run(run_id)
    expected = flatten_params(tree)
    assert len(expected) > 100  # more than one batch of params
    assert run.data.params == expected
    assert run.data.params["world_model.transformer.num_layers"] == "2"
    assert run.data.tags["iris.campaign"] == "config-campaign"
    assert run.data.tags["env"] == "crafter"
    assert run.info.run_name == "quickstart"


def test_long_param_values_are_truncated_and_kept_whole_in_an_artifact(
    workspace: Path, tmp_path: Path
) -> None:
    long_value = "x" * 7000
    run_id = campaign_run_id(workspace, "long-values", params={"notes": long_value, "short": 1})
    client = MlflowClient()
    logged = client.get_run(run_id).data.params
    assert len(logged["notes"]) == 6000
    assert logged["notes"].endswith("[truncated]")
    assert logged["short"] == "1"
    path = client.download_artifacts(run_id, PARAMS_ARTIFACT, str(tmp_path))
    assert json.loads(Path(path).read_text())["notes"] == long_value


def test_campaign_run_is_found_again_not_duplicated(workspace: Path) -> None:
    first = campaign_run_id(workspace, "found-again", params={"a": 1})
    again = campaign_run_id(workspace, "found-again", params={"a": 1, "b": 2})
    assert again == first
    assert MlflowClient().get_run(first).data.params == {"a": "1", "b": "2"}
    with pytest.warns(UserWarning, match="other values"):
        campaign_run_id(workspace, "found-again", params={"a": 5})
    assert MlflowClient().get_run(first).data.params["a"] == "1"


def test_stage_processes_share_the_parent_run(workspace: Path) -> None:
    """A stage in another process finds the parent run this process created; so does the next stage."""
    parent = campaign_run_id(workspace, "two-processes")
    script = (
        "import sys\nfrom pathlib import Path\nfrom pipelines.tracking import stage_run\n"
        "with stage_run(Path(sys.argv[1]), campaign_id='two-processes', stage='collect', iteration=1) as t:\n"
        "    print(t.run_id)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(workspace)],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO_ROOT,
    )
    other_process_child = result.stdout.strip().splitlines()[-1]
    with stage_run(workspace, campaign_id="two-processes", stage="tokenizer", iteration=1) as tracker:
        pass
    client = MlflowClient()
    for child_id in (other_process_child, tracker.run_id):
        assert client.get_run(child_id).data.tags[MLFLOW_PARENT_RUN_ID] == parent
    assert list(stage_run_ids(workspace, "two-processes")) == [other_process_child, tracker.run_id]
    assert list(stage_run_ids(workspace, "two-processes", stage="tokenizer")) == [tracker.run_id]


def test_stage_run_is_a_tagged_child_of_the_campaign(workspace: Path) -> None:
    with stage_run(
        workspace,
        campaign_id="structure",
        stage="world_model",
        iteration=3,
        params={"training": {"steps": 10}},
        tags={"dvc.stage_hash": "abc123", "iris.manifest_digest": "d1g35t"},
    ) as tracker:
        tracker.set_tags({"extra": 7})
    client = MlflowClient()
    run = client.get_run(tracker.run_id)
    parent = campaign_run_id(workspace, "structure")
    assert run.data.tags[MLFLOW_PARENT_RUN_ID] == parent
    assert run.data.tags["iris.stage"] == "world_model"
    assert run.data.tags["iris.iteration"] == "3"
    assert run.data.tags["iris.campaign"] == "structure"
    assert run.data.tags["dvc.stage_hash"] == "abc123"
    assert run.data.tags["iris.manifest_digest"] == "d1g35t"
    assert run.data.tags["extra"] == "7"
    assert run.data.params == {"training.steps": "10"}
    assert run.info.run_name == "world_model@3"
    assert run.info.status == "FINISHED"
    assert MLFLOW_GIT_COMMIT not in run.data.tags  # the temporary workspace is no git checkout


def test_stage_run_records_the_git_commit(tmp_path_factory: pytest.TempPathFactory, workspace: Path) -> None:
    checkout = tmp_path_factory.mktemp("checkout")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "-C", str(checkout)]
    subprocess.run([*git, "init", "-q"], check=True)
    (checkout / "file").write_text("x")
    subprocess.run([*git, "add", "file"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "one"], check=True)
    head = subprocess.run(
        [*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True
    ).stdout.strip()
    # The workspace's store, a git checkout as the workspace folder: the tracking URI comes from the env.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{workspace / 'mlflow.db'}")
        with stage_run(checkout, campaign_id="git", stage="init", iteration=0) as tracker:
            pass
    assert MlflowClient().get_run(tracker.run_id).data.tags[MLFLOW_GIT_COMMIT] == head


def test_metrics_are_all_logged_with_their_steps(workspace: Path) -> None:
    with stage_run(workspace, campaign_id="metrics", stage="tokenizer", iteration=1) as tracker:
        for step in range(50):
            tracker.sink.log(
                {"tokenizer/train/loss": 1.0 / (step + 1), "tokenizer/train/grad_norm": step}, step
            )
        tracker.log_metrics({"tokenizer/eval/loss": 0.25}, step=50)
    client = MlflowClient()
    history = client.get_metric_history(tracker.run_id, "tokenizer/train/loss")
    points = sorted((m.step, m.value) for m in history)
    assert [step for step, _ in points] == list(range(50))
    assert [value for _, value in points] == pytest.approx([1.0 / (step + 1) for step in range(50)])
    assert len(client.get_metric_history(tracker.run_id, "tokenizer/train/grad_norm")) == 50
    assert client.get_run(tracker.run_id).data.metrics["tokenizer/eval/loss"] == 0.25


def test_sink_does_not_wait_for_the_database(workspace: Path) -> None:
    """While another connection holds the database's write lock, ``log`` still returns at once."""
    with stage_run(workspace, campaign_id="async", stage="actor_critic", iteration=2) as tracker:
        blocker = sqlite3.connect(workspace / "mlflow.db", timeout=30, check_same_thread=False)
        blocker.execute("BEGIN EXCLUSIVE")
        try:
            start = time.perf_counter()
            for step in range(20):
                tracker.sink.log({"actor_critic/train/loss": float(step)}, step)
            elapsed = time.perf_counter() - start
            time.sleep(0.3)  # the writer thread is now blocked on the lock
            assert any(t.name == "mlflow-metrics" and t.is_alive() for t in threading.enumerate())
        finally:
            blocker.rollback()
            blocker.close()
    assert elapsed < 0.1
    history = MlflowClient().get_metric_history(tracker.run_id, "actor_critic/train/loss")
    assert sorted(m.step for m in history) == list(range(20))


def test_non_finite_values_are_logged_as_nan(workspace: Path) -> None:
    with stage_run(workspace, campaign_id="nonfinite", stage="world_model", iteration=1) as tracker:
        tracker.sink.log({"a": math.nan, "b": math.inf, "c": -math.inf, "d": 1.5}, step=0)
        tracker.log_metrics({"e": math.inf}, step=1)
    client = MlflowClient()
    for key in ("a", "b", "c", "e"):
        [metric] = client.get_metric_history(tracker.run_id, key)
        assert math.isnan(metric.value), key
    [finite] = client.get_metric_history(tracker.run_id, "d")
    assert finite.value == 1.5


def run_stage_that_raises(
    workspace: Path, campaign_id: str, error: BaseException, run_ids: list[str]
) -> None:
    with stage_run(workspace, campaign_id=campaign_id, stage="world_model", iteration=4) as tracker:
        run_ids.append(tracker.run_id)
        tracker.sink.log({"loss": 1.0}, step=0)
        raise error


def test_a_failing_stage_ends_its_run_failed(workspace: Path) -> None:
    run_ids: list[str] = []
    with pytest.raises(RuntimeError, match="out of memory"):
        run_stage_that_raises(workspace, "failing", RuntimeError("out of memory"), run_ids)
    run = MlflowClient().get_run(run_ids[0])
    assert run.info.status == "FAILED"
    assert run.data.tags["iris.error"] == "RuntimeError: out of memory"
    assert run.data.metrics["loss"] == 1.0  # what was logged before the failure is kept


def test_an_interrupted_stage_ends_its_run_killed(workspace: Path) -> None:
    run_ids: list[str] = []
    with pytest.raises(KeyboardInterrupt):
        run_stage_that_raises(workspace, "interrupted", KeyboardInterrupt(), run_ids)
    run = MlflowClient().get_run(run_ids[0])
    assert run.info.status == "KILLED"
    assert "iris.error" not in run.data.tags


def test_artifacts_go_to_the_workspace(workspace: Path, tmp_path: Path) -> None:
    (tmp_path / "metrics.json").write_text('{"loss": 1}')
    media = tmp_path / "media"
    media.mkdir()
    (media / "frame.png").write_bytes(b"png")
    with stage_run(workspace, campaign_id="artifacts", stage="evaluate", iteration=1) as tracker:
        tracker.log_artifact(tmp_path / "metrics.json")
        tracker.log_artifacts(media, artifact_path="media")
        tracker.log_text("# summary", "summary.md")
    client = MlflowClient()
    assert sorted(a.path for a in client.list_artifacts(tracker.run_id)) == [
        "media",
        "metrics.json",
        "summary.md",
    ]
    assert [a.path for a in client.list_artifacts(tracker.run_id, "media")] == ["media/frame.png"]
    stored = list((workspace / "mlartifacts").rglob("summary.md"))
    assert len(stored) == 1 and stored[0].read_text() == "# summary"


def test_finish_campaign_ends_the_parent(workspace: Path) -> None:
    parent = campaign_run_id(workspace, "finished")
    assert MlflowClient().get_run(parent).info.status == "RUNNING"
    finish_campaign(workspace, "finished")
    assert MlflowClient().get_run(parent).info.status == "FINISHED"


def test_ids_that_would_need_quoting_are_rejected(workspace: Path) -> None:
    with pytest.raises(ValueError, match="campaign id"):
        campaign_run_id(workspace, "it's")
