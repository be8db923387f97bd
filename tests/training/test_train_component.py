"""The generic training loop: it learns, clips, accumulates, reports, and refuses NaN."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from iris_core.config import ComponentTrainingConfig
from iris_core.data.structures import Batch, SegmentId
from iris_core.training.train_component import NonFiniteLossError, train_component


def make_batch(value: float = 0.5) -> Batch:
    obs = torch.full((2, 3, 1, 2, 2), round(value * 255), dtype=torch.uint8)
    return Batch(
        obs=obs,
        act=torch.zeros(2, 3, dtype=torch.long),
        rew=torch.zeros(2, 3),
        end=torch.zeros(2, 3, dtype=torch.long),
        mask_padding=torch.ones(2, 3, dtype=torch.bool),
        segment_ids=[SegmentId(0, 0, 3), SegmentId(1, 0, 3)],
    )


class Regressor(nn.Module):
    """Fits a scalar to the mean pixel of the batch; ``scale`` makes the gradient huge."""

    def __init__(self, scale: float = 1.0, nan_at_call: int | None = None) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))
        self.scale = scale
        self.nan_at_call = nan_at_call
        self.calls = 0
        self.deps_seen: list[object] = []

    def compute_loss(
        self, batch: Batch, helper: object = None
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        self.deps_seen.append(helper)
        self.calls += 1
        error = self.scale * (self.w - batch.obs_float().mean())
        if self.nan_at_call == self.calls:
            error = error * float("nan")
        return {"loss_mse": error.pow(2), "loss_zero": torch.zeros(())}, {"w": self.w.detach()}


class ListSink:
    def __init__(self) -> None:
        self.records: list[tuple[dict[str, float], int]] = []

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.records.append((metrics, step))


CONFIG = ComponentTrainingConfig(optimizer="adam", weight_decay=0.0, bf16_autocast=False)


def test_loss_decreases_and_deps_are_passed() -> None:
    model = Regressor()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    first = train_component(model, optimizer, CONFIG, make_batch, 1, name="toy", deps={"helper": "h"})
    last = train_component(
        model, optimizer, CONFIG, make_batch, 50, name="toy", deps={"helper": "h"}, log_every=10
    )
    assert last["loss_mse"] < 0.01 * first["loss_mse"]
    assert set(last) == {"loss_mse", "loss_zero", "loss_total", "w", "grad_norm"}
    assert model.deps_seen == ["h"] * 51
    assert model.training


def test_gradient_norm_is_clipped_and_reported_before_clipping() -> None:
    model = Regressor(scale=1000.0)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    config = ComponentTrainingConfig(max_grad_norm=2.0, optimizer="adam", weight_decay=0.0)
    report = train_component(model, optimizer, config, lambda: make_batch(0.5), 1, name="toy")
    # d/dw (1000 (w − m))² at w = 0 is −2·1000²·m (m: the mean pixel, 128/255); clipped to norm 2.
    assert report["grad_norm"] == pytest.approx(2e6 * 128 / 255, rel=1e-5)
    assert float(model.w.detach()) == pytest.approx(2.0, rel=1e-5)


def test_gradient_accumulation_averages_micro_batches() -> None:
    values = iter([0.2, 0.6, 0.2, 0.6])
    model = Regressor()
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    config = ComponentTrainingConfig(grad_acc_steps=2, optimizer="adam", weight_decay=0.0)
    train_component(model, optimizer, config, lambda: make_batch(next(values)), 1, name="toy")
    # The mean gradient of (w − 0.2)² and (w − 0.6)² at w = 0 is −0.8 (pixels are rounded to /255).
    expected = (round(0.2 * 255) + round(0.6 * 255)) / 255
    assert model.calls == 2
    assert float(model.w.detach()) == pytest.approx(expected, rel=1e-5)


def test_sink_receives_prefixed_metrics_at_each_report() -> None:
    sink = ListSink()
    model = Regressor()
    train_component(
        model, torch.optim.SGD(model.parameters(), lr=0.1), CONFIG, make_batch, 5, name="toy",
        sink=sink, first_step=100, log_every=2,
    )  # fmt: skip
    assert [step for _, step in sink.records] == [102, 104, 105]
    assert all(set(m) == {f"toy/train/{k}" for k in ("loss_mse", "loss_zero", "loss_total", "w", "grad_norm")}
               for m, _ in sink.records)  # fmt: skip
    assert all(isinstance(v, float) for m, _ in sink.records for v in m.values())


def test_non_finite_loss_raises_with_component_and_step() -> None:
    model = Regressor(nan_at_call=3)
    with pytest.raises(NonFiniteLossError, match=r"world_model: non-finite loss at step 12"):
        train_component(
            model, torch.optim.SGD(model.parameters(), lr=0.1), CONFIG, make_batch, 5, name="world_model",
            first_step=10,
        )  # fmt: skip


def test_bf16_autocast_can_be_forced_on_cpu() -> None:
    dtypes: list[torch.dtype] = []

    class Probe(Regressor):
        def compute_loss(
            self, batch: Batch, helper: object = None
        ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
            dtypes.append(
                torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else torch.float32
            )
            return super().compute_loss(batch, helper)

    model = Probe()
    config = ComponentTrainingConfig(bf16_autocast=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    train_component(model, optimizer, config, make_batch, 1, name="toy")
    train_component(model, optimizer, config, make_batch, 1, name="toy", force_bf16_on_cpu=True)
    train_component(model, optimizer, CONFIG, make_batch, 1, name="toy", force_bf16_on_cpu=True)
    assert dtypes == [torch.float32, torch.bfloat16, torch.float32]
