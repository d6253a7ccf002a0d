"""A straightforward stochastic LWTA, written from the WRN paper's equations, as a yardstick.

Blocks of U adjacent channels; winner probabilities q = softmax(h) over the block.
Test time: xi ~ Categorical(q) (one-hot). Training: the concrete relaxation
xi = softmax((log q + G) / tau), G = -log(-log V), V ~ U(0, 1). Output h * xi.
KL[q || Categorical(1/U)] = sum_u q_u log(q_u U) per block, summed per example, mean over the batch.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from lwta_zoo.layers import LWTA


class ReferenceLWTA(nn.Module):
    """The paper's equations in plain PyTorch ops, one tensor per step."""

    def __init__(self, U: int = 2, tau: float = 0.67):
        super().__init__()
        self.U, self.tau = U, tau
        self.kl = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.unflatten(1, (x.shape[1] // self.U, self.U))
        q = h.softmax(2)
        if self.training:
            gumbel = -torch.log(-torch.log(torch.rand_like(h)))
            xi = ((q.log() + gumbel) / self.tau).softmax(2)
            self.kl = (q * (q.log() + math.log(self.U))).sum(2).flatten(1).sum(1).mean()
        else:
            winner = torch.distributions.Categorical(probs=q.movedim(2, -1)).sample()
            xi = F.one_hot(winner, self.U).movedim(-1, 2).to(h.dtype)
        return (h * xi).flatten(1, 2)


def to_reference(model: nn.Module) -> nn.Module:
    """Replace every LWTA module of ``model`` (in place) by a ReferenceLWTA with the same U and tau."""
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if isinstance(child, LWTA):
                setattr(parent, name, ReferenceLWTA(child.U, child.tau))
    return model
