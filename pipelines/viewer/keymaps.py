"""Keys to actions, as in the paper code's play script; key names are pygame's (``pygame.key.name``).

Crafter: WASD moves, space = do, tab = sleep, r/t/f/p place stone/table/furnace/plant, 1-6 craft.
Atari: arrows and space (FIRE), combined into the game's action names (``UPRIGHTFIRE``).
Control keys are shared by every mode and never reach the game.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

CRAFTER_KEYS = {
    "a": "move_left",
    "d": "move_right",
    "w": "move_up",
    "s": "move_down",
    "space": "do",
    "tab": "sleep",
    "r": "place_stone",
    "t": "place_table",
    "f": "place_furnace",
    "p": "place_plant",
    "1": "make_wood_pickaxe",
    "2": "make_stone_pickaxe",
    "3": "make_iron_pickaxe",
    "4": "make_wood_sword",
    "5": "make_stone_sword",
    "6": "make_iron_sword",
}
ATARI_KEYS = {"up": "UP", "down": "DOWN", "right": "RIGHT", "left": "LEFT", "space": "FIRE"}
ATARI_ORDER = ("UP", "DOWN", "RIGHT", "LEFT", "FIRE")  # how the ALE spells combinations

# Control keys (every mode): pause, one frame while paused, reset, header, segment recording, quit.
PAUSE, STEP, RESET, HEADER, RECORD, QUIT = ".", "n", "return", "h", ",", "escape"
# Replay of stored episodes: move in the episode, switch episode.
REPLAY_MOVES = {"right": 1, "left": -1, "page up": 10, "page down": -10}
REPLAY_EPISODES = {"up": -1, "down": 1}


def crafter_action(pressed: Iterable[str], action_names: Sequence[str]) -> int:
    """The action of the first mapped key pressed (Crafter acts one thing at a time); noop else."""
    for key in pressed:
        if key in CRAFTER_KEYS:
            return action_names.index(CRAFTER_KEYS[key])
    return action_names.index("noop")


def atari_action(pressed: Iterable[str], meanings: Sequence[str]) -> int:
    """Pressed arrows and space, combined as the ALE names them; NOOP when the game has no such
    action (e.g. UP in Breakout)."""
    held = {ATARI_KEYS[k] for k in pressed if k in ATARI_KEYS}
    if {"UP", "DOWN"} <= held:
        held -= {"UP", "DOWN"}
    if {"LEFT", "RIGHT"} <= held:
        held -= {"LEFT", "RIGHT"}
    name = "".join(part for part in ATARI_ORDER if part in held) or "NOOP"
    return list(meanings).index(name) if name in meanings else list(meanings).index("NOOP")


def key_to_action(env_kind: str, pressed: Iterable[str], action_names: Sequence[str]) -> int:
    if env_kind == "crafter":
        return crafter_action(pressed, action_names)
    return atari_action(pressed, action_names)
