"""L-sample prediction: average the outputs of L draws of q(xi) (the WRN paper's eq. 10).

The L samples are folded into the batch dimension, so one forward of L*N examples
replaces a Python loop of L forwards (BatchNorm in eval mode is per example, so the
folded batch gives the same distribution). L=1 is a plain forward.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn

AVERAGES = ('logits', 'probs')


def check_samples(samples: int, average: str = 'logits') -> None:
    """Validate a sample count and an averaging rule."""
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f'samples must be a positive integer, got {samples!r}')
    if average not in AVERAGES:
        raise ValueError(f'average must be one of {AVERAGES}, got {average!r}')


def sample_average(
    forward: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    samples: int,
    average: str = 'logits',
) -> torch.Tensor:
    """Run ``forward`` on L copies of ``x`` in one batch and average the L outputs.

    ``average='logits'`` returns the mean logits (eq. 10); ``'probs'`` returns the log of
    the mean softmax probabilities, so the result still works with ``cross_entropy``.
    """
    if samples == 1:
        return forward(x)
    out = forward(x.repeat(samples, *([1] * (x.dim() - 1))))
    out = out.unflatten(0, (samples, x.shape[0]))
    if average == 'logits':
        return out.mean(0)
    return out.log_softmax(-1).logsumexp(0) - torch.log(torch.tensor(float(samples), device=out.device))


class MultiSample(nn.Module):
    """Wrap any (converted) model so that, in eval mode, it predicts with L samples."""

    def __init__(self, model: nn.Module, samples: int = 1, average: str = 'logits'):
        super().__init__()
        check_samples(samples, average)
        self.model, self.num_samples, self.sample_average = model, samples, average

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        L = 1 if self.training else self.num_samples
        return sample_average(self.model, x, L, self.sample_average)


def set_samples(model: nn.Module, samples: int, average: str | None = None) -> nn.Module:
    """Set the number of prediction samples L (and optionally the averaging rule) on ``model``."""
    check_samples(samples, average or 'logits')
    targets = [m for m in model.modules() if hasattr(m, 'num_samples')]
    if not targets:
        raise TypeError(
            f'{type(model).__name__} has no sample count: wrap it as lwta_zoo.MultiSample(model, samples={samples})')
    outermost = targets[0]  # the outermost one decides; setting inner ones too would multiply L
    outermost.num_samples = samples
    if average is not None:
        outermost.sample_average = average
    return model
