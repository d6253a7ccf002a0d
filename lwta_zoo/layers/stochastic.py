"""What every stochastic layer of the zoo shares: one mode switch and one KL collection."""
from __future__ import annotations

from typing import Iterator, Union

import torch
import torch.nn as nn

from .ibp import IBPMask
from .lwta import LWTA, MODES

StochasticLayer = Union[LWTA, IBPMask]


def stochastic_modules(model: nn.Module) -> Iterator[StochasticLayer]:
    """Every LWTA activation and IBP mask in ``model``."""
    return (m for m in model.modules() if isinstance(m, (LWTA, IBPMask)))


def set_mode(model: nn.Module, mode: str) -> nn.Module:
    """Switch every stochastic layer (LWTA and IBP) of ``model`` to 'sample', 'max' or 'mean'."""
    if mode not in MODES:
        raise ValueError(f'mode must be one of {MODES}, got {mode!r}')
    for m in stochastic_modules(model):
        m.mode = mode
    return model


def kl_divergence(model: nn.Module) -> torch.Tensor:
    """Sum of the KL terms every stochastic layer recorded in the last training forward."""
    terms = [m.kl for m in stochastic_modules(model) if m.kl is not None]
    if not terms:
        device = next(model.parameters(), torch.empty(0)).device
        return torch.zeros((), device=device)
    return torch.stack(terms).sum()
