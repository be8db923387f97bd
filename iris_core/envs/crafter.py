"""Crafter as a Gymnasium environment (docs/method.md §1).

``crafter.Env(reward=True)`` speaks the old gym API (``reset() -> obs``, 4-tuple ``step``). This
adapter gives it the Gymnasium API with the paper's semantics:

- observations: 64×64 RGB uint8 ``(H, W, C)``; 17 discrete actions; reward +1 per first unlock of
  an achievement in an episode and ±0.1 per health point gained or lost;
- ``terminated`` is death (crafter's ``info["discount"] == 0``); ``truncated`` is the length limit,
  applied by a :class:`gymnasium.wrappers.TimeLimit` of ``EnvSpec.max_episode_steps`` (crafter's
  own limit is switched off so that the two cannot disagree);
- ``info["achievements"]`` holds crafter's 22 achievement counters, copied (crafter mutates its
  own dicts in place), so the achievements unlocked in an episode can be read off its last step;
- seeding: ``reset(seed=s)`` makes the sequence of episodes that follows a function of ``s`` alone
  (crafter derives each episode's world from ``hash((seed, episode_index))``).

One crafter detail breaks that reproducibility: the world keeps the creatures of each chunk in a
``set``, whose iteration order follows memory addresses, and the despawn rule picks a creature by
index from it. :class:`_OrderedChunksWorld` keeps them in insertion order instead, which is
deterministic and, since the original order is arbitrary, leaves the game's statistics unchanged.
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import Iterator
from typing import Any, Generic, TypeVar

import crafter
import gymnasium
import numpy as np
from crafter import engine, objects
from gymnasium.wrappers import TimeLimit

from iris_core.envs import crafter_worldgen

NUM_ACTIONS = 17
ACHIEVEMENTS: tuple[str, ...] = tuple(crafter.constants.achievements)

_K = TypeVar("_K")


class _InsertionOrderedSet(Generic[_K]):
    """The subset of ``set`` that crafter uses on chunk contents, iterating in insertion order."""

    def __init__(self) -> None:
        self._items: dict[_K, None] = {}

    def add(self, item: _K) -> None:
        self._items[item] = None

    def remove(self, item: _K) -> None:
        del self._items[item]

    def discard(self, item: _K) -> None:
        self._items.pop(item, None)

    def __contains__(self, item: object) -> bool:
        return item in self._items

    def __iter__(self) -> Iterator[_K]:
        return iter(list(self._items))

    def __len__(self) -> int:
        return len(self._items)


class _OrderedChunksWorld(engine.World):  # type: ignore[misc]
    """crafter's world with chunk contents kept in insertion order (see the module docstring)."""

    def reset(self, seed: int | None = None) -> None:
        super().reset(seed)
        self._chunks: collections.defaultdict[Any, _InsertionOrderedSet[Any]] = collections.defaultdict(
            _InsertionOrderedSet
        )


