"""Dreams beside reality: the world model replays real actions from real starting frames.

For each of a few real segments (``context`` frames, then ``horizon`` more), the world model is
burnt in on the first ``context`` frames (the actor-critic's ``burn_in_length`` + 1: the context
imagination starts from in training), then stepped with the SAME actions the agent took in the
real episode. Each dreamed frame is decoded by the tokenizer from the Δ-tokens the world model
predicted; the real frames, rewards and ends are shown beside it. A good world model keeps the
two columns alike for several steps and predicts the rewards where they happen.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from iris_core.data.structures import EpisodeSource, SegmentId
from iris_core.models.agent import Agent
from pipelines.viewer.render import (
    border,
    caption,
    hstack,
    to_image,
    upscale,
    vstack,
    write_mp4,
    write_png,
)
from pipelines.viewer.world_model_env import WorldModelEnv

END_COLOR = (220, 50, 50)


@dataclass
class DreamSegment:
    segment: SegmentId  # frames [start, start + context + horizon) of a stored episode
    obs: np.ndarray  # (context + horizon, C, H, W) uint8, the real frames
    act: np.ndarray  # (context − 1 + horizon,) int64, the real actions (replayed in the dream)
    rew: np.ndarray  # (horizon,) float32, real reward after each replayed action
    end: np.ndarray  # (horizon,) uint8, real end after each replayed action
    obs_dream: np.ndarray  # (horizon, C, H, W) uint8, the decoded dreamed frames
    rew_dream: np.ndarray  # (horizon,) float32, predicted rewards
    end_dream: np.ndarray  # (horizon,) int64, sampled ends
    end_prob: np.ndarray  # (horizon,) float32, predicted probability of an end
    latent_tokens: np.ndarray  # (horizon, K) int64, the Δ-tokens each dreamed frame came from


@dataclass
class Dream:
    segments: list[DreamSegment]
    context: int  # real frames the world model was burnt in on
    horizon: int  # dreamed steps
    action_names: list[str]


def action_names(env_kind: str, num_actions: int | None) -> list[str]:
    """Crafter's action names (from the crafter package); ``a<k>`` otherwise (18: Atari's full set)."""
    if env_kind == "crafter":
        import crafter

        names = list(crafter.constants.actions)
        if num_actions is None or len(names) == num_actions:
            return names
    return [f"a{k}" for k in range(num_actions or 18)]


def pick_segments(
    lengths: np.ndarray, num_segments: int, length: int, rng: np.random.Generator
) -> list[SegmentId]:
    """``num_segments`` windows of ``length`` real frames, from distinct episodes while there are
    enough long ones, at random positions."""
    long_enough = np.flatnonzero(lengths >= length)
    if len(long_enough) == 0:
        raise ValueError(f"no stored episode has {length} frames (longest: {int(lengths.max(initial=0))})")
    episodes = rng.choice(long_enough, size=num_segments, replace=num_segments > len(long_enough))
    starts = [int(rng.integers(0, lengths[e] - length + 1)) for e in episodes]
    return [SegmentId(int(e), s, s + length) for e, s in zip(episodes, starts, strict=True)]


@torch.no_grad()
def dream(
    agent: Agent,
    dataset: EpisodeSource,
    *,
    num_segments: int = 3,
    horizon: int = 16,
    seed: int = 0,
    segments: Sequence[SegmentId] | None = None,
) -> Dream:
    """Dream ``horizon`` steps after ``burn_in_length + 1`` real frames, under the real actions."""
    config = agent.config
    context = config.actor_critic.burn_in_length + 1
    if segments is None:
        rng = np.random.default_rng(seed)
        segments = pick_segments(dataset.episode_lengths(), num_segments, context + horizon, rng)
    loaded = dataset.load_segments(list(segments))
    assert all(s.mask_padding.all() for s in loaded), "dream segments must lie inside their episodes"
    device = agent.device
    obs = torch.from_numpy(np.stack([s.obs for s in loaded])).to(device).float().div(255)
    act = torch.from_numpy(np.stack([s.act for s in loaded])).to(device).long()

    torch.manual_seed(seed)  # the world model samples its tokens, rewards and ends
    env = WorldModelEnv(agent.tokenizer.eval(), agent.world_model.eval(), context_frames=context)
    env.reset(obs[:, :context], act[:, : context - 1])
    steps = [env.step(act[:, context - 1 + k]) for k in range(horizon)]

    def stacked(name: str) -> np.ndarray:
        return torch.stack([getattr(s, name) for s in steps], dim=1).cpu().numpy()

    frames = (stacked("obs") * 255).round().astype(np.uint8)
    rew, end, end_prob, tokens = stacked("rew"), stacked("end"), stacked("end_prob"), stacked("latent_tokens")
    out = [
        DreamSegment(
            segment=s.id,
            obs=s.obs,
            act=s.act[:-1],
            rew=s.rew[context - 1 : -1],
            end=s.end[context - 1 : -1],
            obs_dream=frames[b],
            rew_dream=rew[b].astype(np.float32),
            end_dream=end[b].astype(np.int64),
            end_prob=end_prob[b].astype(np.float32),
            latent_tokens=tokens[b].astype(np.int64),
        )
        for b, s in enumerate(loaded)
    ]
    names = action_names(config.env.train.kind, config.num_actions or 0)
    return Dream(out, context, horizon, names)


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------


def _cell(frame: np.ndarray, scale: int, ended: bool) -> np.ndarray:
    image = upscale(to_image(frame), scale)
    return border(image, END_COLOR) if ended else image


def video_frames(result: Dream, scale: int = 3) -> list[np.ndarray]:
    """One picture per time step: the burn-in frames (the same real frame on both sides), then
    each dreamed step; a row per segment, real on the left, dream on the right."""
    pictures = []
    num_frames = result.context + result.horizon
    for t in range(num_frames):
        rows = []
        for d in result.segments:
            k = t - result.context  # dreamed step shown (−1.. in the burn-in)
            real = _cell(d.obs[t], scale, k >= 0 and bool(d.end[k]))
            if k < 0:
                dreamed = _cell(d.obs[t], scale, False)
                lines = [f"burn-in {t + 1}/{result.context}", f"episode {d.segment.episode_id}"]
            else:
                dreamed = _cell(d.obs_dream[k], scale, bool(d.end_dream[k]))
                lines = [
                    f"step +{k + 1}  after {result.action_names[int(d.act[result.context - 1 + k])]}",
                    f"reward  real {d.rew[k] + 0.0:+.2f}  dream {d.rew_dream[k] + 0.0:+.2f}",
                    f"end     real {int(d.end[k])}  dream {int(d.end_dream[k])} (p={d.end_prob[k]:.2f})",
                ]
            header = hstack([caption(real.shape[1], ["real"]), caption(dreamed.shape[1], ["dream"])])
            pair = hstack([real, dreamed])
            rows.append(vstack([header, pair, caption(pair.shape[1], lines)], gap=0))
        pictures.append(vstack(rows, gap=8))
    return pictures


def strip(result: Dream, scale: int = 2) -> np.ndarray:
    """A PNG-able overview: per segment a row of real frames over a row of dreamed ones, from the
    last burn-in frame on, with predicted (p) and real (r) rewards under each step. Red frames:
    an end (real or sampled)."""
    blocks = []
    size = result.segments[0].obs.shape[-1] * scale
    for d in result.segments:
        last = result.context - 1
        real = [_cell(d.obs[last], scale, False)]
        real += [_cell(d.obs[last + 1 + k], scale, bool(d.end[k])) for k in range(result.horizon)]
        dreamed = [_cell(d.obs[last], scale, False)]
        dreamed += [_cell(d.obs_dream[k], scale, bool(d.end_dream[k])) for k in range(result.horizon)]
        labels = [caption(size, ["context"], size=11)]
        labels += [caption(size, [f"+{k + 1}"], size=11) for k in range(result.horizon)]
        rewards = [caption(size, ["r / p"], size=11)]
        rewards += [
            caption(size, [f"{d.rew[k] + 0.0:+.1f}/{d.rew_dream[k] + 0.0:+.1f}"], size=11)
            for k in range(result.horizon)
        ]
        title = caption(
            (size + 2) * (result.horizon + 1),
            [f"episode {d.segment.episode_id}, frames {d.segment.start}-{d.segment.stop - 1}: real, dream"],
        )
        blocks.append(
            vstack([title, hstack(labels, 2), hstack(real, 2), hstack(dreamed, 2), hstack(rewards, 2)], gap=2)
        )
    return vstack(blocks, gap=12)


def render(result: Dream, out_dir: Path, fps: float = 3.0, stem: str = "dream") -> tuple[Path, Path]:
    """``<out_dir>/<stem>.mp4`` (``context + horizon`` frames) and ``<out_dir>/<stem>.png``."""
    video = write_mp4(video_frames(result), out_dir / f"{stem}.mp4", fps=fps)
    png = write_png(strip(result), out_dir / f"{stem}.png")
    return video, png


def seeded_dream(
    agent: Agent,
    source: EpisodeSource,
    out_dir: Path,
    *,
    seed: int,
    num_segments: int = 3,
    horizon: int = 8,
    fps: float = 3.0,
    stem: str = "dream",
) -> tuple[Path, Path] | None:
    """A small dream for a stage that must stay reproducible (the evaluation): ``num_segments``
    segments of ``source``, at most ``horizon`` dreamed steps (fewer when the longest episode is
    shorter), rendered to ``<out_dir>/<stem>.mp4`` and ``.png``. Seeded by ``seed`` alone, and
    every torch generator it touches (CPU, and the agent's CUDA device) is restored afterwards, so
    whatever runs next draws the same numbers as without it. None when no episode is longer than
    the world model's context."""
    context = agent.config.actor_critic.burn_in_length + 1
    horizon = min(horizon, int(source.episode_lengths().max(initial=0)) - context)
    if horizon < 1:
        return None
    devices = [agent.device] if agent.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        result = dream(agent, source, num_segments=num_segments, horizon=horizon, seed=seed)
    return render(result, out_dir, fps=fps, stem=stem)
