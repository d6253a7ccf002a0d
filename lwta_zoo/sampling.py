"""L-sample prediction: average the outputs of L draws of q(xi) (the WRN paper's eq. 10).

The L samples are folded into the batch dimension, so one forward of L*N examples
replaces a Python loop of L forwards (BatchNorm in eval mode is per example, so the
folded batch gives the same distribution). L=1 is a plain forward. The folded batch is
cut into forwards of at most ``max_batch`` rows (whole copies of the input, at least one),
which bounds the memory that L or EoT samples take; ``fold_plan`` says how, and the
attacks' EoT gradients (``lwta_zoo.attacks.pgd.input_gradient``) fold the same way.
"""
from __future__ import annotations

from typing import Callable, List, Optional

import torch
import torch.nn as nn

from .layers.ibp import independent_copies

AVERAGES = ('logits', 'probs')
MAX_BATCH = {'cpu': 128, 'cuda': 256}
"""Default cap on the rows of one folded forward, by device type (256 elsewhere). CPU: on a
2-core machine, L=20 prediction of a WRN-34-1 at batch 16 took 0.48 s in forwards of 128 rows
against 0.77 s in one forward of 320 (``benchmarks.run``, section 3; the output is committed in
benchmarks/). CUDA: a conservative cap for gradients of large models (not measured here);
raise it where memory allows."""


def check_samples(samples: int, average: str = 'logits') -> None:
    """Validate a sample count and an averaging rule."""
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f'samples must be a positive integer, got {samples!r}')
    if average not in AVERAGES:
        raise ValueError(f'average must be one of {AVERAGES}, got {average!r}')


def check_max_batch(max_batch: Optional[int]) -> None:
    """Validate a cap on the rows of one folded forward (None: the device's ``MAX_BATCH``)."""
    if max_batch is not None and (isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1):
        raise ValueError(f'max_batch must be a positive integer or None, got {max_batch!r}')


def fold_plan(batch: int, samples: int, max_batch: Optional[int] = None, device: str = 'cpu') -> List[int]:
    """How many copies of a batch of ``batch`` rows each folded forward holds.

    Whole copies, as many as fit in ``max_batch`` rows (if None, ``MAX_BATCH`` of the
    ``device`` type) and at least one; the counts add up to ``samples``.
    """
    check_samples(samples)
    check_max_batch(max_batch)
    per_forward = max(1, (max_batch or MAX_BATCH.get(device, 256)) // max(batch, 1))
    return [min(per_forward, samples - done) for done in range(0, samples, per_forward)]


def repeat_batch(x: torch.Tensor, copies: int) -> torch.Tensor:
    """``copies`` copies of ``x`` stacked along the batch dimension (copy l is rows l*N .. l*N + N-1)."""
    return x.repeat(copies, *([1] * (x.dim() - 1))) if copies > 1 else x


def folded_forward(
    forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, samples: int, max_batch: Optional[int] = None,
) -> torch.Tensor:
    """``forward`` on L copies of ``x`` folded into the batch, in forwards of whole copies of at
    most ``max_batch`` rows (``fold_plan``); the outputs stacked copy by copy, (L*N, ...). Every
    copy draws its own IBP masks (``independent_copies``), as L separate forwards would."""
    plan = fold_plan(len(x), samples, max_batch, x.device.type)
    with independent_copies(len(x)):
        return torch.cat([forward(repeat_batch(x, copies)) for copies in plan])


def sample_average(
    forward: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    samples: int,
    average: str = 'logits',
    max_batch: Optional[int] = None,
) -> torch.Tensor:
    """Run ``forward`` on L copies of ``x`` folded into the batch and average the L outputs.

    ``average='logits'`` returns the mean logits (eq. 10); ``'probs'`` returns the log of
    the mean softmax probabilities, so the result still works with ``cross_entropy``.
    ``forward`` sees batches of whole copies of ``x``, at most ``max_batch`` rows each
    (``folded_forward``).
    """
    if samples == 1 or len(x) == 0:  # an empty batch has no samples to average
        return forward(x)
    out = folded_forward(forward, x, samples, max_batch).unflatten(0, (samples, x.shape[0]))
    if average == 'logits':
        return out.mean(0)
    return out.log_softmax(-1).logsumexp(0) - torch.log(torch.tensor(float(samples), device=out.device))


class MultiSample(nn.Module):
    """Wrap any (converted) model so that, in eval mode, it predicts with L samples."""

    def __init__(self, model: nn.Module, samples: int = 1, average: str = 'logits', max_batch: Optional[int] = None):
        super().__init__()
        check_samples(samples, average)
        check_max_batch(max_batch)
        self.model, self.num_samples, self.sample_average, self.max_batch = model, samples, average, max_batch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        L = 1 if self.training else self.num_samples
        return sample_average(self.model, x, L, self.sample_average, self.max_batch)


def set_samples(model: nn.Module, samples: int, average: Optional[str] = None,
                max_batch: Optional[int] = None) -> nn.Module:
    """Set the number of prediction samples L on ``model``, and optionally the averaging rule and
    the cap on rows per folded forward (``max_batch``; see ``fold_plan``)."""
    check_samples(samples, average or 'logits')
    check_max_batch(max_batch)
    targets = [m for m in model.modules() if hasattr(m, 'num_samples')]
    if not targets:
        raise TypeError(
            f'{type(model).__name__} has no sample count: wrap it as lwta_zoo.MultiSample(model, samples={samples})')
    outermost = targets[0]  # the outermost one decides; setting inner ones too would multiply L
    outermost.num_samples = samples
    if average is not None:
        outermost.sample_average = average
    if max_batch is not None:
        outermost.max_batch = max_batch
    return model
