"""Weight initialisation shared by the tokenizer and the world model.

The reference initialises every ``Linear`` and ``Embedding`` weight from N(0, 0.02²) with zero
biases (the minGPT convention) and resets LayerNorms to the identity; convolutions keep PyTorch's
default initialisation.
"""

from __future__ import annotations

from torch import nn

LINEAR_INIT_STD = 0.02


def init_weights(module: nn.Module) -> None:
    """Initialise one module in place; use as ``model.apply(init_weights)``."""
    if isinstance(module, nn.Linear | nn.Embedding):
        nn.init.normal_(module.weight, mean=0.0, std=LINEAR_INIT_STD)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
