"""One tiny campaign for every viewer test: 2 iterations of Crafter with very small models,
each evaluated and promoted, tracked in the workspace's MLflow store (~1-3 minutes).

``IRIS_VIEWER_TEST_WORKSPACE`` names an existing workspace built with the same overrides, to skip
the campaign while working on the viewers (the tests only read it)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

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
ITERATIONS = 2


@pytest.fixture(scope="session")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    given = os.environ.get("IRIS_VIEWER_TEST_WORKSPACE")
    if given:
        return Path(given)
    from pipelines.config import write_params
    from pipelines.stages.runner import run_campaign

    root = tmp_path_factory.mktemp("campaign")
    write_params(root / "params.yaml", overrides=TINY)
    run_campaign(root)
    return root
