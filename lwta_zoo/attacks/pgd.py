"""L-infinity PGD (Madry et al.) with a choice of the gradient it follows.

A stochastic model's own gradient is noisy; an attacker may instead follow
(docs/evaluating.md, "The attacks"):

* ``'model'``: the model as it is (the papers' protocol: one sampled forward per step);
* ``'mean'`` / ``'max'``: the smooth expected-output surrogate / deterministic LWTA-max;
* ``'ste'``: exact samples forward, softmax gradients backward (straight-through);
* ``'eot'``: the mean gradient of ``eot_samples`` sampled forwards, folded into one batch.

FGSM is ``pgd(..., steps=1, step_size=eps, random_start=False)``; N-FGSM (de Jorge et al. 2022), a
single-step training attack that avoids catastrophic overfitting, is ``pgd(..., steps=1,
step_size=eps, init_scale=2, project=False)``: noise from twice the ball, and no projection back.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..layers.ibp import independent_copies
from ..layers.lwta import LWTA
from ..layers.stochastic import stochastic_modules
from ..sampling import fold_plan, repeat_batch

GRADIENTS = ('model', 'mean', 'max', 'ste', 'eot')
Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@contextmanager
def gradient_surrogate(model: nn.Module, gradient: str) -> Iterator[None]:
    """Temporarily put every stochastic layer of ``model`` in the state ``gradient`` asks for.

    'mean' / 'max' switch LWTA activations and IBP masks alike; 'ste' applies to LWTA.
    """
    if gradient not in GRADIENTS:
        raise ValueError(f'gradient must be one of {GRADIENTS}, got {gradient!r}')
    layers = list(stochastic_modules(model))
    saved = [(m.mode, getattr(m, 'straight_through', False)) for m in layers]
    for m in layers:
        if gradient in ('mean', 'max'):
            m.mode = gradient
        if isinstance(m, LWTA):
            m.straight_through = gradient == 'ste'
    try:
        yield
    finally:
        for m, (mode, st) in zip(layers, saved):
            m.mode = mode
            if isinstance(m, LWTA):
                m.straight_through = st


@contextmanager
def frozen_parameters(model: nn.Module) -> Iterator[None]:
    """Parameters out of autograd while attacks run: backward passes (CW's, FAB's) then skip the
    weight gradients they would compute and leave in ``.grad``, about a quarter of a conv net's attack step;
    input gradients are unchanged. Restores each parameter's ``requires_grad``."""
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def input_gradient(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: Loss = F.cross_entropy, eot_samples: int = 1,
    max_batch: Optional[int] = None,
) -> torch.Tensor:
    """Gradient of the mean loss w.r.t. ``x``, averaged over ``eot_samples`` draws folded into the batch.

    The draws run in forwards of at most ``max_batch`` rows (``lwta_zoo.sampling.fold_plan``;
    default: the model's own ``max_batch``), each differentiated before the next, so memory is
    that of one such forward. ``loss_fn`` must average over the batch (as cross-entropy does):
    each forward's loss is weighted by its share of the draws.
    """
    x = x.detach().requires_grad_(True)
    grad = torch.zeros_like(x)
    with independent_copies(len(x)):  # every draw its own IBP masks, not one shared architecture
        for copies in fold_plan(len(x), eot_samples, max_batch or getattr(model, 'max_batch', None), x.device.type):
            loss = loss_fn(model(repeat_batch(x, copies)), repeat_batch(y, copies)) * (copies / eot_samples)
            grad += torch.autograd.grad(loss, x)[0]
    return grad


def pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    step_size: float,
    steps: int,
    *,
    random_start: bool = True,
    init_scale: float = 1.0,
    project: bool = True,
    gradient: str = 'model',
    eot_samples: int = 20,
    loss_fn: Loss = F.cross_entropy,
    generator: Optional[torch.Generator] = None,
    callback: Optional[Callable[[torch.Tensor], None]] = None,
    max_batch: Optional[int] = None,
) -> torch.Tensor:
    """L-inf PGD from ``x`` (in [0, 1]); returns adversarial inputs inside the eps-ball and [0, 1].

    The random start is uniform in the ball of ``init_scale * eps``; ``project=False`` keeps the
    iterates in [0, 1] only, not in the eps-ball (N-FGSM's training attack; see the module docstring).
    The model is attacked in whatever train/eval state it is in. ``eot_samples`` is used
    only with ``gradient='eot'`` (its draws fold into forwards of at most ``max_batch`` rows), and
    not for a deterministic model in eval mode, whose draws would all be the same.
    ``callback`` sees the detached iterate after every step.
    """
    if eps < 0 or step_size <= 0 or steps < 1 or init_scale < 0:
        raise ValueError(f'need eps >= 0, step_size > 0, steps >= 1, init_scale >= 0; got {eps}, {step_size}, '
                         f'{steps}, {init_scale}')
    x = x.detach()
    delta = torch.zeros_like(x)
    if random_start:
        delta = (torch.rand(x.shape, generator=generator, device=x.device) * 2 - 1) * (init_scale * eps)
    x_adv = (x + delta).clamp(0, 1)
    # EoT draws of a model with nothing random in it (no stochastic layer, eval mode) are one gradient
    deterministic = not model.training and next(stochastic_modules(model), None) is None
    k = eot_samples if gradient == 'eot' and not deterministic else 1
    with gradient_surrogate(model, gradient), torch.enable_grad():
        for _ in range(steps):
            grad = input_gradient(model, x_adv, y, loss_fn, k, max_batch)
            x_adv = x_adv + step_size * grad.sign()
            if project:
                x_adv = torch.min(torch.max(x_adv, x - eps), x + eps)
            x_adv = x_adv.clamp(0, 1)
            if callback is not None:
                callback(x_adv.detach())
    return x_adv.detach()
