"""Batched EoT for APGD-CE: k samples in one forward, the same loss and gradient as a loop.

pyautoattack's APGD with ``eot_iter=k`` runs k forward/backward passes per step and
averages the gradients of the summed cross-entropy. ``EoTCrossEntropy(model, k, y)``
folds the k samples into the batch (forwards of at most ``max_batch`` rows, as
``lwta_zoo.sampling.folded_forward`` cuts them) and returns logits o that agree with the mean
logits except for the label's entry, chosen so that CE(o, y) = mean_i CE(z_i, y) exactly,
as a function of the input: one backward then gives the loop's mean gradient.
(Label's logit: o_y = logsumexp_{c != y} o_c - log(expm1(T)), T the mean cross-entropy.)
Exact for cross-entropy with these labels only; APGD's accuracy check then asks whether
the mean cross-entropy is below that of a coin flip against the best other class, not
whether one sample is right.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from lwta_zoo.sampling import check_samples, folded_forward


class EoTCrossEntropy(nn.Module):
    """Logits whose cross-entropy with ``labels`` is the mean over ``samples`` draws of ``model``."""

    def __init__(self, model: nn.Module, samples: int, labels: torch.Tensor, max_batch: Optional[int] = None):
        super().__init__()
        check_samples(samples)
        self.model, self.samples, self.labels, self.max_batch = model, samples, labels, max_batch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(x) != len(self.labels):
            raise ValueError(f'EoTCrossEntropy holds {len(self.labels)} labels, got a batch of {len(x)}')
        k, y = self.samples, self.labels[:, None]
        z = folded_forward(self.model, x, k, self.max_batch)
        ce = F.cross_entropy(z, self.labels.repeat(k), reduction='none').unflatten(0, (k, len(x))).mean(0)
        ce = ce.clamp_min(1e-7)  # o_y below is finite only for a positive loss
        others = z.unflatten(0, (k, len(x))).mean(0).scatter(1, y, float('-inf'))
        label_logit = others.logsumexp(1) - (ce + torch.log(-torch.expm1(-ce)))  # log(expm1(ce)), stably
        return others.scatter(1, y, label_logit[:, None])
