"""The ``evaluate@i`` stage: test episodes with the iteration's agent, the Crafter score, held-out
losses, reconstructions (``evaluation.save_reconstructions``), videos of the first
``collection.test.num_episodes_to_save`` test episodes (docs/method.md §4) and a dream of the world
model beside the test episodes (``media/<i>/dream.png`` and ``dream.mp4``, see
``pipelines/viewer/dream.py``)."""

from __future__ import annotations

import shutil
import time

from iris_core.training.evaluate import (
    MemorySink,
    held_out_losses,
    play_test_episodes,
    reconstructions,
    summarise_test_episodes,
)
from pipelines.progress import episode_progress
from pipelines.stages.common import StageContext, stage_seed, write_json
from pipelines.stages.media import write_reconstruction_grid, write_video
from pipelines.stages.result import StageResult
from pipelines.viewer.dream import seeded_dream

NUM_RECONSTRUCTIONS = 16
# The dream of each evaluation: a few test-episode segments, a short horizon (seconds on a CPU).
DREAM_SEGMENTS = 2
DREAM_HORIZON = 8


def evaluation_env_seed(seed: int, iteration: int) -> int:
    """Test worlds of one evaluation: distinct from the training envs' seeds and per iteration."""
    return 1_000_000 + 10_000 * seed + 100 * iteration


def video_name(index: int) -> str:
    """The video of the ``index``-th test episode (0-based): ``test_episode.mp4``, then
    ``test_episode_1.mp4``, ... (``collection.test.num_episodes_to_save`` of them)."""
    return "test_episode.mp4" if index == 0 else f"test_episode_{index}.mp4"


def run_evaluate(ctx: StageContext, iteration: int) -> StageResult:
    ws, config = ctx.workspace, ctx.config
    started = time.perf_counter()
    agent = ctx.load_agent(iteration)
    ctx.seed("evaluate", iteration)
    env_seed = evaluation_env_seed(config.common.seed, iteration)
    sink = MemorySink()
    with episode_progress(f"evaluate@{iteration}", config.collection.test.num_episodes) as on_step:
        episodes = play_test_episodes(agent, config, env_seed, sink, on_step=on_step)
    metrics = summarise_test_episodes(episodes)
    test_set = sink.episodes()
    metrics.update(held_out_losses(agent, test_set, config))

    media = ws.media(iteration)
    if media.exists():
        shutil.rmtree(media)
    media.mkdir(parents=True)
    artifacts = []
    if config.evaluation.save_reconstructions:
        grid = reconstructions(agent, test_set, NUM_RECONSTRUCTIONS)
        write_reconstruction_grid(grid, media / "reconstructions.png")
        artifacts.append((media / "reconstructions.png", "media"))
    for index, episode in enumerate(test_set.episodes[: config.collection.test.num_episodes_to_save]):
        path = media / video_name(index)
        write_video(episode.obs, path)
        artifacts.append((path, "media"))
    # The world model replays the test episodes' actions from their real frames; its own seed, and
    # the torch generators are left as they were (the stage's results do not depend on the dream).
    dream_seed = stage_seed(config.common.seed, "evaluate", iteration)
    dream_files = seeded_dream(
        agent, test_set, media, seed=dream_seed, num_segments=DREAM_SEGMENTS, horizon=DREAM_HORIZON
    )
    artifacts += [(path, "media") for path in dream_files or ()]
    metrics["evaluate/seconds"] = time.perf_counter() - started

    evidence = {
        "iteration": iteration,
        "env_seed": env_seed,
        "torch_seed_stage": "evaluate",
        "returns": [m.episode_return for m in episodes],
        "lengths": [m.length for m in episodes],
        "achievements": [m.achievements for m in episodes],
    }
    write_json(ws.evaluation(iteration), evidence)
    write_json(ws.metrics("evaluate", iteration), metrics)
    return StageResult(metrics=metrics, artifacts=artifacts, details={"returns": evidence["returns"]})
