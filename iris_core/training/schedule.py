"""The paper's epoch loop unrolled into iterations (docs/method.md §5).

The paper alternates, every *epoch*: collect, train the tokenizer, the world model, the
actor-critic, and evaluate every ``evaluation.every`` epochs. A pipeline of versioned stages
cannot loop, so the loop is unrolled into *iterations* of ``epochs_per_iteration`` (K) epochs:
iteration ``i`` (1-based) holds epochs ``(i - 1) * K + 1 .. i * K``. Inside a stage the epochs of
its iteration run in order with the paper's own per-epoch counts (first-epoch extras,
``start_after_epochs``, ``stop_after_epochs``), so K = 1 is the paper's schedule exactly and any K
takes the same optimizer steps and env steps in total; only the policy that collects is refreshed
every K epochs instead of every epoch.

This module is the one place where epochs become iterations.
"""

from __future__ import annotations

from dataclasses import dataclass

from iris_core.config import IrisConfig

COMPONENTS = ("tokenizer", "world_model", "actor_critic")


@dataclass(frozen=True)
class Schedule:
    """Which paper epochs each iteration covers, and what happens in them."""

    config: IrisConfig
    epochs_per_iteration: int

    def __post_init__(self) -> None:
        assert self.epochs_per_iteration >= 1, self.epochs_per_iteration

    @property
    def num_iterations(self) -> int:
        """Iterations needed to cover ``common.epochs`` (the last one may hold fewer epochs)."""
        return -(-self.config.common.epochs // self.epochs_per_iteration)

    def epochs(self, iteration: int) -> range:
        """The paper epochs (1-based) of ``iteration`` (1-based)."""
        assert 1 <= iteration <= self.num_iterations, (iteration, self.num_iterations)
        first = (iteration - 1) * self.epochs_per_iteration + 1
        last = min(iteration * self.epochs_per_iteration, self.config.common.epochs)
        return range(first, last + 1)

    def collection_steps(self, iteration: int) -> list[tuple[int, int]]:
        """``(epoch, env steps)`` for the epochs of ``iteration`` that collect (steps > 0)."""
        train = self.config.collection.train
        return [(e, train.steps_in_epoch(e)) for e in self.epochs(iteration) if train.steps_in_epoch(e) > 0]

    def training_steps(self, component: str, iteration: int) -> list[tuple[int, int]]:
        """``(epoch, optimizer steps)`` of ``component`` for the epochs of ``iteration`` that train it."""
        assert component in COMPONENTS, component
        cfg = getattr(self.config.training, component)
        return [(e, cfg.steps_in_epoch(e)) for e in self.epochs(iteration) if cfg.steps_in_epoch(e) > 0]

    def steps_before(self, component: str, iteration: int) -> int:
        """Optimizer steps ``component`` took in all iterations before ``iteration``."""
        cfg = getattr(self.config.training, component)
        first_epoch = self.epochs(iteration).start
        return sum(cfg.steps_in_epoch(e) for e in range(1, first_epoch))

    def evaluates(self, iteration: int) -> bool:
        """Whether ``iteration`` ends with an evaluation: one of its epochs is on the paper's
        cadence (``epoch % evaluation.every == 0``). Adding iterations never changes which of the
        earlier ones are evaluated, so their stages stay up to date."""
        evaluation = self.config.evaluation
        if not evaluation.should:
            return False
        return any(e % evaluation.every == 0 for e in self.epochs(iteration))

    def evaluated_iterations(self) -> list[int]:
        return [i for i in range(1, self.num_iterations + 1) if self.evaluates(i)]