class _FastLocalView(engine.LocalView):  # type: ignore[misc]
    """crafter's local view, drawn with array indexing instead of one Python call per cell.

    Pixel-identical to ``engine.LocalView`` (tested): the same cached textures, objects alpha-
    blended with crafter's own ``_draw_alpha`` in the world's object order, then crafter's own
    lighting and sleep effects (which also draw the night noise from the world's generator).
    """

    def __init__(self, world: engine.World, textures: engine.Textures, grid: list[int]) -> None:
        super().__init__(world, textures, grid)
        self._tiles: np.ndarray | None = None  # (num_materials + 1, unit, unit, 3); last = outside
        self._tiles_key: tuple[int, tuple[int, int]] | None = None

    def _material_tiles(self, unit: np.ndarray) -> np.ndarray:
        key = (len(self._world._mat_names), (int(unit[0]), int(unit[1])))
        if self._tiles is None or self._tiles_key != key:
            names = [self._world._mat_names[i] for i in range(key[0])]
            tiles = [self._textures.get(name, unit)[..., :3] for name in names]
            tiles.append(np.full((*key[1], 3), 127, dtype=np.uint8))  # cells outside the world
            self._tiles, self._tiles_key = np.stack(tiles), key
        return self._tiles

    def __call__(self, player: Any, unit: np.ndarray) -> np.ndarray:
        self._unit = np.array(unit)
        self._center = np.array(player.pos)
        unit_x, unit_y = int(self._unit[0]), int(self._unit[1])
        grid_x, grid_y = int(self._grid[0]), int(self._grid[1])
        tiles = self._material_tiles(self._unit)
        outside = len(tiles) - 1
        # Material ids and object indices of the grid cells, padded outside the world.
        x0, y0 = (self._center - self._offset).tolist()
        ids = np.full((grid_x, grid_y), outside, dtype=np.intp)
        objs = np.zeros((grid_x, grid_y), dtype=np.int64)
        lo_x, lo_y = max(x0, 0), max(y0, 0)
        hi_x, hi_y = min(x0 + grid_x, int(self._area[0])), min(y0 + grid_y, int(self._area[1]))
        if lo_x < hi_x and lo_y < hi_y:
            ids[lo_x - x0 : hi_x - x0, lo_y - y0 : hi_y - y0] = self._world._mat_map[lo_x:hi_x, lo_y:hi_y]
            objs[lo_x - x0 : hi_x - x0, lo_y - y0 : hi_y - y0] = self._world._obj_map[lo_x:hi_x, lo_y:hi_y]
        # (gx, gy, ux, uy, 3) -> (gx·ux, gy·uy, 3): cell (x, y) starts at pixel (x·ux, y·uy).
        canvas = tiles[ids].transpose(0, 2, 1, 3, 4).reshape(grid_x * unit_x, grid_y * unit_y, 3)
        # Objects in view, in the world's object order (the order crafter draws them in).
        for index in np.sort(objs[objs > 0]):
            obj = self._world._objects[index]
            pos = obj.pos - self._center + self._offset
            engine._draw_alpha(canvas, pos * self._unit, self._textures.get(obj.texture, self._unit))
        out = self._light(canvas, self._world.daylight)
        if player.sleeping:
            out = self._sleep(out)
        return out

    # crafter's lighting and sleep effects with its Pillow colour step in numpy (same arithmetic).

    def _light(self, canvas: np.ndarray, daylight: float) -> np.ndarray:
        night = canvas
        if daylight < 0.5:
            night = self._noise(night, 2 * (0.5 - daylight), 0.5)  # draws from the world's generator
        night = _desaturate(night.astype(np.uint8), 0.4)
        night = self._tint(night, (0, 16, 64), 0.5)
        return daylight * canvas + (1 - daylight) * night  # type: ignore[no-any-return]

    def _sleep(self, canvas: np.ndarray) -> np.ndarray:
        canvas = _desaturate(canvas.astype(np.uint8), 0.0)
        return self._tint(canvas, (0, 0, 16), 0.5)  # type: ignore[no-any-return]


def _desaturate(image: np.ndarray, factor: float) -> np.ndarray:
    """``ImageEnhance.Color(image).enhance(factor)`` for an RGB uint8 array, bit for bit.

    Pillow blends the image with its grey version, ``L = (299 R + 587 G + 114 B) / 1000`` in 16-bit
    fixed point with rounding, as ``grey + factor · (image − grey)`` in single precision,
    truncated to uint8.
    """
    rgb = image.astype(np.int32)
    grey = (rgb[..., 0] * 19595 + rgb[..., 1] * 38470 + rgb[..., 2] * 7471 + 0x8000) >> 16
    grey = np.repeat(grey[..., None], 3, axis=-1)
    out = grey.astype(np.float32) + np.float32(factor) * (rgb - grey).astype(np.float32)
    return out.astype(np.uint8)


class _CachedItemView(engine.ItemView):  # type: ignore[misc]
    """crafter's inventory view, memoised on the inventory (it rarely changes between steps)."""

    def __init__(self, textures: engine.Textures, grid: list[int]) -> None:
        super().__init__(textures, grid)
        self._cache: dict[tuple[object, ...], np.ndarray] = {}

    def __call__(self, inventory: dict[str, int], unit: np.ndarray) -> np.ndarray:
        key = (*inventory.items(), *np.asarray(unit).tolist())
        view = self._cache.get(key)
        if view is None:
            if len(self._cache) >= 4096:
                self._cache.clear()
            view = self._cache[key] = super().__call__(inventory, unit)
        return view.copy()


def _no_semantic_view() -> None:
    return None


