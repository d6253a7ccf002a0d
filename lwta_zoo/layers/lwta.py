"""Stochastic Local Winner-Takes-All (LWTA) activation.

Channels are grouped in blocks of U *adjacent* units: a dense input (N, C) is viewed as
(N, C/U, U) and a conv input (N, C, H, W) as (N, C/U, U, H, W), so competition is
position-wise among U feature maps. In each block one winner passes its linear response
and the others output zero; the winner is drawn from softmax of the block's responses
(the WRN paper's eqs. 1-5). The shape is unchanged, so LWTA replaces ReLU one for one.

Modes (see ``MODES``):

* ``sample``: the stochastic model. Training draws the Gumbel-softmax (concrete)
  relaxation at temperature ``tau`` (hard straight-through one-hot with ``hard=True``);
  evaluation draws exact one-hot samples, unless ``eval_tau`` asks for the authors'
  soft relaxation at test time (their code uses 0.01; needed to reproduce their protocol).
* ``max``: deterministic LWTA-max (the AISTATS paper's baseline): the largest unit wins.
* ``mean``: the expected output ``h * softmax(h)``, a smooth surrogate for adaptive attacks.

A NaN input surfaces as ReLU's does, the same way in every mode and on every path (eager,
fused, BatchNorm fused): a block with a NaN unit outputs NaN in all its units.

KL of the winners (``kl``), recorded after each training-mode 'sample' forward:

* ``closed`` (default): KL[q(xi) || Categorical(1/U)] of the categorical winners in closed form.
* ``relaxed``: the papers' one-sample estimate log q(xi^) - log p(xi^) (WRN paper eqs. 8-9)
  between relaxed distributions: the posterior concrete at ``tau`` (the forward's own sample
  xi^) and a uniform-logit concrete prior at ``prior_tau`` (the AISTATS paper: 0.67 and 0.5).
  Its mean is KL[Concrete(q, tau) || Concrete(1/U, prior_tau)], which is not the categorical
  KL (at q uniform it is not 0 unless the temperatures agree; it can be negative per draw).
  It runs on the eager path.

Sampling (U up to ``lwta_fast.max_units()``, hard samples included) runs the fused
kernels of ``lwta_fast`` (one pass, noise from a counter-based generator, backward from a
uint8 winner index or the regenerated noise): C kernels for float32 and bfloat16 CPU
tensors, Triton kernels for float32, float16 and bfloat16 CUDA tensors where Triton is
installed, contiguous or channels_last. The attacks' ``straight_through`` samples, other
devices, dtypes and layouts, and machines without the kernels (no C compiler, no Triton)
run the eager code below, which is also the reference the fused path is tested against.
"""
from __future__ import annotations

import math
from typing import Iterator, Optional

import torch
import torch.nn as nn
from torch.distributions.relaxed_categorical import ExpRelaxedCategorical

from . import lwta_fast

MODES = ('sample', 'max', 'mean')
KL_FORMS = ('closed', 'relaxed')


