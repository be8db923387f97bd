"""``iris dream``: the world model replays real actions from real frames."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from iris_core.data.structures import SegmentId
from pipelines.storage import ZarrEpisodeDataset
from pipelines.viewer.cli import dream as dream_command
from pipelines.viewer.dream import Dream, dream, pick_segments, render, seeded_dream
from pipelines.viewer.models import LoadedAgent, ModelNotFoundError, load_agent
from pipelines.viewer.render import count_video_frames
from pipelines.viewer.runs import stage_runs
from pipelines.viewer.world_model_env import WorldModelEnv

HORIZON = 4


@pytest.fixture(scope="module")
def loaded(workspace: Path) -> LoadedAgent:
    return load_agent(workspace, iteration=2, device="cpu")


@pytest.fixture(scope="module")
def dataset(workspace: Path) -> ZarrEpisodeDataset:
    return ZarrEpisodeDataset.from_manifest(str(workspace / "data" / "manifests" / "2.json"))


@pytest.fixture(scope="module")
def result(loaded: LoadedAgent, dataset: ZarrEpisodeDataset) -> Dream:
    return dream(loaded.agent, dataset, num_segments=2, horizon=HORIZON, seed=3)


def test_shapes_and_real_continuation(
    result: Dream, loaded: LoadedAgent, dataset: ZarrEpisodeDataset
) -> None:
    context = loaded.config.actor_critic.burn_in_length + 1
    k = loaded.config.tokenizer.num_tokens
    assert result.context == context and result.horizon == HORIZON and len(result.segments) == 2
    for d in result.segments:
        assert d.obs.shape == (context + HORIZON, 3, 64, 64) and d.obs.dtype == np.uint8
        assert d.obs_dream.shape == (HORIZON, 3, 64, 64) and d.obs_dream.dtype == np.uint8
        assert d.act.shape == (context - 1 + HORIZON,)
        assert d.rew.shape == d.rew_dream.shape == d.end.shape == d.end_dream.shape == (HORIZON,)
        assert d.latent_tokens.shape == (HORIZON, k)
        assert ((d.end_prob >= 0) & (d.end_prob <= 1)).all()
        # The real side is the stored episode, frame for frame.
        episode = dataset.load_episode(d.segment.episode_id)
        np.testing.assert_array_equal(d.obs, episode.obs[d.segment.start : d.segment.stop])
        np.testing.assert_array_equal(d.act, episode.act[d.segment.start : d.segment.stop - 1])
        np.testing.assert_array_equal(d.rew, episode.rew[d.segment.start + context - 1 : d.segment.stop - 1])


def test_first_dreamed_frame_is_decoded_from_the_world_models_tokens(
    result: Dream, loaded: LoadedAgent
) -> None:
    # Decoded as one batch, like the dream (so the convolutions sum in the same order).
    c = result.context
    last_real = torch.from_numpy(np.stack([d.obs[c - 1] for d in result.segments])).float().div(255)
    actions = torch.tensor([int(d.act[c - 1]) for d in result.segments])  # the real actions, replayed
    tokens = torch.from_numpy(np.stack([d.latent_tokens[0] for d in result.segments]))
    decoded = loaded.agent.tokenizer.decode_tokens(last_real, actions, tokens, should_clamp=True)
    expected = (decoded * 255).round().to(torch.uint8).numpy()
    np.testing.assert_array_equal(np.stack([d.obs_dream[0] for d in result.segments]), expected)


def test_forcing_the_world_models_token_forces_the_dreamed_frame(
    loaded: LoadedAgent, dataset: ZarrEpisodeDataset
) -> None:
    """Make the world model certain of token 7: every Δ-token is 7 and the frame is its decoding."""
    agent = loaded.agent
    head = agent.world_model.head_latents[-1]
    assert isinstance(head, torch.nn.Linear)
    saved = {name: p.detach().clone() for name, p in head.named_parameters()}
    try:
        with torch.no_grad():
            head.weight.zero_()
            head.bias.fill_(-1e4)
            head.bias[7] = 1e4
        forced = dream(agent, dataset, num_segments=1, horizon=2, seed=0)
    finally:
        with torch.no_grad():
            for name, p in head.named_parameters():
                p.copy_(saved[name])
    d = forced.segments[0]
    assert (d.latent_tokens == 7).all()
    last_real = torch.from_numpy(d.obs[forced.context - 1][None]).float().div(255)
    sevens = torch.full((1, agent.tokenizer.config.num_tokens), 7)
    decoded = agent.tokenizer.decode_tokens(last_real, torch.tensor([d.act[forced.context - 1]]), sevens)
    np.testing.assert_array_equal(d.obs_dream[0], (decoded[0] * 255).round().to(torch.uint8).numpy())


def test_world_model_env_rebuilds_its_context_when_the_cache_is_full(
    loaded: LoadedAgent, dataset: ZarrEpisodeDataset
) -> None:
    agent = loaded.agent
    max_blocks = agent.world_model.config.transformer.max_blocks
    assert max_blocks is not None
    segment = dataset.load_segments([SegmentId(0, 0, max_blocks)])[0]
    obs = torch.from_numpy(segment.obs[None]).float().div(255)
    act = torch.from_numpy(segment.act[None]).long()
    env = WorldModelEnv(agent.tokenizer, agent.world_model, context_frames=max_blocks)
    assert env.context_frames == max_blocks - 1  # at least one step always fits
    # A full context leaves room for two steps before each rebuild.
    env.reset(obs[:, : max_blocks - 1], act[:, : max_blocks - 2])
    for _ in range(6):
        step = env.step(torch.tensor([1]))
        assert step.obs.shape == (1, 3, 64, 64) and torch.isfinite(step.rew).all()
    assert env.num_rebuilds >= 2
    assert len(env.frames) <= env.context_frames and len(env.actions) == len(env.frames) - 1


def test_pick_segments_stays_inside_long_enough_episodes() -> None:
    rng = np.random.default_rng(0)
    lengths = np.array([5, 30, 12, 3])
    for sid in pick_segments(lengths, 10, 12, rng):
        assert sid.episode_id in (1, 2) and sid.start >= 0 and sid.stop <= lengths[sid.episode_id]
    with pytest.raises(ValueError, match="no stored episode"):
        pick_segments(lengths, 1, 31, rng)


def test_render_writes_a_video_of_every_step_and_a_strip(result: Dream, tmp_path: Path) -> None:
    video, png = render(result, tmp_path, stem="d")
    assert count_video_frames(video) == result.context + HORIZON
    width, height = Image.open(png).size
    # A column per step plus the context frame, two rows of 128-pixel frames per segment.
    assert width >= (HORIZON + 1) * 128 and height >= len(result.segments) * 2 * 128


def test_cli_from_an_iteration_and_from_the_registry(workspace: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    import typer

    app = typer.Typer()
    app.command()(dream_command)
    common = ["--workspace", str(workspace), "-n", "1", "--horizon", "2", "--device", "cpu"]
    run = runner.invoke(app, [*common, "-i", "1", "-o", str(tmp_path / "a")])
    assert run.exit_code == 0, run.output
    assert (tmp_path / "a" / "dream-it1.mp4").is_file() and (tmp_path / "a" / "dream-it1.png").is_file()
    run = runner.invoke(
        app, [*common, "-m", "models:/delta-iris-crafter@champion", "-o", str(tmp_path / "b")]
    )
    assert run.exit_code == 0, run.output
    assert count_video_frames(tmp_path / "b" / "dream-delta-iris-crafter-champion.mp4") == 6 + 2
    run = runner.invoke(app, [*common, "-i", "9", "-o", str(tmp_path / "c")])
    assert run.exit_code == 2 and "no tokenizer checkpoint" in run.output


def test_seeded_dream_is_reproducible_and_leaves_the_generators_as_they_were(
    loaded: LoadedAgent, dataset: ZarrEpisodeDataset, tmp_path: Path
) -> None:
    torch.manual_seed(123)
    before = torch.get_rng_state()
    first = seeded_dream(loaded.agent, dataset, tmp_path / "a", seed=5, num_segments=1, horizon=2)
    assert torch.equal(torch.get_rng_state(), before)  # what runs next draws the same numbers
    second = seeded_dream(loaded.agent, dataset, tmp_path / "b", seed=5, num_segments=1, horizon=2)
    assert first is not None and second is not None
    assert first[1].read_bytes() == second[1].read_bytes()  # the same strip, pixel for pixel
    assert count_video_frames(first[0]) == loaded.config.actor_critic.burn_in_length + 1 + 2

    class ShortEpisodes:
        def episode_lengths(self) -> np.ndarray:
            return np.array([3, 6])

    # No episode longer than the context (6 frames): nothing to dream, nothing written.
    short = seeded_dream(loaded.agent, ShortEpisodes(), tmp_path / "c", seed=0)  # type: ignore[arg-type]
    assert short is None and not (tmp_path / "c").exists()


def test_each_evaluation_logs_a_dream_strip_and_video_to_its_mlflow_run(workspace: Path) -> None:
    """evaluate@i dreams on its test episodes: media/<i>/dream.{png,mp4}, also in its MLflow run."""
    from mlflow.tracking import MlflowClient

    from pipelines.stages.evaluate import DREAM_HORIZON, DREAM_SEGMENTS
    from pipelines.tracking import tracking_uri

    client = MlflowClient(tracking_uri(workspace))
    evaluations = stage_runs(workspace).query("stage == 'evaluate' and status == 'FINISHED'")
    assert sorted(evaluations["iteration"]) == [1, 2, 3]
    context = load_agent(workspace, 1, device="cpu").config.actor_critic.burn_in_length + 1
    for run in evaluations.itertuples():
        media = workspace / "media" / str(run.iteration)
        logged = {a.path for a in client.list_artifacts(run.run_id, "media")}
        assert {"media/dream.png", "media/dream.mp4"} <= logged, logged
        longest = max(json.loads((workspace / "evaluation" / f"{run.iteration}.json").read_text())["lengths"])
        horizon = min(DREAM_HORIZON, longest - context)
        assert count_video_frames(media / "dream.mp4") == context + horizon
        width, height = Image.open(media / "dream.png").size
        # Context frame + horizon columns of 128 pixels, two rows per segment.
        assert width >= (horizon + 1) * 128 and height >= DREAM_SEGMENTS * 2 * 128


def test_load_agent_rejects_an_unknown_model(workspace: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="cannot load"):
        load_agent(workspace, model="models:/delta-iris-crafter@no-such-alias")
