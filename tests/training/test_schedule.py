"""The epochs-to-iterations schedule against counts worked out by hand from the paper's settings.

The oracle below never calls ``Schedule``: it restates the epoch loop of docs/method.md §5 (a first
epoch with its own count, ``start_after_epochs``, ``stop_after_epochs``, evaluation every
``evaluation.every`` epochs) epoch by epoch, so a wrong boundary in the schedule shows up as a
different number.
"""

from __future__ import annotations

import dataclasses

import pytest

from iris_core.config import IrisConfig
from iris_core.training.schedule import COMPONENTS, Schedule
from pipelines.config import load_config


@pytest.fixture(scope="module")
def crafter() -> IrisConfig:
    return load_config(env="crafter", params="crafter")


@pytest.fixture(scope="module")
def atari() -> IrisConfig:
    return load_config(env="atari", params="atari")


def with_epochs(config: IrisConfig, epochs: int, every: int | None = None) -> IrisConfig:
    common = dataclasses.replace(config.common, epochs=epochs)
    evaluation = config.evaluation if every is None else dataclasses.replace(config.evaluation, every=every)
    return dataclasses.replace(config, common=common, evaluation=evaluation)


# (first epoch, later epochs, start_after_epochs) as the presets give them, written out by hand.
CRAFTER_TRAINING = {"tokenizer": (5000, 500, 0), "world_model": (2500, 500, 0), "actor_critic": (500, 500, 0)}
ATARI_TRAINING = {"tokenizer": (400, 200, 5), "world_model": (120, 120, 50), "actor_critic": (200, 200, 75)}


def oracle_training(counts: tuple[int, int, int], epoch: int) -> int:
    first, later, start_after = counts
    if epoch <= start_after:
        return 0
    return first if epoch == 1 else later


def test_crafter_totals_are_the_papers(crafter: IrisConfig) -> None:
    schedule = Schedule(crafter, 1)
    assert schedule.num_iterations == 1000
    totals = {c: sum(n for i in range(1, 1001) for _, n in schedule.training_steps(c, i)) for c in COMPONENTS}
    assert totals == {"tokenizer": 504_500, "world_model": 502_000, "actor_critic": 500_000}
    # 100k env steps in the first epoch, 10k in each later one, none after epoch 991.
    collected = sum(n for i in range(1, 1001) for _, n in schedule.collection_steps(i))
    assert collected == 100_000 + 990 * 10_000


def test_atari_totals_respect_start_after_epochs(atari: IrisConfig) -> None:
    schedule = Schedule(atari, 1)
    assert schedule.num_iterations == 600
    totals = {c: sum(n for i in range(1, 601) for _, n in schedule.training_steps(c, i)) for c in COMPONENTS}
    assert totals == {"tokenizer": 119_000, "world_model": 66_000, "actor_critic": 105_000}
    # The first iteration that trains each component is the epoch after start_after_epochs.
    first = {c: next(i for i in range(1, 601) if schedule.training_steps(c, i)) for c in COMPONENTS}
    assert first == {"tokenizer": 6, "world_model": 51, "actor_critic": 76}
    assert schedule.training_steps("tokenizer", 6) == [(6, 200)]
    assert schedule.training_steps("tokenizer", 5) == []


@pytest.mark.parametrize("preset", ["crafter", "atari"])
def test_k_equal_one_is_the_paper_epoch_by_epoch(preset: str, crafter: IrisConfig, atari: IrisConfig) -> None:
    config = crafter if preset == "crafter" else atari
    table = CRAFTER_TRAINING if preset == "crafter" else ATARI_TRAINING
    schedule = Schedule(config, 1)
    for epoch in (1, 2, 5, 6, 50, 51, 75, 76, 77, config.common.epochs):
        assert schedule.epochs(epoch) == range(epoch, epoch + 1)
        for component in COMPONENTS:
            expected = oracle_training(table[component], epoch)
            assert schedule.training_steps(component, epoch) == ([(epoch, expected)] if expected else [])


