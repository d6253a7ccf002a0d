"""Carlini-Wagner L2 (untargeted) and the Blind-Spot Attack, the AISTATS paper's protocol.

CW (Carlini & Wagner 2017) minimises ``||x' - x||^2 + c * max(Z_y - max_{i!=y} Z_i + kappa, 0)``
over x' = (tanh(w) + 1) / 2 with Adam, and binary-searches c per example. The defaults are
cleverhans' ``CarliniWagnerL2``, which the AISTATS paper's protocol (Verma & Swami 2019)
used with learning rate 1e-3 and 10 binary-search steps. The attack is unbounded: it
returns the smallest adversarial input it found, or ``x`` itself where it found none.

The Blind-Spot Attack (Zhang et al. 2019) runs CW from the scaled input. Verma & Swami's
code scales images centred on zero (pixels in [-0.5, 0.5]), i.e. ``alpha * (x - 0.5) + 0.5``
here, which is what ``blind_spot`` does.

On a stochastic model CW's stopping rule trusts one sampled forward: it keeps the first input that
sampling noise alone misclassifies once, often a hair from ``x``, which fresh predictions then
classify correctly. ``gradient='mean'`` (the suite's adaptive ``cw_mean``) runs CW on the
deterministic expected-output surrogate instead (``lwta_zoo.attacks.pgd.gradient_surrogate``), so
both its gradient and its success test are noise-free.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .pgd import gradient_surrogate


def cw_l2(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    steps: int = 1000,
    binary_search_steps: int = 10,
    lr: float = 1e-3,
    initial_const: float = 1e-2,
    confidence: float = 0.0,
    abort_early: bool = True,
    gradient: str = 'model',
) -> torch.Tensor:
    """Untargeted CW-L2 on inputs in [0, 1]; returns the smallest-L2 adversarial per example (or x).

    ``gradient``: the model as it is, or its 'mean' / 'max' / 'ste' surrogate (see ``pgd``), for
    both the gradient and the success test; 'eot' is refused (one success test needs one forward).
    """
    if gradient == 'eot':
        raise ValueError("cw_l2 takes gradient 'model', 'mean', 'max' or 'ste', not 'eot'")
    if steps < 1 or binary_search_steps < 1 or lr <= 0 or initial_const <= 0:
        raise ValueError(f'need steps, binary_search_steps >= 1 and lr, initial_const > 0; got '
                         f'{steps}, {binary_search_steps}, {lr}, {initial_const}')
    x = x.detach()
    n = x.shape[0]
    w0 = torch.atanh((x * 2 - 1).clamp(-1 + 1e-6, 1 - 1e-6))
    const = torch.full((n,), float(initial_const), device=x.device)
    lower, upper = torch.zeros_like(const), torch.full_like(const, math.inf)
    best, best_l2 = x.clone(), torch.full_like(const, math.inf)
    check_every = max(steps // 10, 1)
    one_hot = None
    with torch.enable_grad(), gradient_surrogate(model, gradient):
        for _ in range(binary_search_steps):
            w = w0.clone().requires_grad_(True)
            optimizer = torch.optim.Adam([w], lr=lr)
            found = torch.zeros(n, dtype=torch.bool, device=x.device)
            previous = math.inf
            for step in range(steps):
                x_adv = (torch.tanh(w) + 1) / 2
                logits = model(x_adv)
                if one_hot is None:
                    one_hot = F.one_hot(y, logits.shape[1]).bool()
                real = logits[one_hot]
                other = logits.masked_fill(one_hot, -math.inf).amax(1)
                l2 = (x_adv - x).flatten(1).pow(2).sum(1)
                loss = (l2 + const * (real - other + confidence).clamp(min=0)).sum()
                optimizer.zero_grad()
                loss.backward(inputs=[w])  # not into the model's parameters
                optimizer.step()
                with torch.no_grad():
                    success = real + confidence < other
                    better = success & (l2 < best_l2)
                    best_l2 = torch.where(better, l2, best_l2)
                    best = torch.where(better.view(-1, *[1] * (x.dim() - 1)), x_adv, best)
                    found |= success
                if abort_early and step % check_every == 0:
                    if loss.item() > previous * 0.9999:
                        break
                    previous = loss.item()
            upper = torch.where(found, torch.minimum(upper, const), upper)
            lower = torch.where(found, lower, torch.maximum(lower, const))
            const = torch.where(upper < math.inf, (lower + upper) / 2, const * 10)
    return best


def blind_spot(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, alpha: float = 0.8, **cw_kwargs) -> torch.Tensor:
    """Blind-Spot Attack: CW-L2 started from the input scaled by ``alpha`` around mid-grey."""
    if not 0 < alpha <= 1:
        raise ValueError(f'blind-spot alpha must be in (0, 1], got {alpha}')
    return cw_l2(model, alpha * (x - 0.5) + 0.5, y, **cw_kwargs)
