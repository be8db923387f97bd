"""Optimisers of the three components (docs/method.md §6).

Tokenizer and world model: AdamW whose weight decay touches only the weights of ``nn.Linear`` and
``nn.Conv1d`` (so the CNNs' ``Conv2d`` kernels, norms, embeddings and every bias are not decayed).
Actor-critic: plain Adam, no decay. Constant learning rate, betas and eps from ``TrainingConfig``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from iris_core.config import ComponentTrainingConfig, TrainingConfig

# Modules whose ``weight`` is decayed; every other parameter is not (the reference implementation's
# minGPT-style optimiser set-up; docs/method.md §6).
DECAYED_WEIGHT_MODULES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d)


@dataclass(frozen=True)
class WeightDecayGroups:
    """Trainable parameters split by whether AdamW decays them, with their qualified names."""

    decay: dict[str, nn.Parameter]
    no_decay: dict[str, nn.Parameter]


def split_weight_decay(model: nn.Module) -> WeightDecayGroups:
    """Split ``model``'s trainable parameters into decayed and non-decayed ones.

    Each parameter is classified by the module that owns it directly; a parameter shared by
    several modules must get the same answer from each of them.
    """
    decay: dict[str, nn.Parameter] = {}
    no_decay: dict[str, nn.Parameter] = {}
    seen: dict[int, bool] = {}  # id(param) -> decayed, so a shared parameter is listed once
    for module_name, module in model.named_modules():
        for param_name, param in module.named_parameters(recurse=False):
            if not param.requires_grad:
                continue
            full_name = f"{module_name}.{param_name}" if module_name else param_name
            is_decayed = param_name == "weight" and isinstance(module, DECAYED_WEIGHT_MODULES)
            if id(param) in seen:
                if seen[id(param)] != is_decayed:
                    raise ValueError(f"{full_name} is shared by decayed and non-decayed modules")
                continue
            seen[id(param)] = is_decayed
            (decay if is_decayed else no_decay)[full_name] = param
    return WeightDecayGroups(decay=decay, no_decay=no_decay)


def make_optimizer(
    model: nn.Module,
    training: TrainingConfig,
    component: ComponentTrainingConfig,
    options: Mapping[str, Any] | None = None,
) -> torch.optim.Optimizer:
    """The optimiser ``component.optimizer`` names, over ``model``'s trainable parameters.

    Frozen parameters (the actor-critic's target network) are left out: they never get a gradient.
    ``options``: implementation choices that leave the update unchanged (``fused=True`` on CUDA,
    from :func:`iris_core.models.runtime.optimizer_options`).
    """
    extra = dict(options or {})
    if component.optimizer == "adam":
        params = [p for p in model.parameters() if p.requires_grad]
        return torch.optim.Adam(
            params, lr=training.learning_rate, betas=training.adam_betas, eps=training.adam_eps, **extra
        )
    if component.optimizer == "adamw":
        groups = split_weight_decay(model)
        return torch.optim.AdamW(
            [
                {"params": list(groups.decay.values()), "weight_decay": component.weight_decay},
                {"params": list(groups.no_decay.values()), "weight_decay": 0.0},
            ],
            lr=training.learning_rate,
            betas=training.adam_betas,
            eps=training.adam_eps,
            **extra,
        )
    raise ValueError(f"unknown optimizer {component.optimizer!r} (expected 'adam' or 'adamw')")
