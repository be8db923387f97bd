"""The evaluate stage writes what the config says: ``collection.test.num_episodes_to_save`` episode
videos and the reconstructions only with ``evaluation.save_reconstructions``."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from dvc_workspace import TINY

from pipelines.config import load_experiment, write_params
from pipelines.stages.cli import main
from pipelines.stages.common import StageContext
from pipelines.stages.evaluate import run_evaluate, video_name
from pipelines.workspace import Workspace


@pytest.fixture(scope="module")
def initialised(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny workspace after its init stage: the untrained agent of iteration 0."""
    root = tmp_path_factory.mktemp("evaluate-media")
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        patch.delenv("IRIS_TEST_KILL_AT", raising=False)
        write_params(root / "params.yaml", overrides=[*TINY, "collection.test.num_episodes=3"])
        assert main("init", root) == 0
    return root


def evaluate(root: Path, *overrides: str) -> list[str]:
    experiment = load_experiment(params_file=root / "params.yaml", overrides=overrides)
    ctx = StageContext(Workspace(root), experiment, torch.device("cpu"))
    result = run_evaluate(ctx, 0)
    media = Workspace(root).media(0)
    written = sorted(path.name for path in media.iterdir() if _ours(path.name))
    assert sorted(path.name for path, _ in result.artifacts if _ours(path.name)) == written  # to MLflow
    return written


def _ours(name: str) -> bool:
    """The files these keys govern (the stage writes others too, e.g. a dream)."""
    return name == "reconstructions.png" or re.fullmatch(r"test_episode(_\d+)?\.mp4", name) is not None


def test_episode_videos_follow_num_episodes_to_save(initialised: Path) -> None:
    videos = [video_name(i) for i in range(2)]
    assert videos == ["test_episode.mp4", "test_episode_1.mp4"]
    written = evaluate(initialised, "collection.test.num_episodes_to_save=2")
    assert written == sorted(["reconstructions.png", *videos])
    assert all((Workspace(initialised).media(0) / name).stat().st_size > 0 for name in written)
    # More than the test episodes: one per episode. None: none.
    assert evaluate(initialised, "collection.test.num_episodes_to_save=10") == sorted(
        ["reconstructions.png", *(video_name(i) for i in range(3))]
    )
    assert evaluate(initialised, "collection.test.num_episodes_to_save=0") == ["reconstructions.png"]


def test_reconstructions_only_when_asked(initialised: Path) -> None:
    assert evaluate(
        initialised, "evaluation.save_reconstructions=false", "collection.test.num_episodes_to_save=1"
    ) == ["test_episode.mp4"]
    assert evaluate(
        initialised, "evaluation.save_reconstructions=true", "collection.test.num_episodes_to_save=0"
    ) == ["reconstructions.png"]
