"""``iris play``: the mode logic without a display, and the headless recording."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner

from iris_core.envs.factory import make_env
from pipelines.storage import ZarrEpisodeDataset
from pipelines.viewer import keymaps
from pipelines.viewer.cli import play
from pipelines.viewer.dream import action_names
from pipelines.viewer.models import LoadedAgent, load_agent
from pipelines.viewer.play import KEY_HINTS, PYGAME_MISSING, REPLAY_HINTS, compose, header_lines, run_window
from pipelines.viewer.play_modes import PlayState, RealEnvMode, ReplayMode, WorldModelMode
from pipelines.viewer.render import count_video_frames, fit_lines

CRAFTER = action_names("crafter", 17)
BREAKOUT = ["NOOP", "FIRE", "RIGHT", "LEFT"]
FULL_ATARI = [
    "NOOP", "FIRE", "UP", "RIGHT", "LEFT", "DOWN", "UPRIGHT", "UPLEFT", "DOWNRIGHT", "DOWNLEFT",
    "UPFIRE", "RIGHTFIRE", "LEFTFIRE", "DOWNFIRE",
    "UPRIGHTFIRE", "UPLEFTFIRE", "DOWNRIGHTFIRE", "DOWNLEFTFIRE",
]  # fmt: skip


def test_crafter_keymap_of_the_paper_code() -> None:
    def act(*keys: str) -> str:
        return CRAFTER[keymaps.key_to_action("crafter", keys, CRAFTER)]

    assert [act(k) for k in "wasd"] == ["move_up", "move_left", "move_down", "move_right"]
    assert act("space") == "do" and act("tab") == "sleep"
    assert [act(k) for k in "rtfp"] == ["place_stone", "place_table", "place_furnace", "place_plant"]
    assert act("1") == "make_wood_pickaxe" and act("6") == "make_iron_sword"
    assert act() == "noop" and act("z") == "noop" and act("q", "d") == "move_right"


def test_atari_keys_combine_into_the_games_action_names() -> None:
    def act(meanings: list[str], *keys: str) -> str:
        return meanings[keymaps.key_to_action("atari", keys, meanings)]

    assert act(FULL_ATARI, "up", "right", "space") == "UPRIGHTFIRE"
    assert act(FULL_ATARI, "down", "left") == "DOWNLEFT"
    assert act(FULL_ATARI, "left", "right") == "NOOP"  # opposite keys cancel
    assert act(BREAKOUT, "space") == "FIRE" and act(BREAKOUT, "left") == "LEFT"
    assert act(BREAKOUT, "up") == "NOOP"  # Breakout has no UP


def test_play_state_pause_step_header_record() -> None:
    state = PlayState()
    assert state.should_advance()
    assert state.command(keymaps.PAUSE) is None and state.paused
    assert not state.should_advance()
    state.command(keymaps.STEP)
    assert state.should_advance() and not state.should_advance()  # exactly one frame
    state.command(keymaps.HEADER)
    assert not state.show_header
    assert state.command(keymaps.RECORD) == "record-start" and state.recording
    assert state.command(keymaps.RECORD) == "record-stop" and not state.recording
    assert state.command(keymaps.RESET) == "reset" and state.command(keymaps.QUIT) == "quit"


@pytest.fixture(scope="module")
def loaded(workspace: Path) -> LoadedAgent:
    return load_agent(workspace, device="cpu")


def test_replay_navigates_episodes_and_frames(workspace: Path) -> None:
    dataset = ZarrEpisodeDataset.from_manifest(str(workspace / "data" / "manifests" / "2.json"))
    mode = ReplayMode(dataset)
    first = dataset.load_episode(0)
    frame = mode.reset()
    assert frame.t == 0 and frame.action is None
    np.testing.assert_array_equal(frame.obs, first.obs[0])
    frame = mode.move(10)
    assert frame.t == 10 and frame.action == first.act[9] and frame.reward == first.rew[9]
    assert frame.episode_return == pytest.approx(first.rew[:10].sum())
    assert mode.move(-100).t == 0 and mode.move(10_000).t == len(first) - 1
    frame = mode.switch(1)
    np.testing.assert_array_equal(frame.obs, dataset.load_episode(1).obs[0])
    assert mode.switch(1).note.startswith(f"episode 1/{dataset.num_episodes}")  # wraps around


def test_world_model_mode_starts_from_a_real_frame_and_plays_the_humans_action(loaded: LoadedAgent) -> None:
    env = make_env(loaded.config.env.test, seed=5)
    mode = WorldModelMode(env, loaded.agent, human=True, noop=0)
    start = mode.reset()
    reference = make_env(loaded.config.env.test, seed=5).reset()[0]
    np.testing.assert_array_equal(start.obs, np.moveaxis(reference, -1, 0))
    assert len(mode.dream.frames) == 1  # the world model's context: that frame alone
    checked = 0
    for _ in range(6):
        frame = mode.step(3)
        if frame.t == 0:  # the dream sampled an end: a new real start
            continue
        checked += 1
        assert frame.action == 3 and frame.value is None and frame.obs.shape == (3, 64, 64)
        assert torch.equal(mode.dream.actions[-1], torch.tensor([3]))
        assert len(mode.dream.frames) == min(frame.t + 1, mode.dream.context_frames)
    assert checked > 0


def test_header_and_compose(loaded: LoadedAgent) -> None:
    env = make_env(loaded.config.env.test, seed=0)
    frame = WorldModelMode(env, loaded.agent, human=False).reset()
    assert header_lines(frame, CRAFTER)[0].startswith("t 0  action -")
    with_header, without = compose(frame, CRAFTER, 4, True), compose(frame, CRAFTER, 4, False)
    assert without.shape == (256, 256, 3) and with_header.shape[0] > 256


def test_record_every_mode_headless(workspace: Path, tmp_path: Path) -> None:
    app = typer.Typer()
    app.command()(play)
    runner = CliRunner()
    for flag in ("", "-a", "-w", "-e"):
        out = tmp_path / f"play{flag}.mp4"
        args = ["--workspace", str(workspace), "--record", "3", "--device", "cpu", "-o", str(out)]
        run = runner.invoke(app, [*args, *([flag] if flag else [])])
        assert run.exit_code == 0, (flag, run.output)
        assert count_video_frames(out) == 3
    run = runner.invoke(app, ["--workspace", str(workspace), "-a", "-e", "--record", "2"])
    assert run.exit_code == 2 and "one of -w, -a, -e" in run.output


def test_window_without_pygame_says_what_to_install(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pygame", None)  # import pygame → ImportError
    dataset = ZarrEpisodeDataset.from_manifest(str(workspace / "data" / "manifests" / "2.json"))
    with pytest.raises(RuntimeError, match="needs pygame"):
        run_window(ReplayMode(dataset), CRAFTER, "crafter", human=False, scale=1, fps=5,
                   show_header=True, recordings=workspace / "unused", save_episodes=False)  # fmt: skip
    app = typer.Typer()
    app.command()(play)
    run = CliRunner().invoke(app, ["--workspace", str(workspace), "-e"])
    assert run.exit_code == 2 and PYGAME_MISSING in run.output


def test_window_loop_with_scripted_keys(
    workspace: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pygame loop on SDL's dummy display: keys are fed as events, a segment is recorded."""
    pygame = pytest.importorskip("pygame", reason="the window needs the gui extra")
    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")
    script = [[], ["right"], ["right"], [","], ["right"], ["down"], [","], ["."], ["n"], ["h"], ["escape"]]
    real_get = pygame.event.get

    def scripted_events() -> list[object]:
        real_get()
        keys = script.pop(0) if script else ["escape"]
        return [pygame.event.Event(pygame.KEYDOWN, key=pygame.key.key_code(k)) for k in keys]

    monkeypatch.setattr(pygame.event, "get", scripted_events)
    dataset = ZarrEpisodeDataset.from_manifest(str(workspace / "data" / "manifests" / "2.json"))
    mode = ReplayMode(dataset)
    run_window(mode, CRAFTER, "crafter", human=False, scale=2, fps=100, show_header=True,
               recordings=tmp_path, save_episodes=False)  # fmt: skip
    assert mode.episode_id == 1 and mode.t == 0  # moved 3 frames, then "down" switched episode
    [segment] = tmp_path.glob("segment-*.mp4")
    assert count_video_frames(segment) == 3  # the ticks between the two "," presses