@pytest.mark.parametrize("k", [1, 2, 3, 7, 50, 999, 1000, 1001])
def test_any_k_takes_the_same_steps_in_total(crafter: IrisConfig, k: int) -> None:
    schedule = Schedule(crafter, k)
    assert schedule.num_iterations == -(-1000 // k)
    epochs = [e for i in range(1, schedule.num_iterations + 1) for e in schedule.epochs(i)]
    assert epochs == list(range(1, 1001))  # every epoch exactly once, in order
    for component, counts in CRAFTER_TRAINING.items():
        per_epoch = [
            (e, n)
            for i in range(1, schedule.num_iterations + 1)
            for e, n in schedule.training_steps(component, i)
        ]
        assert per_epoch == [(e, oracle_training(counts, e)) for e in range(1, 1001)]
        assert (
            sum(n for _, n in per_epoch)
            == {"tokenizer": 504_500, "world_model": 502_000, "actor_critic": 500_000}[component]
        )
    collected = sum(n for i in range(1, schedule.num_iterations + 1) for _, n in schedule.collection_steps(i))
    assert collected == 10_000_000


def test_epochs_per_iteration_and_a_short_last_iteration(crafter: IrisConfig) -> None:
    schedule = Schedule(with_epochs(crafter, 10), 4)
    assert schedule.num_iterations == 3
    assert [list(schedule.epochs(i)) for i in (1, 2, 3)] == [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10]]
    assert schedule.training_steps("tokenizer", 1) == [(1, 5000), (2, 500), (3, 500), (4, 500)]
    assert schedule.training_steps("world_model", 3) == [(9, 500), (10, 500)]
    assert schedule.steps_before("tokenizer", 1) == 0
    assert schedule.steps_before("tokenizer", 2) == 5000 + 3 * 500
    assert schedule.steps_before("world_model", 3) == 2500 + 7 * 500
    with pytest.raises(AssertionError):
        schedule.epochs(4)
    with pytest.raises(AssertionError):
        Schedule(crafter, 0)


def test_collection_stops_after_stop_after_epochs(crafter: IrisConfig, atari: IrisConfig) -> None:
    schedule = Schedule(crafter, 1)
    assert schedule.collection_steps(1) == [(1, 100_000)]
    assert schedule.collection_steps(991) == [(991, 10_000)]
    assert schedule.collection_steps(992) == []
    assert schedule.collection_steps(1000) == []
    # With K = 4 the iteration holding epoch 991 collects for its first three epochs only.
    grouped = Schedule(crafter, 4)
    assert grouped.epochs(248) == range(989, 993)
    assert grouped.collection_steps(248) == [(989, 10_000), (990, 10_000), (991, 10_000)]
    assert grouped.collection_steps(249) == []
    atari_schedule = Schedule(atari, 1)
    assert atari_schedule.collection_steps(1) == [(1, 2000)]
    assert atari_schedule.collection_steps(491) == [(491, 200)]
    assert atari_schedule.collection_steps(492) == []


def test_evaluated_iterations_follow_evaluation_every(crafter: IrisConfig) -> None:
    # K = 1: the paper's cadence; a last epoch off the cadence is not evaluated (docs/method.md §5).
    assert Schedule(crafter, 1).evaluated_iterations() == list(range(50, 1001, 50))
    assert Schedule(with_epochs(crafter, 120), 1).evaluated_iterations() == [50, 100]
    # K = 30: an iteration is evaluated when one of its epochs is on the cadence.
    schedule = Schedule(with_epochs(crafter, 120), 30)
    # iterations hold epochs 1-30, 31-60 (50), 61-90, 91-120 (100, and the last)
    assert schedule.evaluated_iterations() == [2, 4]
    assert Schedule(with_epochs(crafter, 5, every=1), 2).evaluated_iterations() == [1, 2, 3]
    assert Schedule(with_epochs(crafter, 5, every=2), 1).evaluated_iterations() == [2, 4]
    off = dataclasses.replace(crafter, evaluation=dataclasses.replace(crafter.evaluation, should=False))
    assert Schedule(off, 1).evaluated_iterations() == []
