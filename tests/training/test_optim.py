"""Weight-decay grouping and optimiser choice (docs/method.md §6)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from iris_core.config import ComponentTrainingConfig, TokenizerConfig, TrainingConfig
from iris_core.models.tokenizer import Tokenizer
from iris_core.training.optim import make_optimizer, split_weight_decay


class EveryKind(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 4)
        self.conv1d = nn.Conv1d(4, 4, 3)
        self.conv2d = nn.Conv2d(4, 4, 3)
        self.embedding = nn.Embedding(5, 4)
        self.layer_norm = nn.LayerNorm(4)
        self.group_norm = nn.GroupNorm(2, 4)
        self.lstm = nn.LSTMCell(4, 4)
        self.nested = nn.Sequential(nn.Linear(4, 4, bias=False), nn.Conv2d(4, 4, 1, bias=False))
        self.tied = nn.Linear(4, 4)
        self.tied_again = self.tied  # the same module reachable twice: listed once
        self.raw = nn.Parameter(torch.zeros(3))
        self.frozen = nn.Linear(4, 4).requires_grad_(False)


def test_only_linear_and_conv1d_weights_are_decayed() -> None:
    model = EveryKind()
    groups = split_weight_decay(model)
    assert set(groups.decay) == {"linear.weight", "conv1d.weight", "nested.0.weight", "tied.weight"}
    assert set(groups.no_decay) == {
        "linear.bias", "conv1d.bias", "conv2d.weight", "conv2d.bias", "embedding.weight",
        "layer_norm.weight", "layer_norm.bias", "group_norm.weight", "group_norm.bias",
        "lstm.weight_ih", "lstm.weight_hh", "lstm.bias_ih", "lstm.bias_hh", "nested.1.weight",
        "tied.bias", "raw",
    }  # fmt: skip


def test_every_tokenizer_parameter_is_grouped_once_and_its_convs_are_not_decayed() -> None:
    tokenizer = Tokenizer(TokenizerConfig(num_actions=3))
    groups = split_weight_decay(tokenizer)
    assert not set(groups.decay) & set(groups.no_decay)
    assert set(groups.decay) | set(groups.no_decay) == {name for name, _ in tokenizer.named_parameters()}
    modules = dict(tokenizer.named_modules())
    for name in groups.decay:
        assert isinstance(modules[name.rsplit(".", 1)[0]], nn.Linear), name
    assert any(isinstance(modules[n.rsplit(".", 1)[0]], nn.Conv2d) for n in groups.no_decay)
    assert "quantizer.codebook" not in groups.no_decay  # a buffer, updated by EMA


def test_adamw_groups_and_hyperparameters() -> None:
    training = TrainingConfig(learning_rate=3e-4, adam_betas=(0.8, 0.99), adam_eps=1e-6)
    component = ComponentTrainingConfig(weight_decay=0.05, optimizer="adamw")
    model = EveryKind()
    optimizer = make_optimizer(model, training, component)
    assert type(optimizer) is torch.optim.AdamW
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert {id(p) for p in decay["params"]} == {id(p) for p in split_weight_decay(model).decay.values()}
    for group in optimizer.param_groups:
        assert group["lr"] == 3e-4 and group["betas"] == (0.8, 0.99) and group["eps"] == 1e-6
    assert all(p.requires_grad for group in optimizer.param_groups for p in group["params"])


def test_actor_critic_gets_plain_adam_without_frozen_parameters() -> None:
    model = EveryKind()
    optimizer = make_optimizer(
        model, TrainingConfig(), ComponentTrainingConfig(optimizer="adam", weight_decay=0.0)
    )
    assert type(optimizer) is torch.optim.Adam
    (group,) = optimizer.param_groups
    assert group["weight_decay"] == 0.0 and group["lr"] == 1e-4
    frozen = {id(p) for p in model.frozen.parameters()}
    assert not frozen & {id(p) for p in group["params"]}
    assert len(group["params"]) == sum(1 for p in model.parameters() if p.requires_grad)


def test_shared_parameter_with_conflicting_decay_is_rejected() -> None:
    model = nn.Module()
    model.embedding = nn.Embedding(4, 4)
    model.head = nn.Linear(4, 4)
    model.head.weight = model.embedding.weight  # weight tying across a decayed and a non-decayed module
    with pytest.raises(ValueError, match="shared"):
        split_weight_decay(model)