def test_headless_recording_is_a_playable_video_of_exactly_the_frames_shown(
    workspace: Path, tmp_path: Path
) -> None:
    """`--record N` of the replay (stored frames: known in advance) decodes back, with ffmpeg, into
    N H.264 frames at the asked rate, each the picture the window would show at that step."""
    import imageio_ffmpeg

    app = typer.Typer()
    app.command()(play)
    out = tmp_path / "replay.mp4"
    args = [
        "--workspace",
        str(workspace),
        "-e",
        "--record",
        "7",
        "--fps",
        "5",
        "--size",
        "128",
        "-o",
        str(out),
    ]
    run = CliRunner().invoke(app, args)
    assert run.exit_code == 0, run.output

    assert imageio_ffmpeg.count_frames_and_secs(str(out)) == (7, pytest.approx(7 / 5))
    reader = imageio_ffmpeg.read_frames(str(out))
    meta = next(reader)
    assert meta["codec"] == "h264" and meta["fps"] == 5.0
    width, height = meta["size"]
    decoded = [np.frombuffer(data, np.uint8).reshape(height, width, 3) for data in reader]
    assert len(decoded) == 7

    manifest = max(int(p.stem) for p in (workspace / "data" / "manifests").glob("*.json"))
    mode = ReplayMode(
        ZarrEpisodeDataset.from_manifest(str(workspace / "data" / "manifests" / f"{manifest}.json"))
    )
    expected = [compose(mode.reset(), CRAFTER, 2, True)]
    expected += [compose(mode.step(), CRAFTER, 2, True) for _ in range(6)]
    for k, (got, want) in enumerate(zip(decoded, expected, strict=True)):
        assert (height, width) == (-(-want.shape[0] // 16) * 16, -(-want.shape[1] // 16) * 16)
        error = np.abs(got[: want.shape[0], : want.shape[1]].astype(int) - want).mean()
        assert error < 8, (k, error)  # H.264 is lossy: close, not equal


@pytest.mark.parametrize(
    "kind", ["agent in the env", "human in the world model", "agent in the world model", "replay"]
)
def test_each_mode_in_the_window_shows_header_frame_and_keys(
    kind: str, loaded: LoadedAgent, workspace: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The window (SDL's dummy display) of every mode, driven by scripted keys: at the capture, the
    window holds the header and frame of the mode's current frame, pixel for pixel, above the keys'
    help, which fits the window's width."""
    pygame = pytest.importorskip("pygame", reason="the window needs the gui extra")
    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")
    env = make_env(loaded.config.env.test, seed=3)
    mode: RealEnvMode | WorldModelMode | ReplayMode
    if kind == "replay":
        dataset = ZarrEpisodeDataset.from_manifest(str(workspace / "data" / "manifests" / "2.json"))
        mode, script = ReplayMode(dataset), [["right"], ["right"], ["down"], ["right"]]
    elif kind == "agent in the env":
        mode, script = RealEnvMode(env, loaded.agent), [[], [], ["."], []]
    else:
        human = kind.startswith("human")
        mode, script = WorldModelMode(env, loaded.agent, human=human), [["d"], ["space"], ["s"], []]
    real_get, real_flip = pygame.event.get, pygame.display.flip
    shots: list[tuple[np.ndarray, np.ndarray]] = []

    def scripted_events() -> list[object]:
        real_get()
        keys = script.pop(0) if script else ["escape"]
        codes = [pygame.key.key_code(k) for k in keys]
        return [pygame.event.Event(t, key=c) for c in codes for t in (pygame.KEYDOWN, pygame.KEYUP)]

    def flip() -> None:
        real_flip()
        current = mode._frame() if isinstance(mode, ReplayMode) else mode.frame
        assert current is not None
        paused = kind == "agent in the env" and len(shots) >= 2
        expected = compose(current, CRAFTER, 2, True, paused)
        shots.append((pygame.surfarray.array3d(pygame.display.get_surface()).swapaxes(0, 1), expected))

    monkeypatch.setattr(pygame.event, "get", scripted_events)
    monkeypatch.setattr(pygame.display, "flip", flip)
    run_window(mode, CRAFTER, "crafter", human=kind.startswith("human"), scale=2, fps=100,
               show_header=True, recordings=tmp_path, save_episodes=False)  # fmt: skip

    assert len(shots) == 5  # the four scripted ticks and the one that reads Escape
    hints = fit_lines([*KEY_HINTS, *(REPLAY_HINTS if kind == "replay" else ())], 128, size=11)
    for window, expected in shots:
        assert window.shape == (expected.shape[0] + 8 + 16 * len(hints), 128, 3)
        np.testing.assert_array_equal(window[: expected.shape[0]], expected)
        help_text = window[expected.shape[0] + 8 :]
        assert (help_text != 24).any()  # the keys' help is drawn (not just background)
    if kind == "replay":  # right, right, then the next episode, then right
        assert (mode.episode_id, mode.t) == (1, 1)
    if kind == "agent in the env":
        assert mode.frame is not None and mode.frame.t == 2  # paused after two steps
