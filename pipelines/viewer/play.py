"""``iris play``: watch or play, in the real environment, in the world model, or in stored episodes.

The window needs pygame (the ``gui`` extra); ``--record N`` renders the same views to an MP4 with
no window and no pygame. Keys: see :mod:`pipelines.viewer.keymaps` and docs/viewing.md.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipelines.viewer import keymaps
from pipelines.viewer.play_modes import Frame, PlayState, RealEnvMode, ReplayMode, WorldModelMode
from pipelines.viewer.render import caption, fit_lines, to_image, upscale, vstack, write_mp4

Mode = RealEnvMode | WorldModelMode | ReplayMode
# The key help under the picture, wrapped to the window's width.
KEY_HINTS = ("[.] pause", "[n] step", "[enter] reset", "[h] header", "[,] record", "[esc] quit")
REPLAY_HINTS = ("[<-/->] frame", "[pgup/pgdn] 10", "[up/down] episode")
PYGAME_MISSING = (
    "the play window needs pygame: pip install -e '.[gui]' (or use --record N for a video without a window)"
)


def header_lines(frame: Frame, action_names: Sequence[str], paused: bool = False) -> list[str]:
    """The paper code's header: action, reward, done, timestep, return, value."""
    action = "-" if frame.action is None else action_names[frame.action]
    value = "-" if frame.value is None else f"{frame.value:.2f}"
    return [
        f"t {frame.t}  action {action}{'  [paused]' if paused else ''}",
        f"reward {frame.reward + 0.0:+.2f}  done {int(frame.end)}  return {frame.episode_return:.2f}",
        f"value {value}  {frame.note}",
    ]


def compose(
    frame: Frame, action_names: Sequence[str], scale: int, show_header: bool, paused: bool = False
) -> np.ndarray:
    image = upscale(to_image(frame.obs), scale)
    if not show_header:
        return image
    return vstack([caption(image.shape[1], header_lines(frame, action_names, paused)), image], gap=0)


def record(
    mode: Mode, action_names: Sequence[str], num_frames: int, path: Path, *,
    scale: int = 4, show_header: bool = True, fps: float = 5.0,
) -> Path:  # fmt: skip
    """Headless: reset, then ``num_frames − 1`` steps (the agent acts; a human mode gets no keys,
    so noop), each rendered as the window would show it."""
    frames = [compose(mode.reset(), action_names, scale, show_header)]
    for _ in range(num_frames - 1):
        frames.append(compose(mode.step(None), action_names, scale, show_header))
    return write_mp4(frames, path, fps=fps)


def run_window(
    mode: Mode, action_names: Sequence[str], env_kind: str, *, human: bool, scale: int, fps: float,
    show_header: bool, recordings: Path, save_episodes: bool,
) -> None:  # fmt: skip
    try:
        import pygame
    except ImportError:
        raise RuntimeError(PYGAME_MISSING) from None

    pygame.display.init()  # the window only: no audio device (the mixer would open one)
    state = PlayState(show_header=show_header)
    frame = mode.reset()
    image = compose(frame, action_names, scale, state.show_header)
    hints = [*KEY_HINTS, *(REPLAY_HINTS if isinstance(mode, ReplayMode) else ())]
    hint = caption(image.shape[1], fit_lines(hints, image.shape[1], size=11), size=11)
    hint_surface = pygame.surfarray.make_surface(hint.swapaxes(0, 1))
    screen = pygame.display.set_mode((image.shape[1], image.shape[0] + 8 + hint.shape[0]))
    pygame.display.set_caption("Δ-IRIS play")
    clock = pygame.time.Clock()
    segment: list[np.ndarray] = []
    episode: list[np.ndarray] = []

    def flush(images: list[np.ndarray], kind: str) -> None:
        if images:
            path = recordings / f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}.mp4"
            write_mp4(images, path, fps=fps)
            np.save(path.with_suffix(".npy"), np.stack(images))
            print(f"saved {path}")
            images.clear()

    held: set[str] = set()  # keys down now (a key held keeps acting)
    running = True
    while running:
        pressed: list[str] = []
        for event in pygame.event.get():
            if event.type == pygame.QUIT:
                running = False
            elif event.type == pygame.KEYUP:
                held.discard(pygame.key.name(event.key))
            elif event.type == pygame.KEYDOWN:
                key = pygame.key.name(event.key)
                held.add(key)
                pressed.append(key)
                command = state.command(key)
                if command == "quit":
                    running = False
                elif command == "reset":
                    if save_episodes:
                        flush(episode, "episode")
                    frame = mode.reset()
                elif command == "record-stop":
                    flush(segment, "segment")
                elif isinstance(mode, ReplayMode) and key in keymaps.REPLAY_MOVES:
                    frame = mode.move(keymaps.REPLAY_MOVES[key])
                elif isinstance(mode, ReplayMode) and key in keymaps.REPLAY_EPISODES:
                    frame = mode.switch(keymaps.REPLAY_EPISODES[key])
        pressed += [k for k in held if k not in pressed]
        if not isinstance(mode, ReplayMode) and state.should_advance():
            action = keymaps.key_to_action(env_kind, pressed, action_names) if human else None
            ended = frame.end
            frame = mode.step(action)
            if ended and save_episodes:
                flush(episode, "episode")
        image = compose(frame, action_names, scale, state.show_header, state.paused)
        if state.recording:
            segment.append(image)
        if save_episodes:
            episode.append(image)
        screen.fill((24, 24, 24))
        screen.blit(pygame.surfarray.make_surface(image.swapaxes(0, 1)), (0, 0))
        screen.blit(hint_surface, (0, image.shape[0] + 8))
        pygame.display.flip()
        clock.tick(fps)
    flush(segment, "segment")
    if save_episodes:
        flush(episode, "episode")
    pygame.quit()
