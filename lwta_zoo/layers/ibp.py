"""Indian Buffet Process (IBP) architecture sampling (the AISTATS paper, sections 2.1, 3, 3.1).

Binary latent variables z switch parts of a layer on or off:

* dense layers (``IBPLinear``): one z per *connection* from input j to block k, Z in {0,1}^(J x K);
* conv layers (``IBPConv2d``): one z per *kernel* k (a whole block of U feature maps, bias included).

A block is the U adjacent output units an LWTA activation lets compete (U=1 without LWTA),
so one z covers the U weights of a connection (dense) or the U kernels of a block (conv).

Prior (stick-breaking IBP): u_k ~ Beta(alpha, 1), pi_k = prod_{i<=k} u_i, z_jk ~ Bernoulli(pi_k).
Posterior: q(u_k) = Kumaraswamy(a_k, b_k) (reparameterised, initialised to a=K, b=1 as the paper
states), q(z) = Bernoulli(pi~) with free probabilities pi~.

* Training: z is drawn from the relaxed Bernoulli (binary concrete) at temperature ``tau``
  (0.67); the KL of z is the one-sample estimate log q(y) - log p(y) between the relaxed
  posterior and the relaxed prior at temperature ``prior_tau`` (0.5), with pi from one
  reparameterised draw of the sticks (Maddison et al. 2017, as the paper states); the KL of
  the sticks, KL[Kumaraswamy(a, b) || Beta(alpha, 1)], is in closed form. ``z_kl='bernoulli'``
  uses the exact Bernoulli KL[q(z) || p(z | pi)] instead (no relaxation, lower variance).
  The module's ``kl`` is their sum: a KL of the weights, counted once per dataset, so the
  ELBO divides it by N_train.
* Evaluation: exact Bernoulli samples of z, with a cut-off: z = 0 wherever pi~ <= ``cutoff``
  (pruned). ``eval_tau`` asks for the authors' soft relaxation at test time instead.

Modes, as for LWTA: ``sample`` (the model), ``mean`` (z = pi~, a smooth surrogate),
``max`` (z = 1[pi~ > 1/2], the most probable architecture); the cut-off applies to all three.

A forward draws one architecture z for its whole batch. Where copies of an input are folded
into one batch (R repeated predictions, EoT draws), each copy must draw its own z:
inside ``with independent_copies(rows)`` every block of ``rows`` consecutive rows of a
batch whose size is a multiple of ``rows`` gets its own z (nested foldings keep the finest
block), as the same forward run copy by copy would.

Where the authors' public code (konpanousis/adversarial_ecoc_lwta) differs, this file follows
the paper: their KL of z keeps only the q*log(q/pi) half of the Bernoulli KL and has no
relaxed prior (so no prior temperature); their dense layers take the stick product along
the input axis J instead of the blocks K; their masks are tiled (channel c gets z[c % K])
while their LWTA blocks are adjacent channels (c // U), so a z does not gate one block; they
initialise a=softplus(2), b=softplus(0.5453)=1 rather than a=K; and they draw soft z at
temperature 0.01 at test time (``eval_tau=0.01`` reproduces that).
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Dict, Iterator, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .lwta import MODES

Z_KL = ('relaxed', 'bernoulli')
EULER_GAMMA = 0.5772156649015329
_UNIFORM_EPS = 1e-6  # keeps uniform noise inside (0, 1) so that logs stay finite


_COPY_ROWS: ContextVar[Optional[int]] = ContextVar('ibp_copy_rows', default=None)


@contextmanager
def independent_copies(rows: int) -> Iterator[None]:
    """Every block of ``rows`` consecutive batch rows draws its own IBP mask inside this context.

    For forwards of copies of one batch of ``rows`` inputs folded along the batch dimension
    (``lwta_zoo.sampling.repeat_batch``): without it all copies would share one architecture.
    Nested contexts keep the finest block (the greatest common divisor of their ``rows``).
    """
    if isinstance(rows, bool) or not isinstance(rows, int) or rows < 1:
        raise ValueError(f'independent_copies: rows must be a positive integer, got {rows!r}')
    outer = _COPY_ROWS.get()
    token = _COPY_ROWS.set(rows if outer is None else math.gcd(outer, rows))
    try:
        yield
    finally:
        _COPY_ROWS.reset(token)


def _copies(batch: int) -> int:
    """How many independent masks a forward of ``batch`` rows draws (see ``independent_copies``)."""
    rows = _COPY_ROWS.get()
    return batch // rows if rows and batch % rows == 0 else 1


def _inverse_softplus(y: float) -> float:
    return y + math.log(-math.expm1(-y))


def _uniform(shape: Tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    return torch.rand(shape, dtype=like.dtype, device=like.device).clamp_(_UNIFORM_EPS, 1 - _UNIFORM_EPS)


def kumaraswamy_log_rsample(a: torch.Tensor, b: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """log u for u ~ Kumaraswamy(a, b), by the inverse CDF u = (1 - (1 - x)^(1/b))^(1/a), x = ``uniform``.

    Differentiable in a and b (the reparameterisation the paper uses for the Beta sticks);
    computed in log space so that long stick products do not underflow.
    """
    return torch.log(-torch.expm1(torch.log1p(-uniform) / b)) / a


def kumaraswamy_beta_kl(a: torch.Tensor, b: torch.Tensor, alpha: float) -> torch.Tensor:
    """KL[Kumaraswamy(a, b) || Beta(alpha, 1)], elementwise and exact.

    Nalisnick & Smyth (2017), eq. 12: the Taylor-series term carries a factor (beta - 1) and
    vanishes for the IBP's Beta(alpha, 1) prior, and log B(alpha, 1) = -log alpha.
    """
    return (1 - alpha / a) * (-EULER_GAMMA - torch.digamma(b) - 1 / b) + torch.log(a * b / alpha) - (b - 1) / b


def _logistic_log_density(t: torch.Tensor) -> torch.Tensor:
    return -t - 2 * F.softplus(-t)


def binary_concrete_log_density(y: torch.Tensor, logit: torch.Tensor, tau: float) -> torch.Tensor:
    """log density of y = (logit + Logistic noise) / tau: the binary concrete in logit space."""
    return math.log(tau) + _logistic_log_density(tau * y - logit)


class IBPMask(nn.Module):
    """Stick-breaking IBP over a mask of shape (..., K); the sticks run along the last axis K.

    ``forward()`` returns a mask z of ``shape`` (see the module docstring for what it draws
    when) and, in a training-mode 'sample' forward, sets ``kl`` (sticks + z); otherwise
    ``kl`` is None. ``forward(copies=k)`` draws k independent masks, shape (k, *shape) (the KL
    is then their mean); a deterministic mode ('mean', 'max') returns one mask of ``shape``.
    """

    def __init__(
        self,
        shape: Tuple[int, ...],
        alpha: float = 1.0,
        tau: float = 0.67,
        prior_tau: float = 0.5,
        z_kl: str = 'relaxed',
        cutoff: float = 1e-2,
        pi_init: float = 0.99,
        mode: str = 'sample',
        eval_tau: Optional[float] = None,
        device: Optional[torch.device] = None,
        dtype: Optional[torch.dtype] = None,
    ):
        super().__init__()
        if not shape or any(not isinstance(s, int) or s < 1 for s in shape):
            raise ValueError(f'IBPMask: shape must be positive integers, got {shape!r}')
        if not (alpha > 0 and tau > 0 and prior_tau > 0) or (eval_tau is not None and not eval_tau > 0):
            raise ValueError(f'IBPMask: alpha and temperatures must be positive, got alpha={alpha}, '
                             f'tau={tau}, prior_tau={prior_tau}, eval_tau={eval_tau}')
        if not 0 < pi_init < 1 or not 0 <= cutoff < 1:
            raise ValueError(f'IBPMask: need 0 < pi_init < 1 and 0 <= cutoff < 1, got {pi_init}, {cutoff}')
        if z_kl not in Z_KL:
            raise ValueError(f'IBPMask: z_kl must be one of {Z_KL}, got {z_kl!r}')
        if mode not in MODES:
            raise ValueError(f'IBPMask: mode must be one of {MODES}, got {mode!r}')
        K = shape[-1]
        self.shape = tuple(shape)
        self.alpha, self.tau, self.prior_tau, self.z_kl = alpha, tau, prior_tau, z_kl
        self.cutoff, self.mode, self.eval_tau = cutoff, mode, eval_tau
        dd = {'device': device, 'dtype': dtype}
        self.pi_logit = nn.Parameter(torch.full(shape, math.log(pi_init / (1 - pi_init)), **dd))
        # Kumaraswamy posterior of the sticks, a = softplus(stick_a), b = softplus(stick_b).
        self.stick_a = nn.Parameter(torch.full((K,), _inverse_softplus(float(K)), **dd))
        self.stick_b = nn.Parameter(torch.full((K,), _inverse_softplus(1.0), **dd))
        self.kl: Optional[torch.Tensor] = None

    @property
    def pi(self) -> torch.Tensor:
        """Posterior keep probabilities pi~."""
        return self.pi_logit.sigmoid()

    def kept(self) -> torch.Tensor:
        """Boolean mask of the entries that survive the test-time cut-off."""
        return self.pi > self.cutoff

    def prior_log_pi(self) -> torch.Tensor:
        """log pi_k = sum_{i<=k} log u_i for one reparameterised draw u ~ q(u), shape (K,)."""
        a, b = F.softplus(self.stick_a), F.softplus(self.stick_b)
        return kumaraswamy_log_rsample(a, b, _uniform(a.shape, a)).cumsum(0)

    def kl_sticks(self) -> torch.Tensor:
        """Sum over k of KL[Kumaraswamy(a_k, b_k) || Beta(alpha, 1)]."""
        return kumaraswamy_beta_kl(F.softplus(self.stick_a), F.softplus(self.stick_b), self.alpha).sum()

    def _kl_z(self, y: torch.Tensor) -> torch.Tensor:
        # logit of the prior pi (log pi <= -eps keeps logit(pi) finite where a stick product is 1)
        log_pi = self.prior_log_pi().clamp(max=-_UNIFORM_EPS)
        prior_logit = (log_pi - torch.log(-torch.expm1(log_pi))).expand(self.shape)
        if self.z_kl == 'relaxed':
            log_q = binary_concrete_log_density(y, self.pi_logit, self.tau)
            log_p = binary_concrete_log_density(y, prior_logit, self.prior_tau)
            return (log_q - log_p).sum()
        q = self.pi  # KL[Bern(q) || Bern(pi)] = H(q, pi) - H(q)
        return (F.binary_cross_entropy_with_logits(prior_logit, q, reduction='sum')
                - F.binary_cross_entropy_with_logits(self.pi_logit, q, reduction='sum'))

    @property
    def stochastic(self) -> bool:
        """Whether a forward draws a random mask (mode 'sample')."""
        return self.mode == 'sample'

    def forward(self, copies: Optional[int] = None) -> torch.Tensor:
        logit = self.pi_logit
        shape = self.shape if copies is None or not self.stochastic else (copies, *self.shape)
        if self.training and self.mode == 'sample':
            x = _uniform(shape, logit)
            y = (logit + x.log() - torch.log1p(-x)) / self.tau  # relaxed Bernoulli, logit space
            self.kl = self.kl_sticks() + self._kl_z(y) / (copies or 1)
            return y.sigmoid()
        self.kl = None
        if self.mode == 'mean':
            z = self.pi
        elif self.mode == 'max':
            z = (logit > 0).to(logit.dtype)
        elif self.eval_tau is not None:
            x = _uniform(shape, logit)
            z = ((logit + x.log() - torch.log1p(-x)) / self.eval_tau).sigmoid()
        else:
            z = torch.bernoulli(self.pi.detach().expand(shape))
        return z * self.kept()

    def extra_repr(self) -> str:
        extra = f', eval_tau={self.eval_tau}' if self.eval_tau is not None else ''
        return (f'shape={self.shape}, alpha={self.alpha}, tau={self.tau}, prior_tau={self.prior_tau}, '
                f'z_kl={self.z_kl!r}, cutoff={self.cutoff}, mode={self.mode!r}{extra}')


def _blocks_of(out: int, U: int, layer: str) -> int:
    if isinstance(U, bool) or not isinstance(U, int) or U < 1 or out % U:
        raise ValueError(f'{layer}: U={U!r} must be a positive integer dividing the {out} output units')
    return out // U


class IBPLinear(nn.Linear):
    """nn.Linear with an IBP mask z in {0,1}^(J x K) on its connections (paper eq. 4).

    ``U`` groups the outputs in K = out_features / U blocks of adjacent units (the LWTA
    blocks of the next activation): z_jk gates the U weights from input j to block k. The
    bias is not a connection and stays. ``ibp_args`` go to ``IBPMask``.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, U: int = 1,
                 ibp_args: Optional[Dict[str, Any]] = None, device: Optional[torch.device] = None,
                 dtype: Optional[torch.dtype] = None):
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self.U = U
        self.ibp = IBPMask((in_features, _blocks_of(out_features, U, 'IBPLinear')), **(ibp_args or {}),
                           device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        copies = _copies(len(x)) if self.ibp.stochastic else 1
        if copies == 1:
            z = self.ibp().repeat_interleave(self.U, dim=1)  # (J, K*U), block k = U adjacent outputs
            return F.linear(x, self.weight * z.t(), self.bias)
        z = self.ibp(copies).repeat_interleave(self.U, dim=2)  # (copies, J, K*U): one mask a copy
        out = torch.bmm(x.reshape(copies, -1, x.shape[-1]), z * self.weight.t())
        out = out.reshape(*x.shape[:-1], -1)
        return out if self.bias is None else out + self.bias


class IBPConv2d(nn.Conv2d):
    """nn.Conv2d with an IBP mask z in {0,1}^K on its kernels (paper eq. 9).

    ``U`` groups the output channels in K = out_channels / U blocks of adjacent feature maps;
    z_k keeps or drops block k whole: its U kernels and their biases. ``ibp_args`` go to
    ``IBPMask``; other keyword arguments to nn.Conv2d.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, U: int = 1,
                 ibp_args: Optional[Dict[str, Any]] = None, **conv_args):
        super().__init__(in_channels, out_channels, kernel_size, **conv_args)
        self.U = U
        self.ibp = IBPMask((_blocks_of(out_channels, U, 'IBPConv2d'),), **(ibp_args or {}),
                           device=self.weight.device, dtype=self.weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        copies = _copies(len(x)) if self.ibp.stochastic else 1
        if copies == 1:
            z = self.ibp().repeat_interleave(self.U)
            bias = None if self.bias is None else self.bias * z
            return self._conv_forward(x, self.weight * z.view(-1, 1, 1, 1), bias)
        # z gates whole kernels and their biases: masking the output per copy is the same
        z = self.ibp(copies).repeat_interleave(self.U, dim=1)  # (copies, C_out)
        out = self._conv_forward(x, self.weight, self.bias)
        return (out.unflatten(0, (copies, -1)) * z[:, None, :, None, None]).flatten(0, 1)


def ibp_layers(model: nn.Module) -> Iterator[Tuple[str, nn.Module]]:
    """(path, layer) for every IBPLinear and IBPConv2d in ``model``."""
    return ((n, m) for n, m in model.named_modules() if isinstance(m, (IBPLinear, IBPConv2d)))


@torch.no_grad()
def ibp_keep_fraction(model: nn.Module) -> List[Dict[str, Any]]:
    """How much of each IBP layer survives: one row a layer, then a 'total' row.

    Per row: ``unit`` ('connections' or 'kernels'), ``units`` (number of z), ``kept`` (z whose
    pi~ passes the test-time cut-off), ``expected`` (E[sum z] at test time: sum of pi~ over
    the kept ones), ``weights`` and ``weights_kept`` (weight entries those z gate), and the
    fractions ``kept_frac`` and ``expected_frac``.
    """
    rows = []
    for name, layer in ibp_layers(model):
        mask = layer.ibp
        kept = mask.kept()
        per_z = layer.weight.numel() // mask.pi.numel()
        rows.append(dict(
            layer=name, unit='connections' if isinstance(layer, IBPLinear) else 'kernels',
            units=kept.numel(), kept=int(kept.sum()), expected=float((mask.pi * kept).sum()),
            weights=layer.weight.numel(), weights_kept=int(kept.sum()) * per_z))
    if rows:
        rows.append(dict(layer='total', unit='all', **{
            k: sum(r[k] for r in rows) for k in ('units', 'kept', 'expected', 'weights', 'weights_kept')}))
    for r in rows:
        r['kept_frac'], r['expected_frac'] = r['kept'] / r['units'], r['expected'] / r['units']
    return rows


def format_keep_fraction(rows: List[Dict[str, Any]]) -> str:
    """A plain-text table of ``ibp_keep_fraction`` rows."""
    lines = [f'{"layer":<28} {"unit":<12} {"z":>8} {"kept":>8} {"kept %":>7} {"E[kept] %":>9} {"weights kept %":>14}']
    for r in rows:
        lines.append(f'{r["layer"]:<28} {r["unit"]:<12} {r["units"]:>8} {r["kept"]:>8} {100 * r["kept_frac"]:>7.2f} '
                     f'{100 * r["expected_frac"]:>9.2f} {100 * r["weights_kept"] / r["weights"]:>14.2f}')
    return '\n'.join(lines)
