"""Benchmark scores the reference implementation does not compute (docs/method.md §7).

- **Crafter score** (Hafner, "Benchmarking the Spectrum of Agent Capabilities", 2022): per
  achievement, the success rate s_i in percent = share of episodes in which it was unlocked at
  least once; score = exp(mean_i ln(1 + s_i)) − 1 over the 22 achievements (a geometric mean
  that rewards unlocking rare achievements at all).
- **Atari human-normalised score**: HNS = (agent − random) / (human − random) per game, then the
  mean, median and interquartile mean (IQM) across games.

IQM follows rliable (Agarwal et al., NeurIPS 2021), whose ``aggregate_iqm`` is
``scipy.stats.trim_mean(scores, 0.25)``: sort the n scores, drop ``floor(n / 4)`` from each end,
average the rest. With ``fractional=True``, :func:`interquartile_mean` instead averages exactly
the middle half of the sample, giving the two boundary scores a fractional weight when n is not
divisible by 4 (the continuous definition). The two agree when n is divisible by 4.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

# Crafter's 22 achievements, in crafter's own order (crafter/data.yaml).
CRAFTER_ACHIEVEMENTS: tuple[str, ...] = (
    "collect_coal", "collect_diamond", "collect_drink", "collect_iron", "collect_sapling",
    "collect_stone", "collect_wood", "defeat_skeleton", "defeat_zombie", "eat_cow", "eat_plant",
    "make_iron_pickaxe", "make_iron_sword", "make_stone_pickaxe", "make_stone_sword",
    "make_wood_pickaxe", "make_wood_sword", "place_furnace", "place_plant", "place_stone",
    "place_table", "wake_up",
)  # fmt: skip


@dataclass(frozen=True)
class CrafterScore:
    score: float  # in percent-points, as reported in the literature
    success_rates: dict[str, float]  # per achievement, in percent
    num_episodes: int


def crafter_score(achievements_per_episode: Sequence[Mapping[str, int]]) -> CrafterScore:
    """Crafter score from each episode's final achievement counters (or 0/1 unlocked flags)."""
    num_episodes = len(achievements_per_episode)
    if num_episodes == 0:
        raise ValueError("the Crafter score needs at least one episode")
    rates = {
        name: 100.0 * sum(1 for counts in achievements_per_episode if counts.get(name, 0) > 0) / num_episodes
        for name in CRAFTER_ACHIEVEMENTS
    }
    score = math.exp(float(np.mean([math.log1p(rate) for rate in rates.values()]))) - 1.0
    return CrafterScore(score=score, success_rates=rates, num_episodes=num_episodes)


# ---------------------------------------------------------------------------------------------
# Atari
# ---------------------------------------------------------------------------------------------

# (random, human) scores of the 26 Atari 100k games: the standard table of the Atari 100k
# literature (random and human baselines as reported by Mnih et al. 2015 / Wang et al. 2016, used
# e.g. by SimPLe, DER, IRIS and rliable's Atari 100k data).
ATARI_100K_RANDOM_HUMAN: dict[str, tuple[float, float]] = {
    "Alien": (227.8, 7127.7),
    "Amidar": (5.8, 1719.5),
    "Assault": (222.4, 742.0),
    "Asterix": (210.0, 8503.3),
    "BankHeist": (14.2, 753.1),
    "BattleZone": (2360.0, 37187.5),
    "Boxing": (0.1, 12.1),
    "Breakout": (1.7, 30.5),
    "ChopperCommand": (811.0, 7387.8),
    "CrazyClimber": (10780.5, 35829.4),
    "DemonAttack": (152.1, 1971.0),
    "Freeway": (0.0, 29.6),
    "Frostbite": (65.2, 4334.7),
    "Gopher": (257.6, 2412.5),
    "Hero": (1027.0, 30826.4),
    "Jamesbond": (29.0, 302.8),
    "Kangaroo": (52.0, 3035.0),
    "Krull": (1598.0, 2665.5),
    "KungFuMaster": (258.5, 22736.3),
    "MsPacman": (307.3, 6951.6),
    "Pong": (-20.7, 14.6),
    "PrivateEye": (24.9, 69571.3),
    "Qbert": (163.9, 13455.0),
    "RoadRunner": (11.5, 7845.0),
    "Seaquest": (68.4, 42054.7),
    "UpNDown": (533.4, 11693.2),
}


def atari_game_name(game_id: str) -> str:
    """``'BreakoutNoFrameskip-v4'`` -> ``'Breakout'`` (names as in the score table)."""
    name = game_id.split("/")[-1]
    for suffix in ("NoFrameskip-v4", "Deterministic-v4", "-v4", "-v5", "-v0"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def human_normalized_score(game: str, score: float) -> float:
    """(score − random) / (human − random) for one Atari 100k game (name or env id)."""
    name = atari_game_name(game)
    if name not in ATARI_100K_RANDOM_HUMAN:
        raise KeyError(f"{name!r} is not one of the 26 Atari 100k games: {sorted(ATARI_100K_RANDOM_HUMAN)}")
    random_score, human_score = ATARI_100K_RANDOM_HUMAN[name]
    return (score - random_score) / (human_score - random_score)


def interquartile_mean(scores: Iterable[float], fractional: bool = False) -> float:
    """Mean of the middle 50% of ``scores`` (see the module docstring for the two definitions)."""
    x = np.sort(np.asarray(list(scores), dtype=np.float64).ravel())
    n = len(x)
    if n == 0:
        raise ValueError("IQM of an empty sample")
    if not fractional:
        cut = int(0.25 * n)
        return float(x[cut : n - cut].mean())
    # Sample i covers [i, i + 1) of [0, n); keep the overlap of each with [n/4, 3n/4).
    lo, hi = n / 4.0, 3.0 * n / 4.0
    starts = np.arange(n, dtype=np.float64)
    weights = np.clip(np.minimum(starts + 1.0, hi) - np.maximum(starts, lo), 0.0, 1.0)
    return float((weights * x).sum() / weights.sum())


@dataclass(frozen=True)
class AtariScores:
    per_game: dict[str, float]  # HNS per game (the mean over runs when several are given)
    mean: float
    median: float
    iqm: float  # over all runs × games, as rliable aggregates


def atari_scores(returns: Mapping[str, float | Sequence[float]], fractional_iqm: bool = False) -> AtariScores:
    """HNS per game and mean / median / IQM across games from raw returns per game.

    ``returns`` maps a game (name or env id) to a return or to one return per run (seed). Mean and
    median are taken over the per-game HNS (run means); the IQM pools every run of every game.
    """
    if not returns:
        raise ValueError("no games")
    per_run = {
        atari_game_name(game): [
            human_normalized_score(game, float(r)) for r in np.atleast_1d(np.asarray(value))
        ]
        for game, value in returns.items()
    }
    per_game = {game: float(np.mean(values)) for game, values in per_run.items()}
    values = np.array(list(per_game.values()))
    pooled = [v for runs in per_run.values() for v in runs]
    return AtariScores(
        per_game=per_game,
        mean=float(values.mean()),
        median=float(np.median(values)),
        iqm=interquartile_mean(pooled, fractional=fractional_iqm),
    )
