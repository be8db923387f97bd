"""The campaign's stage order, read from the `loop` section of `params.yaml`.

`loop.iterations` maps each iteration (`'1'`, `'2'`, ...) to its predecessor (`{prev: '<i-1>'}`),
`loop.evaluations` the evaluated iterations the same way. The order is the one `dvc.yaml` implies:
`init`, then per iteration `collect@i`, `tokenizer@i`, `world_model@i`, `actor_critic@i`, and on the
evaluation cadence `evaluate@i`, `promote@i`. Nothing here imports Prefect or DVC.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

TRAINING_STAGES = ("collect", "tokenizer", "world_model", "actor_critic")
EVALUATION_STAGES = ("evaluate", "promote")


@dataclass(frozen=True)
class Plan:
    """The iterations of a campaign, in order, and which of them are evaluated."""

    iterations: tuple[str, ...]
    evaluations: frozenset[str]

    def iteration_stages(self, iteration: str) -> list[str]:
        names = TRAINING_STAGES + (EVALUATION_STAGES if iteration in self.evaluations else ())
        return [f"{name}@{iteration}" for name in names]

    def stages(self) -> list[str]:
        """Every stage of the campaign in the order the flow runs them."""
        order = ["init"]
        for iteration in self.iterations:
            order.extend(self.iteration_stages(iteration))
        return order

    def closing_stage(self, iteration: str) -> str:
        """The stage after which an iteration's results are complete (its summary is published)."""
        return self.iteration_stages(iteration)[-1]


def plan_from_params(params: Mapping[str, Any]) -> Plan:
    """Order the iterations by following `prev` from `'0'`; refuse gaps, forks and cycles."""
    loop = params.get("loop")
    if not isinstance(loop, Mapping) or not isinstance(loop.get("iterations"), Mapping):
        raise ValueError("params.yaml has no loop.iterations section (run `iris config write`)")
    successor: dict[str, str] = {}
    for key, spec in loop["iterations"].items():
        if not isinstance(spec, Mapping) or "prev" not in spec:
            raise ValueError(f"loop.iterations.{key} must be a mapping with a 'prev' key")
        prev = str(spec["prev"])
        if prev in successor:
            raise ValueError(f"loop.iterations: '{successor[prev]}' and '{key}' both follow '{prev}'")
        successor[prev] = str(key)
    order: list[str] = []
    current = "0"
    while current in successor:
        current = successor[current]
        if current in order:
            raise ValueError(f"loop.iterations: a cycle through '{current}'")
        order.append(current)
    if len(order) != len(successor):
        stray = sorted(set(successor.values()) - set(order))
        raise ValueError(f"loop.iterations: {stray} are not reachable from iteration '0'")
    evaluations = frozenset(str(key) for key in (loop.get("evaluations") or {}))
    unknown = sorted(evaluations - set(order))
    if unknown:
        raise ValueError(f"loop.evaluations names iterations that do not exist: {unknown}")
    return Plan(iterations=tuple(order), evaluations=evaluations)


def read_plan(workspace: Path) -> Plan:
    """The plan of the `params.yaml` in a workspace."""
    params = yaml.safe_load((workspace / "params.yaml").read_text())
    if not isinstance(params, Mapping):
        raise ValueError(f"{workspace / 'params.yaml'} is not a mapping")
    return plan_from_params(params)
