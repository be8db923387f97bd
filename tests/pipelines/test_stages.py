"""Stage plumbing: the order of the loop, stage names, the `iris stage` exit codes and status
files, a non-finite loss stopping a training stage, JSON without NaN."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from dvc_workspace import TINY

import pipelines.stages.train as train_stage
from pipelines.config import LoopConfig, write_params
from pipelines.stages.cli import EXIT_PERMANENT, main
from pipelines.stages.common import StageError, write_json
from pipelines.stages.runner import StageSpec, parse_stage, run_stage, stage_order
from pipelines.workspace import Workspace


def chain(*keys: int) -> dict[str, dict[str, str]]:
    return {str(k): {"prev": str(k - 1)} for k in keys}


def test_stage_order_follows_the_papers_loop() -> None:
    loop = LoopConfig(iterations=chain(1, 2, 3), evaluations={"2": {"prev": "1"}, "3": {"prev": "2"}})
    assert [spec.name for spec in stage_order(loop)] == [
        "init",
        "collect@1", "tokenizer@1", "world_model@1", "actor_critic@1",
        "collect@2", "tokenizer@2", "world_model@2", "actor_critic@2", "evaluate@2", "promote@2",
        "collect@3", "tokenizer@3", "world_model@3", "actor_critic@3", "evaluate@3", "promote@3",
    ]  # fmt: skip
    assert [spec.name for spec in stage_order(LoopConfig())] == ["init"]


def test_parse_stage() -> None:
    assert parse_stage("init") == StageSpec("init", 0)
    assert parse_stage("world_model@12") == StageSpec("world_model", 12)
    assert parse_stage("promote@3").name == "promote@3"
    for bad in ("init@1", "collect", "collect@", "collect@x", "collect@-1", "train@1", "tokenizer@1@2", ""):
        with pytest.raises(StageError, match="unknown stage"):
            parse_stage(bad)


def test_write_json_writes_nan_and_infinities_as_null(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    write_json(
        path, {"a": math.nan, "b": [1.5, math.inf], "c": {"d": -math.inf}, "e": torch.tensor(2).item()}
    )
    assert "NaN" not in path.read_text() and "Infinity" not in path.read_text()
    assert json.loads(path.read_text()) == {"a": None, "b": [1.5, None], "c": {"d": None}, "e": 2}


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A workspace holding only a tiny params.yaml (MLflow in its own mlflow.db)."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("IRIS_TEST_KILL_AT", raising=False)
    write_params(tmp_path / "params.yaml", overrides=TINY)
    return tmp_path


def status_of(workspace: Path, stage: str) -> dict[str, object]:
    content: dict[str, object] = json.loads(Workspace(workspace).status(stage).read_text())
    return content


def test_a_missing_input_is_a_permanent_error_with_a_status_file(workspace: Path) -> None:
    assert main("tokenizer@1", workspace) == EXIT_PERMANENT
    status = status_of(workspace, "tokenizer@1")
    assert status["permanent"] is True and status["stage"] == "tokenizer@1"
    assert "missing input" in str(status["error"]) and "state/tokenizer/0.pt" in str(status["error"])


def test_an_iteration_outside_the_loop_is_a_permanent_error(workspace: Path) -> None:
    assert main("collect@9", workspace) == EXIT_PERMANENT
    assert "not in loop.iterations" in str(status_of(workspace, "collect@9")["error"])
    assert main("bogus@1", workspace) == EXIT_PERMANENT
    assert "unknown stage" in str(status_of(workspace, "bogus@1")["error"])


def test_a_bad_params_key_is_a_permanent_error_naming_the_key(workspace: Path) -> None:
    params = workspace / "params.yaml"
    params.write_text(params.read_text().replace("  num_layers:", "  num_layerz:", 1))
    assert main("init", workspace) == EXIT_PERMANENT
    error = str(status_of(workspace, "init")["error"])
    assert error.startswith("invalid configuration") and "num_layerz" in error


@pytest.fixture(scope="module")
def collected(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """init and collect@1 of the tiny campaign, run through the stage CLI (exit 0, no status file)."""
    root = tmp_path_factory.mktemp("collected")
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        patch.delenv("IRIS_TEST_KILL_AT", raising=False)
        write_params(root / "params.yaml", overrides=TINY)
        status = Workspace(root).status("init")
        status.parent.mkdir(parents=True)
        status.write_text('{"stage": "init", "permanent": true, "error": "an earlier failure"}\n')
        assert main("init", root) == 0
        assert not status.exists()  # a success clears the last failure's status
        assert main("collect@1", root) == 0
        assert not Workspace(root).status("collect@1").exists()
    return root


def test_a_non_finite_loss_stops_training_and_keeps_the_last_checkpoint(
    collected: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tokenizer's weights turn NaN before its third step: the stage exits 2 naming the
    component and the step; its mid-stage checkpoint (2 steps) and its input stay; no output."""
    workspace = tmp_path / "ws"
    shutil.copytree(collected, workspace)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    real = train_stage.train_component
    calls = []

    def poisoned(module: torch.nn.Module, *args: object, **kwargs: object) -> dict[str, float]:
        calls.append(kwargs["first_step"])
        if len(calls) == 3:
            with torch.no_grad():
                for parameter in module.parameters():
                    parameter.fill_(math.nan)
        return real(module, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(train_stage, "train_component", poisoned)
    before = Workspace(workspace).checkpoint("tokenizer", 0).read_bytes()
    assert main("tokenizer@1", workspace) == EXIT_PERMANENT
    error = str(status_of(workspace, "tokenizer@1")["error"])
    assert "tokenizer" in error and "non-finite loss at step 2" in error
    assert calls == [0, 1, 2]
    assert not Workspace(workspace).checkpoint("tokenizer", 1).exists()
    assert Workspace(workspace).checkpoint("tokenizer", 0).read_bytes() == before
    (partial,) = Workspace(workspace).partial("tokenizer@1").glob("*.pt")
    saved = torch.load(partial, weights_only=True)
    assert saved["steps"] == 2
    assert all(torch.isfinite(v).all() for v in saved["weights"].values() if v.is_floating_point())

    # With the fault gone the stage continues from the mid-stage checkpoint and finishes.
    monkeypatch.setattr(train_stage, "train_component", real)
    result = run_stage(workspace, parse_stage("tokenizer@1"))
    assert result.metrics["tokenizer/steps"] == 4
    assert "tokenizer/wall_seconds" in result.metrics
    assert not Workspace(workspace).partial("tokenizer@1").exists()
