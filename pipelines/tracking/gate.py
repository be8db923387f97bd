"""The promotion gate: does the challenger beat the champion on the same evaluation seeds?

Both agents play the same test episodes: episode ``k`` of the challenger and of the champion start
from the same evaluation seed, so the returns are *paired* and the question is about the mean of
the paired differences ``d_k = challenger_k - champion_k``. The challenger is promoted only when
the bootstrap confidence interval of that mean lies entirely above zero; noise (an interval
straddling zero) and regressions keep the champion.

Degenerate samples are decided explicitly instead of being left to the bootstrap (which returns
NaN and warns when every resample has the same mean):

- all differences equal (``d_k = c`` for every k, e.g. deterministic policy and environment): the
  interval is the single point ``c``; promote when ``c > 0``;
- fewer than two pairs: there is no spread to estimate, so no promotion.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

MIN_PAIRS = 2


@dataclass(frozen=True)
class GateDecision:
    """The gate's verdict and the evidence behind it (recorded on the registered version).

    ``mean_difference``, ``ci_low``, ``ci_high`` are NaN when there was nothing to compare.
    """

    promote: bool
    reason: str
    mean_difference: float
    ci_low: float
    ci_high: float
    num_pairs: int
    confidence: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _returns(values: ArrayLike | Sequence[float], what: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{what}: expected a 1-D array of episode returns, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{what}: episode returns must be finite")
    return array


def promotion_gate(
    challenger_returns: ArrayLike | Sequence[float],
    champion_returns: ArrayLike | Sequence[float] | None,
    *,
    confidence: float = 0.95,
    num_resamples: int = 9999,
    seed: int = 0,
) -> GateDecision:
    """Decide whether the challenger replaces the champion.

    ``challenger_returns[k]`` and ``champion_returns[k]`` are the returns of episode ``k`` played
    on the same evaluation seed. ``champion_returns=None``: there is no champion yet, and the
    first version is promoted. Otherwise the BCa bootstrap interval (``scipy.stats.bootstrap``,
    ``num_resamples`` resamples drawn from ``seed``) of the mean paired difference at level
    ``confidence`` must lie entirely above zero. Deterministic for a given seed.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if num_resamples < 1:
        raise ValueError(f"num_resamples must be >= 1, got {num_resamples}")
    challenger = _returns(challenger_returns, "challenger_returns")
    nan = math.nan
    if champion_returns is None:
        return GateDecision(True, "first version: no champion to compare with", nan, nan, nan, 0, confidence)
    champion = _returns(champion_returns, "champion_returns")
    if challenger.shape != champion.shape:
        raise ValueError(
            "challenger and champion must be evaluated on the same episodes (paired by seed): "
            f"got {challenger.size} and {champion.size} returns"
        )
    differences = challenger - champion
    n = int(differences.size)
    if n < MIN_PAIRS:
        mean = float(differences.mean()) if n else nan
        return GateDecision(
            False, f"too few paired episodes ({n} < {MIN_PAIRS})", mean, nan, nan, n, confidence
        )

    mean = float(differences.mean())
    if np.all(differences == differences[0]):
        # Every resample has the same mean: the interval is that single point.
        low = high = float(differences[0])
    else:
        from scipy.stats import bootstrap  # scipy.stats takes ~1 s to import; only the gate needs it

        result = bootstrap(
            (differences,),
            np.mean,
            confidence_level=confidence,
            n_resamples=num_resamples,
            method="BCa",
            rng=np.random.default_rng(seed),
        )
        low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
        if not (math.isfinite(low) and math.isfinite(high)):
            # BCa can fail on nearly degenerate samples (e.g. one outlier among equal values);
            # the percentile interval of the same resamples is always defined.
            result = bootstrap(
                (differences,),
                np.mean,
                confidence_level=confidence,
                n_resamples=num_resamples,
                method="percentile",
                rng=np.random.default_rng(seed),
            )
            low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)

    level = f"{confidence * 100:g}%"
    if low > 0.0:
        reason = (
            f"challenger better: {level} interval of the mean paired difference [{low:.4g}, {high:.4g}] > 0"
        )
        return GateDecision(True, reason, mean, low, high, n, confidence)
    if high < 0.0:
        reason = f"challenger worse: {level} interval [{low:.4g}, {high:.4g}] < 0"
    else:
        reason = f"no clear difference: {level} interval [{low:.4g}, {high:.4g}] contains 0"
    return GateDecision(False, reason, mean, low, high, n, confidence)
