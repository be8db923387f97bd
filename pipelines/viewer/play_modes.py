"""The modes of ``iris play``, without any display: each gives frames to show, one step at a time.

- :class:`RealEnvMode`: the agent plays the real test environment (default);
- :class:`WorldModelMode`: a human (``-w``) or the agent (``-a``) plays inside the world model,
  started from a real reset frame;
- :class:`ReplayMode`: stored episodes (``-e``), moved through with keys.

A mode's ``step(action)`` takes the human's action (None: the agent acts, or noop in human mode);
:class:`PlayState` turns control keys into commands. The window (pygame) and the headless
recorder both drive these classes, so what they show is the same.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from iris_core.models.actor_critic import sample_actions
from iris_core.models.agent import Agent
from pipelines.storage import ZarrEpisodeDataset
from pipelines.viewer import keymaps
from pipelines.viewer.world_model_env import WorldModelEnv


@dataclass
class Frame:
    obs: np.ndarray  # (C, H, W) uint8
    t: int  # steps since the reset (replay: position in the episode)
    action: int | None = None  # the action that led here
    reward: float = 0.0
    end: bool = False
    episode_return: float = 0.0
    value: float | None = None  # the critic's value of this frame, when an agent acts
    note: str = ""


def channel_first(obs: np.ndarray) -> np.ndarray:
    """An environment's ``(H, W, C)`` frame as stored and fed to the models, ``(C, H, W)``."""
    return np.ascontiguousarray(np.moveaxis(np.asarray(obs), -1, 0))


def _uint8(obs: torch.Tensor) -> np.ndarray:
    return (obs.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


class AgentPolicy:
    """The actor-critic acting on single frames, its LSTM state carried from step to step."""

    def __init__(self, agent: Agent) -> None:
        self.actor_critic = agent.actor_critic.eval()
        self.temperature = agent.config.actor_critic.temperature

    def reset(self) -> None:
        self.actor_critic.reset(1)

    @torch.no_grad()
    def __call__(self, obs: torch.Tensor) -> tuple[int, float]:
        """``(1, C, H, W)`` float frame → (sampled action, value of the frame)."""
        output = self.actor_critic.model(obs)
        action = sample_actions(output.logits_act, self.temperature)
        return int(action[0]), float(self.actor_critic.values_from_output(output.value_out)[0])


class RealEnvMode:
    def __init__(self, env: Any, agent: Agent) -> None:
        self.env, self.policy, self.device = env, AgentPolicy(agent), agent.device
        self.frame: Frame | None = None

    def reset(self) -> Frame:
        obs, _ = self.env.reset()
        self.policy.reset()
        self.frame = Frame(channel_first(obs), 0)
        return self.frame

    def step(self, action: int | None = None) -> Frame:
        assert self.frame is not None, "reset first"
        if self.frame.end:
            return self.reset()
        x = torch.from_numpy(self.frame.obs[None]).to(self.device).float().div(255)
        chosen, value = self.policy(x)
        action = chosen if action is None else action
        obs, reward, terminated, truncated, _ = self.env.step(action)
        f = self.frame
        self.frame = Frame(
            channel_first(obs), f.t + 1, action, float(reward), bool(terminated or truncated),
            f.episode_return + float(reward), value,
        )  # fmt: skip
        return self.frame


class WorldModelMode:
    """Play in the dream. ``human``: the given action (noop when none); else the agent acts."""

    def __init__(self, env: Any, agent: Agent, human: bool, noop: int = 0) -> None:
        self.real_env, self.human, self.noop = env, human, noop
        self.policy = AgentPolicy(agent)
        context = agent.config.actor_critic.burn_in_length + 1
        self.dream = WorldModelEnv(agent.tokenizer.eval(), agent.world_model.eval(), context_frames=context)
        self.device = agent.device
        self.frame: Frame | None = None

    def reset(self) -> Frame:
        """Start from a real reset frame (the paper code's play does the same)."""
        obs, _ = self.real_env.reset()
        first = channel_first(obs)
        x = torch.from_numpy(first[None, None]).to(self.device).float().div(255)
        self.dream.reset(x, torch.zeros(1, 0, dtype=torch.long, device=self.device))
        self.policy.reset()
        self.frame = Frame(first, 0, note="dream")
        return self.frame

    def step(self, action: int | None = None) -> Frame:
        assert self.frame is not None, "reset first"
        if self.frame.end:
            return self.reset()
        value = None
        if not self.human or action is None:
            chosen, value = self.policy(self.dream.obs)
            action = chosen if not self.human else self.noop
        out = self.dream.step(torch.tensor([action], device=self.device))
        f = self.frame
        reward = float(out.rew[0])
        self.frame = Frame(
            _uint8(out.obs[0]), f.t + 1, action, reward, bool(out.end[0]), f.episode_return + reward, value,
            note=f"dream (context rebuilt {self.dream.num_rebuilds}x)",
        )  # fmt: skip
        return self.frame


class ReplayMode:
    """Stored episodes; ``move`` and ``switch`` change the position, ``step`` plays forward."""

    def __init__(self, dataset: ZarrEpisodeDataset, episode: int = 0) -> None:
        assert dataset.num_episodes > 0, "no stored episode"
        self.dataset = dataset
        self.episode_id = episode % dataset.num_episodes
        self.episode = dataset.load_episode(self.episode_id)
        self.t = 0

    def _frame(self) -> Frame:
        e, t = self.episode, self.t
        previous = t - 1  # the stored action and reward that led to frame t
        return Frame(
            e.obs[t], t,
            int(e.act[previous]) if t else None,
            float(e.rew[previous]) if t else 0.0,
            bool(e.end[t]),
            float(e.rew[:t].sum()),
            note=f"episode {self.episode_id + 1}/{self.dataset.num_episodes}, frame {t + 1}/{len(e)}",
        )  # fmt: skip

    def reset(self) -> Frame:
        self.t = 0
        return self._frame()

    def move(self, delta: int) -> Frame:
        self.t = int(np.clip(self.t + delta, 0, len(self.episode) - 1))
        return self._frame()

    def switch(self, delta: int) -> Frame:
        self.episode_id = (self.episode_id + delta) % self.dataset.num_episodes
        self.episode = self.dataset.load_episode(self.episode_id)
        return self.reset()

    def step(self, action: int | None = None) -> Frame:
        return self.move(1)


@dataclass
class PlayState:
    """What the control keys toggle; :meth:`command` says what a key press asks for."""

    paused: bool = False
    show_header: bool = True
    recording: bool = False
    pending_step: bool = False
    log: list[str] = field(default_factory=list)

    def command(self, key: str) -> str | None:
        """``'reset'``, ``'quit'``, ``'record-start'``, ``'record-stop'`` or None (handled here)."""
        if key == keymaps.PAUSE:
            self.paused = not self.paused
        elif key == keymaps.STEP and self.paused:
            self.pending_step = True
        elif key == keymaps.HEADER:
            self.show_header = not self.show_header
        elif key == keymaps.RECORD:
            self.recording = not self.recording
            return "record-start" if self.recording else "record-stop"
        elif key == keymaps.RESET:
            return "reset"
        elif key in (keymaps.QUIT, "q"):
            return "quit"
        return None

    def should_advance(self) -> bool:
        """Whether the next tick steps the mode: when running, or once after a step key."""
        if not self.paused:
            return True
        advance, self.pending_step = self.pending_step, False
        return advance
