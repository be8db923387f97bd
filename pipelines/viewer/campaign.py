"""A campaign's results read back from its workspace files (docs/pipeline.md), as tables.

Shared by ``iris report`` and the notebooks: learning curves (``plots/<component>/<i>.tsv``),
evaluations (``evaluation/<i>.json``: per-episode returns and Crafter achievements), promotion
decisions (``promotion/<i>.json``). Missing files are simply absent rows: a campaign in progress
reports what it has.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from iris_core.training.schedule import COMPONENTS
from iris_core.training.scores import crafter_score, human_normalized_score


def iterations_of(folder: Path, suffix: str) -> list[int]:
    """The iterations ``<i><suffix>`` found in ``folder``, in order."""
    if not folder.is_dir():
        return []
    return sorted(
        int(p.name[: -len(suffix)]) for p in folder.glob(f"*{suffix}") if p.name[: -len(suffix)].isdigit()
    )


def learning_curves(workspace: Path) -> dict[str, pd.DataFrame]:
    """Per component, every logged row of every iteration, with an ``iteration`` column."""
    curves = {}
    for component in COMPONENTS:
        folder = workspace / "plots" / component
        frames = [
            pd.read_csv(folder / f"{i}.tsv", sep="\t").assign(iteration=i)
            for i in iterations_of(folder, ".tsv")
        ]
        if frames:
            curves[component] = pd.concat(frames, ignore_index=True)
    return curves


def bootstrap_ci(
    values: Sequence[float] | np.ndarray, confidence: float = 0.95, num_resamples: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean (a point when every value is the same)."""
    x = np.asarray(values, dtype=np.float64)
    if len(x) == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(num_resamples, len(x)))].mean(axis=1)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return (float(low), float(high))


@dataclass
class Evaluation:
    iteration: int
    returns: list[float]
    lengths: list[int]
    achievements: list[dict[str, int]]  # per episode (Crafter), else empty


def evaluations(workspace: Path) -> list[Evaluation]:
    folder = workspace / "evaluation"
    out = []
    for i in iterations_of(folder, ".json"):
        content = json.loads((folder / f"{i}.json").read_text())
        out.append(
            Evaluation(
                i,
                [float(r) for r in content.get("returns", [])],
                [int(n) for n in content.get("lengths", [])],
                list(content.get("achievements") or []),
            )
        )
    return out


def evaluation_table(
    evals: Sequence[Evaluation], env_kind: str = "crafter", game: str | None = None
) -> pd.DataFrame:
    """One row per evaluated iteration: mean return with its 95% bootstrap interval, episodes,
    and the Crafter score or the Atari human-normalised score of the mean return."""
    rows = []
    for e in evals:
        low, high = bootstrap_ci(e.returns, seed=e.iteration)
        row: dict[str, Any] = {
            "iteration": e.iteration,
            "episodes": len(e.returns),
            "return_mean": float(np.mean(e.returns)) if e.returns else float("nan"),
            "ci_low": low,
            "ci_high": high,
            "length_mean": float(np.mean(e.lengths)) if e.lengths else float("nan"),
        }
        if env_kind == "crafter" and e.achievements:
            row["crafter_score"] = crafter_score(e.achievements).score
        if env_kind == "atari" and game and e.returns:
            row["human_normalized"] = human_normalized_score(game, row["return_mean"])
        rows.append(row)
    return pd.DataFrame(rows)


def achievement_rates(evaluation: Evaluation) -> dict[str, float]:
    """Per Crafter achievement, the percentage of evaluation episodes that unlocked it."""
    return crafter_score(evaluation.achievements).success_rates


def promotions(workspace: Path) -> pd.DataFrame:
    """The registry's history, one row per promotion stage: the version registered, the gate's
    decision and why, and which version was champion afterwards."""
    folder = workspace / "promotion"
    rows = []
    champion: int | None = None
    for i in iterations_of(folder, ".json"):
        p = json.loads((folder / f"{i}.json").read_text())
        evidence = p.get("evidence") or {}
        if p.get("decision") == "promoted":
            champion = p.get("version")
        elif p.get("champion_version") is not None:
            champion = p.get("champion_version")
        rows.append(
            {
                "iteration": i,
                "model": p.get("registered_model"),
                "version": p.get("version"),
                "decision": p.get("decision"),
                "reason": p.get("reason", ""),
                "mean_difference": evidence.get("mean_difference"),
                "ci_low": evidence.get("ci_low"),
                "ci_high": evidence.get("ci_high"),
                "champion_after": champion,
            }
        )
    return pd.DataFrame(rows)