def _blocks(x: torch.Tensor, U: int, name: str) -> torch.Tensor:
    """View (N, C, *S) as (N, C/U, U, *S), with an error that names the layer."""
    if not x.is_floating_point():
        raise TypeError(f'{name}: expected a floating-point input, got {x.dtype} (convert it with x.float())')
    if x.dim() < 2:
        raise ValueError(f'{name}: expected input of shape (N, C) or (N, C, H, W), got {tuple(x.shape)}')
    C = x.shape[1]
    if C % U:
        raise ValueError(f'{name}: {C} channels are not divisible by U={U} competing units')
    return x.unflatten(1, (C // U, U))


def _one_hot_max(scores: torch.Tensor) -> torch.Tensor:
    """One-hot mask of the largest entry along dim 2 (the unit axis)."""
    return torch.zeros_like(scores).scatter_(2, scores.argmax(2, keepdim=True), 1.0)


def _fused(x: torch.Tensor, U: int, straight_through: bool) -> bool:
    """Whether sampling this call runs on the fused kernels (the attacks' straight-through samples stay eager)."""
    return not straight_through and lwta_fast.supports(x, U)


def _concrete_log_sample(h: torch.Tensor, tau: float) -> torch.Tensor:
    """log of a concrete sample along dim 2: log softmax((log softmax(h) + g) / tau) == log softmax((h + g) / tau)."""
    gumbel = -torch.empty_like(h).exponential_().log()
    return ((h + gumbel) / tau).log_softmax(2)


def lwta(
    x: torch.Tensor,
    U: int = 2,
    mode: str = 'sample',
    training: bool = False,
    tau: float = 0.67,
    hard: bool = False,
    eval_tau: Optional[float] = None,
    name: str = 'LWTA',
    straight_through: bool = False,
    inplace: bool = False,
    log_sample: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Functional LWTA over blocks of U adjacent channels; see the module docstring.

    ``straight_through`` keeps the sample's forward value but differentiates it as softmax(h)
    (a straight-through estimator, for attacks that differentiate the sampled model), whether
    the sample is exact or relaxed (``eval_tau``, training). ``inplace`` lets an exact sample
    that needs no gradient overwrite ``x`` on the fused path, as ``relu_`` does. ``log_sample``:
    the log of a relaxed sample (N, C/U, U, *S) the caller drew (the relaxed KL scores it), used
    in place of a fresh one in a relaxed 'sample' call.
    """
    h = _blocks(x, U, name)
    if mode == 'max':
        xi = _one_hot_max(h)
    elif mode == 'mean':
        xi = h.softmax(2)
    elif mode != 'sample':
        raise ValueError(f'{name}: mode must be one of {MODES}, got {mode!r}')
    elif log_sample is None and _fused(x, U, straight_through):
        if not training and eval_tau is None:
            in_place = inplace and not (torch.is_grad_enabled() and x.requires_grad)
            return lwta_fast.sample_(x, U=U) if in_place else lwta_fast.sample(x, U=U)
        return lwta_fast.relaxed(x, tau if training else eval_tau, U=U, hard=hard and training)[0]
    elif training or eval_tau is not None:
        xi = (log_sample if log_sample is not None else _concrete_log_sample(h, tau if training else eval_tau)).exp()
        if hard and training:
            xi = _one_hot_max(xi) - xi.detach() + xi
        elif straight_through:
            xi = xi.detach()
    else:
        # Exact categorical sample: argmax of h + Gumbel noise. For U=2 this is one
        # comparison of h1 - h2 against logistic noise (one uniform draw per block).
        with torch.no_grad():
            if U == 2:
                u = torch.rand_like(h[:, :, 0])
                first = (h[:, :, 0] - h[:, :, 1]) > (u.log() - torch.log1p(-u))
                xi = torch.stack((first, ~first), 2).to(h.dtype)
            else:
                xi = _one_hot_max(h - torch.empty_like(h).exponential_().log())
    if mode == 'sample' and straight_through:
        p = h.softmax(2)
        xi = xi + p - p.detach()
    if mode == 'max' or not (training or eval_tau is not None or mode == 'mean'):  # one-hot: no softmax carries NaN
        xi = xi.masked_fill(h.isnan().any(2, keepdim=True), math.nan)
    return (h * xi).flatten(1, 2)


def lwta_kl(x: torch.Tensor, U: int = 2, name: str = 'LWTA') -> torch.Tensor:
    """KL[q(xi) || Categorical(1/U)] summed over blocks (and positions), mean over the batch.

    Computed in closed form, sum_u q_u (log q_u + log U): the expectation of the paper's
    one-sample estimate (eq. 8), with no sampling variance.
    """
    log_q = _blocks(x, U, name).float().log_softmax(2)
    kl = (log_q.exp() * (log_q + math.log(U))).sum(2)
    return kl.flatten(1).sum(1).mean()


def lwta_relaxed_kl(x: torch.Tensor, log_sample: torch.Tensor, U: int = 2, tau: float = 0.67,
                    prior_tau: float = 0.5, name: str = 'LWTA') -> torch.Tensor:
    """The one-sample estimate log q(xi^) - log p(xi^) summed over blocks (and positions), mean over the batch.

    q = Concrete(softmax(h), tau) for the blocks h of ``x``, p = Concrete(1/U, prior_tau), scored at the
    sample whose log is ``log_sample`` (N, C/U, U, *S) (log densities of the log-space concrete, whose
    ratio equals the concrete's). An unbiased estimate of KL[q || p] between the relaxed distributions.
    """
    h = _blocks(x, U, name).float().movedim(2, -1)
    value = log_sample.float().movedim(2, -1)
    q = ExpRelaxedCategorical(torch.tensor(tau), logits=h, validate_args=False)
    p = ExpRelaxedCategorical(torch.tensor(prior_tau), logits=torch.zeros_like(h), validate_args=False)
    return (q.log_prob(value) - p.log_prob(value)).flatten(1).sum(1).mean()


class LWTA(nn.Module):
    """Stochastic LWTA activation, a drop-in replacement for ReLU (see module docstring).

    Args:
        U: competing units per block (>= 2); must divide the channel count.
        tau: temperature of the training-time concrete relaxation (0.67 in the papers).
        hard: straight-through hard samples in training.
        mode: 'sample' | 'max' | 'mean'.
        eval_tau: if set, evaluation draws the soft relaxation at this temperature
            (the authors' code, 0.01) instead of exact one-hot samples.
        inplace: as ReLU's: exact samples that need no gradient (inference) overwrite the
            input on the fused path instead of filling a fresh tensor.
        kl: 'closed' (the categorical KL in closed form) or 'relaxed' (the papers' one-sample
            estimate between relaxed posterior and prior; see the module docstring).
        prior_tau: temperature of the relaxed prior (``kl='relaxed'`` only; 0.5 in the AISTATS paper).

    After a training-mode forward, ``kl`` holds the KL of q(xi) to the uniform prior.
    """

    def __init__(
        self,
        inplace: bool = False,
        U: int = 2,
        tau: float = 0.67,
        hard: bool = False,
        mode: str = 'sample',
        eval_tau: Optional[float] = None,
        kl: str = 'closed',
        prior_tau: float = 0.5,
    ):
        super().__init__()
        if isinstance(U, bool) or not isinstance(U, int) or U < 2:
            raise ValueError(f'LWTA needs U >= 2 competing units per block, got U={U!r}')
        if not (tau > 0 and prior_tau > 0) or (eval_tau is not None and not eval_tau > 0):
            raise ValueError(f'LWTA temperatures must be positive, got tau={tau}, prior_tau={prior_tau}, '
                             f'eval_tau={eval_tau}')
        if kl not in KL_FORMS:
            raise ValueError(f'LWTA kl must be one of {KL_FORMS}, got {kl!r}')
        if mode not in MODES:
            raise ValueError(f'LWTA mode must be one of {MODES}, got {mode!r}')
        self.U, self.tau, self.hard, self.mode, self.eval_tau, self.inplace = U, tau, hard, mode, eval_tau, inplace
        self.kl_form, self.prior_tau = kl, prior_tau
        self.layer_name = 'LWTA'  # set to the module path by convert() and the model builders
        self.kl: Optional[torch.Tensor] = None
        self.accumulate_kl = False  # set where a root-level hook resets kl before each forward
        self.straight_through = False  # eval samples pass softmax gradients (set by attacks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.mode == 'sample':
            if self.kl_form == 'relaxed':  # one relaxed sample drives the output and scores the KL
                log_sample = _concrete_log_sample(_blocks(x, self.U, self.layer_name), self.tau)
                self._record_kl(lwta_relaxed_kl(x, log_sample, self.U, self.tau, self.prior_tau, self.layer_name))
                return lwta(x, self.U, self.mode, True, self.tau, self.hard, None, self.layer_name,
                            self.straight_through, log_sample=log_sample)
            if _fused(x, self.U, self.straight_through):
                _blocks(x, self.U, self.layer_name)  # the shape checks
                y, kl = lwta_fast.relaxed(x, self.tau, want_kl=True, U=self.U, hard=self.hard)
                self._record_kl(kl)
                return y
            self._record_kl(lwta_kl(x, self.U, self.layer_name))
        return lwta(x, self.U, self.mode, self.training, self.tau, self.hard, self.eval_tau, self.layer_name,
                    self.straight_through, self.inplace)

    def _record_kl(self, kl: torch.Tensor) -> None:
        self.kl = kl if not (self.accumulate_kl and self.kl is not None) else self.kl + kl

    def extra_repr(self) -> str:
        extra = (f', eval_tau={self.eval_tau}' if self.eval_tau is not None else '') + (
            ', inplace=True' if self.inplace else '') + (
            f", kl='relaxed', prior_tau={self.prior_tau}" if self.kl_form == 'relaxed' else '')
        return f'U={self.U}, tau={self.tau}, hard={self.hard}, mode={self.mode!r}{extra}'


def lwta_modules(model: nn.Module) -> Iterator[LWTA]:
    """Every LWTA module in ``model``."""
    return (m for m in model.modules() if isinstance(m, LWTA))


def _reset_kl(model: nn.Module, args) -> None:
    for m in lwta_modules(model):
        m.kl = None


def track_kl(model: nn.Module) -> nn.Module:
    """Name each LWTA module by its path and make its KL cover one whole forward of ``model``.

    A module called several times in one forward (torchvision's ResNet reuses one ReLU)
    then sums its KL over the calls; a pre-hook on ``model`` clears it before each forward.
    """
    for path, m in model.named_modules():
        if isinstance(m, LWTA):
            m.layer_name = f'LWTA at {path!r}' if path else 'LWTA'
            m.accumulate_kl = True
    if not getattr(model, '_lwta_kl_hook', False):
        model.register_forward_pre_hook(_reset_kl)
        model._lwta_kl_hook = True
    return model