class CrafterEnv(gymnasium.Env[np.ndarray, np.int64]):
    """Gymnasium adapter around ``crafter.Env`` without a length limit (see :func:`make_crafter`)."""

    metadata: dict[str, Any] = {"render_modes": []}  # noqa: RUF012

    def __init__(self, size: int = 64, fast: bool = True) -> None:
        self._env = crafter.Env(
            area=(64, 64), view=(9, 9), size=(size, size), reward=True, length=None, seed=0
        )
        self._env._world.__class__ = _OrderedChunksWorld
        self._fast = fast
        self._fast_worldgen = fast and crafter_worldgen.available()
        if fast:
            # crafter computes a semantic map every step for its info; this adapter drops it.
            self._env._sem_view = _no_semantic_view
            local, items = self._env._local_view, self._env._item_view
            self._env._local_view = _FastLocalView(
                self._env._world, self._env._textures, local._grid.tolist()
            )
            self._env._item_view = _CachedItemView(self._env._textures, items._grid.tolist())
        self.observation_space = gymnasium.spaces.Box(0, 255, (size, size, 3), np.uint8)
        self.action_space = gymnasium.spaces.Discrete(NUM_ACTIONS)
        self._seeded = False

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        if seed is not None or not self._seeded:
            # Without an explicit seed, the first episode's seed comes from gymnasium's np_random
            # (itself seeded from OS entropy), never from numpy's global generator.
            crafter_seed = seed if seed is not None else int(self.np_random.integers(2**31 - 1))
            self._env._seed = crafter_seed
            self._env._episode = 0
            self._seeded = True
        obs = self._env.reset() if not self._fast_worldgen else self._reset_fast()
        return obs, {"achievements": dict.fromkeys(ACHIEVEMENTS, 0)}

    def _reset_fast(self) -> np.ndarray:
        """``crafter.Env.reset`` with the vectorised world generation (the same worlds, tested)."""
        env, world = self._env, self._env._world
        center = (world.area[0] // 2, world.area[1] // 2)
        env._episode += 1
        env._step = 0
        world.reset(seed=hash((env._seed, env._episode)) % (2**31 - 1))
        env._update_time()
        env._player = objects.Player(world, center)
        env._last_health = env._player.health
        world.add(env._player)
        env._unlocked = set()
        crafter_worldgen.generate_world(world, env._player)
        return env._obs()  # type: ignore[no-any-return]

    def step(self, action: np.int64 | int) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        step = self._step_fast if self._fast else self._env.step
        obs, reward, _, info = step(int(action))
        terminated = info["discount"] == 0.0
        # A fresh dict of plain values: crafter reuses the objects it puts into ``info``.
        # The per-step semantic map is left out (analysis only, 4 KB a step).
        out_info = {
            "achievements": dict(info["achievements"]),
            "inventory": dict(info["inventory"]),
            "discount": float(info["discount"]),
        }
        return obs, float(reward), bool(terminated), False, out_info

    def _step_fast(self, action: int) -> tuple[np.ndarray, float, bool, dict[str, Any]]:
        """``crafter.Env.step`` with its per-object distance test done on all objects at once.

        crafter updates every object within ``2 · max(view)`` (L1) of the player, in object order.
        The player is always the first object (added first after each reset) and no update moves
        another object, so every distance can be taken right after the player's own update.
        """
        env, world = self._env, self._env._world
        env._step += 1
        env._update_time()
        player = env._player
        player.action = crafter.constants.actions[action]
        objs = world.objects
        if objs[0] is not player:  # never seen; keep crafter's loop then
            for obj in objs:
                if player.distance(obj) < 2 * max(env._view):
                    obj.update()
        else:
            player.update()
            if len(objs) > 1:
                positions = np.array([obj.pos for obj in objs[1:]])
                near = np.abs(positions - player.pos).sum(axis=1) < 2 * max(env._view)
                for obj in itertools.compress(objs[1:], near.tolist()):
                    obj.update()
        if env._step % 10 == 0:
            for chunk, chunk_objs in world.chunks.items():
                env._balance_chunk(chunk, chunk_objs)
        obs = env._obs()
        reward = (player.health - env._last_health) / 10
        env._last_health = player.health
        unlocked = {
            name for name, count in player.achievements.items() if count > 0 and name not in env._unlocked
        }
        if unlocked:
            env._unlocked |= unlocked
            reward += 1.0
        dead = player.health <= 0
        info = {
            "inventory": player.inventory,
            "achievements": player.achievements,
            "discount": 1 - float(dead),
        }
        return obs, reward, dead, info


def make_crafter(
    size: int = 64, max_episode_steps: int = 10_000, fast: bool = True
) -> gymnasium.Env[np.ndarray, np.int64]:
    """``TimeLimit(Crafter, max_episode_steps)``: the reference's env (docs/method.md §1).

    ``fast`` swaps in pixel-identical faster views and the vectorised (identical) world generation.
    """
    return TimeLimit(CrafterEnv(size, fast), max_episode_steps=max_episode_steps)


def unlocked_achievements(achievements: dict[str, int]) -> list[str]:
    """Names of the achievements with a positive counter, in crafter's order."""
    return [name for name in ACHIEVEMENTS if achievements.get(name, 0) > 0]
