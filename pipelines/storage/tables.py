"""The per-episode table and its schema.

One row per episode *part* in a store (the values of that part: its length, its return, the
achievement counters at its last step), and one row per episode at dataset level (parts merged:
lengths and returns summed, counters and ``finished`` of the last part). Both are validated with
:class:`EpisodeTable` when written and when read.
"""

from __future__ import annotations

import pandas as pd
import pandera.pandas as pa
from pandera.errors import SchemaError, SchemaErrors
from pandera.typing import Series

from pipelines.storage.errors import TableValidationError

# Crafter's 22 achievements (crafter.constants.achievements), in its order.
CRAFTER_ACHIEVEMENTS: tuple[str, ...] = (
    "collect_coal",
    "collect_diamond",
    "collect_drink",
    "collect_iron",
    "collect_sapling",
    "collect_stone",
    "collect_wood",
    "defeat_skeleton",
    "defeat_zombie",
    "eat_cow",
    "eat_plant",
    "make_iron_pickaxe",
    "make_iron_sword",
    "make_stone_pickaxe",
    "make_stone_sword",
    "make_wood_pickaxe",
    "make_wood_sword",
    "place_furnace",
    "place_plant",
    "place_stone",
    "place_table",
    "wake_up",
)
ACHIEVEMENT_PREFIX = "achievement_"


def achievement_column(name: str) -> str:
    return ACHIEVEMENT_PREFIX + name


class EpisodeTable(pa.DataFrameModel):
    episode_id: Series[int] = pa.Field(ge=0)
    part: Series[int] = pa.Field(ge=0)  # at dataset level: the last part merged into the row
    length: Series[int] = pa.Field(ge=1)
    episode_return: Series[float] = pa.Field(alias="return", nullable=False)
    finished: Series[bool]
    iteration: Series[int] = pa.Field(ge=0)
    policy_version: Series[int] = pa.Field(ge=0)
    # Crafter: one non-negative counter column per achievement; other games: none.
    achievements: Series[int] | None = pa.Field(ge=0, alias=ACHIEVEMENT_PREFIX + ".+", regex=True)

    class Config:
        strict = True
        unique = ["episode_id", "part"]  # noqa: RUF012 (pandera reads it as a class attribute)

    @pa.dataframe_check
    @classmethod
    def achievements_all_or_none(cls, df: pd.DataFrame) -> bool:
        present = {c[len(ACHIEVEMENT_PREFIX) :] for c in df.columns if c.startswith(ACHIEVEMENT_PREFIX)}
        return not present or present == set(CRAFTER_ACHIEVEMENTS)

    @pa.dataframe_check
    @classmethod
    def finite_returns(cls, df: pd.DataFrame) -> bool:
        return bool(pd.Series(df["return"]).abs().lt(float("inf")).all())


def validate_table(table: pd.DataFrame, store: str) -> pd.DataFrame:
    """``table`` if it satisfies :class:`EpisodeTable`, else an error naming ``store``."""
    try:
        return EpisodeTable.validate(table, lazy=True)
    except (SchemaError, SchemaErrors) as error:
        raise TableValidationError(store, f"episode table fails validation:\n{error}") from None


def empty_table(with_achievements: bool) -> pd.DataFrame:
    columns: dict[str, pd.Series] = {
        "episode_id": pd.Series([], dtype="int64"),
        "part": pd.Series([], dtype="int64"),
        "length": pd.Series([], dtype="int64"),
        "return": pd.Series([], dtype="float64"),
        "finished": pd.Series([], dtype="bool"),
        "iteration": pd.Series([], dtype="int64"),
        "policy_version": pd.Series([], dtype="int64"),
    }
    if with_achievements:
        columns.update({achievement_column(n): pd.Series([], dtype="int64") for n in CRAFTER_ACHIEVEMENTS})
    return pd.DataFrame(columns)
