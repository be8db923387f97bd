"""Crafter's world generation, vectorised: the same worlds as ``crafter.worldgen``, much faster.

Crafter builds each 64×64 world cell by cell in Python, evaluating simplex noise one point at a
time (~13 noise fields, 4096 cells). Here every noise field is evaluated on the whole grid at once
(opensimplex's numba-compiled ``noise3array``, which runs the very same per-point routine), the
materials are decided with array masks, and only the cells that draw from the world's random
generator are visited one by one, in crafter's order (x-major), so the generator ends in the same
state and every later step of the game is unchanged. The result is tested to equal crafter's own
generator, world for world.

Without numba (``NUMBA_DISABLE_JIT=1``, or numba missing), grid noise would be pure Python and
slower than crafter's own loop, so :func:`available` is False and the caller keeps crafter's.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from crafter import constants, objects, worldgen
from crafter import engine as _engine

# crafter's own noise library, reached through crafter (it is crafter's dependency, not ours).
_opensimplex = worldgen.opensimplex


def _use_workqueue_threads() -> None:
    """Run numba's parallel loops (``noise3array`` is ``parallel=True``) on its own thread pool.

    By default numba picks its OpenMP layer; once that has run, torch's OpenMP kernels in the
    same process (the policy during collection) become about 2× slower (measured: 48 → 92 ms per
    16-frame policy call). The workqueue layer leaves them alone. Only effective before numba's
    first parallel call in the process.
    """
    try:
        import numba
    except ImportError:  # numba is optional (the ``fast`` extra)
        return
    numba.config.THREADING_LAYER = "workqueue"  # type: ignore[attr-defined]


_use_workqueue_threads()


def available() -> bool:
    """True when grid noise runs compiled (numba importable and JIT enabled)."""
    return hasattr(_opensimplex.internals._noise3, "py_func")


def _noise(
    simplex: Any, xs: np.ndarray, ys: np.ndarray, z: float, sizes: dict[float, float], normalize: bool = True
) -> np.ndarray:
    """``crafter.worldgen._simplex`` on the grid ``xs × ys``: ``(len(xs), len(ys))``.

    The arithmetic is crafter's, in its order (sum of weighted octaves, then one division), so
    every value is bit-identical to the per-cell computation.
    """
    value = np.zeros((len(xs), len(ys)))
    for size, weight in sizes.items():
        grid = simplex.noise3array(xs / size, ys / size, np.array([float(z)]))[0]  # (len(ys), len(xs))
        value = value + weight * grid.T
    if normalize:
        value = value / sum(sizes.values())
    return value


def generate_world(world: _engine.World, player: Any) -> None:
    """Fill ``world`` around ``player`` exactly as ``crafter.worldgen.generate_world`` does."""
    random = world.random
    simplex = _opensimplex.OpenSimplex(seed=random.randint(0, 2**31 - 1))
    width, height = world.area
    x = np.arange(width, dtype=np.float64)
    y = np.arange(height, dtype=np.float64)
    xi, yi = np.meshgrid(np.arange(width), np.arange(height), indexing="ij")

    # --- materials ---------------------------------------------------------------------------
    start = 4 - np.sqrt((xi - player.pos[0]) ** 2 + (yi - player.pos[1]) ** 2)
    start = start + 2 * _noise(simplex, x, y, 8, {3: 1})
    start = 1 / (1 + np.exp(-start))
    water = _noise(simplex, x, y, 3, {15: 1, 5: 0.15}, False) + 0.1
    water = water - 2 * start
    mountain = _noise(simplex, x, y, 0, {15: 1, 5: 0.3})
    mountain = mountain - (4 * start + 0.3 * water)

    grass = start > 0.5
    in_mountain = ~grass & (mountain > 0.15)
    cave = in_mountain & (_noise(simplex, x, y, 6, {7: 1}) > 0.15) & (mountain > 0.3)
    tunnel_h = in_mountain & ~cave & (_noise(simplex, 2 * x, y / 5, 7, {3: 1}) > 0.4)
    tunnel_v = in_mountain & ~cave & ~tunnel_h & (_noise(simplex, x / 5, 2 * y, 7, {3: 1}) > 0.4)
    tunnels = tunnel_h | tunnel_v
    rest = in_mountain & ~cave & ~tunnels  # cells that may draw for coal, iron or diamond
    coal_noise = _noise(simplex, x, y, 1, {8: 1}) > 0
    iron_noise = _noise(simplex, x, y, 2, {6: 1}) > 0.4
    lava = rest & (mountain > 0.3) & (_noise(simplex, x, y, 6, {5: 1}) > 0.35)
    lowland = ~grass & ~in_mountain
    sand = lowland & (water > 0.25) & (water <= 0.35) & (_noise(simplex, x, y, 4, {9: 1}) > -0.2)
    lake = lowland & ~sand & (water > 0.3)
    grassland = lowland & ~sand & ~lake
    tree_noise = grassland & (_noise(simplex, x, y, 5, {7: 1}) > 0)

    mat_id = world._mat_ids
    mat = np.full((width, height), mat_id["stone"], dtype=np.uint8)
    mat[grass | grassland] = mat_id["grass"]
    mat[cave | tunnels] = mat_id["path"]
    mat[lava] = mat_id["lava"]
    mat[sand] = mat_id["sand"]
    mat[lake] = mat_id["water"]

    # The random draws, cell by cell in crafter's order (x-major); only some cells draw.
    draws = rest | tree_noise
    uniforms = _Uniforms(random, budget=3 * int(draws.sum()))
    for cx, cy in zip(*np.nonzero(draws), strict=True):
        if tree_noise[cx, cy]:
            if uniforms.next() > 0.8:
                mat[cx, cy] = mat_id["tree"]
        elif coal_noise[cx, cy] and uniforms.next() > 0.85:
            mat[cx, cy] = mat_id["coal"]
        elif iron_noise[cx, cy] and uniforms.next() > 0.75:
            mat[cx, cy] = mat_id["iron"]
        elif mountain[cx, cy] > 0.18 and uniforms.next() > 0.994:
            mat[cx, cy] = mat_id["diamond"]
        # otherwise lava or stone, already set
    uniforms.commit()
    world._mat_map[:, :] = mat

    # --- creatures -----------------------------------------------------------------------------
    dist = np.sqrt((xi - player.pos[0]) ** 2 + (yi - player.pos[1]) ** 2)
    walkable = np.isin(mat, [mat_id[name] for name in constants.walkable])
    is_grass, is_path = mat == mat_id["grass"], mat == mat_id["path"]
    uniforms = _Uniforms(random, budget=3 * int(walkable.sum()))
    for cx, cy in zip(*np.nonzero(walkable), strict=True):
        d = dist[cx, cy]
        if d > 3 and is_grass[cx, cy] and uniforms.next() > 0.985:
            world.add(objects.Cow(world, (cx, cy)))
        elif d > 10 and uniforms.next() > 0.993:
            world.add(objects.Zombie(world, (cx, cy), player))
        elif is_path[cx, cy] and tunnels[cx, cy] and uniforms.next() > 0.95:
            world.add(objects.Skeleton(world, (cx, cy), player))
    uniforms.commit()


class _Uniforms:
    """Scalar ``random.uniform()`` draws served from one block, then the generator is advanced by
    exactly the number used (a block of n equals n scalar draws of a ``RandomState``)."""

    def __init__(self, random: np.random.RandomState, budget: int) -> None:
        self._random = random
        self._state = random.get_state()
        self._block = random.uniform(size=budget)
        self._used = 0

    def next(self) -> float:
        value = float(self._block[self._used])
        self._used += 1
        return value

    def commit(self) -> None:
        self._random.set_state(self._state)
        if self._used:
            self._random.uniform(size=self._used)
