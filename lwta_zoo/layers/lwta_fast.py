"""Fused LWTA for U=2 on CPU: the compiled kernels of ``lwta_zoo/kernels`` as torch custom ops.

One pass over the input per call (noise, competition and output together, no
intermediate tensors), and a backward that stores only what it needs:

* exact sample (eval): one uint8 winner flag per block;
* concrete relaxation (training, or eval with ``eval_tau``): the difference d = a - b of
  each block (half the input's size) and the output, from which the input is recovered;
  the noise is regenerated from the call's seed, never stored. The KL of the block's
  softmax to the uniform prior comes out of the same pass (``want_kl``).

Each call draws a fresh 64-bit seed from torch's default generator, so
``torch.manual_seed`` makes runs reproducible and no two calls share noise. The eager code
in ``lwta.py`` is the reference and the fallback: ``supports(x)`` says when these ops apply,
and ``eager()`` turns them off (for comparisons).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Optional, Tuple

import torch
from torch import Tensor

from ..kernels import cpu_library

_enabled = True
_U64 = (1 << 64) - 1
GRAIN = 32_768  # blocks per thread below which a call stays on one thread (as ATen's grain size)


@contextmanager
def eager() -> Iterator[None]:
    """Within this block LWTA runs on the eager PyTorch path (the reference)."""
    global _enabled
    saved, _enabled = _enabled, False
    try:
        yield
    finally:
        _enabled = saved


def supports(x: Tensor) -> bool:
    """Whether the fused kernels can take ``x``: float32, CPU, contiguous, and built here."""
    return (_enabled and x.device.type == 'cpu' and x.dtype == torch.float32 and x.dim() >= 2
            and x.is_contiguous() and cpu_library() is not None)


def _rows(x: Tensor) -> Tuple[int, int]:
    """(R, S): the kernels see (N, C, *S) as R = N*C/2 pairs of contiguous runs of S values."""
    S = x[0, 0].numel()
    return x.shape[0] * x.shape[1] // 2, S


def _threads(blocks: int) -> int:
    """Threads for a call: torch's setting, but one per GRAIN blocks (a parallel region costs more)."""
    return max(1, min(torch.get_num_threads(), blocks // GRAIN))


def _seed() -> int:
    return int(torch.randint(-2 ** 63, 2 ** 63 - 1, (), dtype=torch.int64))


def _lib():
    lib = cpu_library()
    if lib is None:
        raise RuntimeError('the LWTA CPU kernel is not available here (see the warning at first use)')
    return lib


@torch.library.custom_op('lwta_zoo::lwta2_sample', mutates_args=())
def _sample_op(x: Tensor, seed: int, save_mask: bool) -> Tuple[Tensor, Tensor]:
    R, S = _rows(x)
    y = torch.empty_like(x)
    mask = torch.empty(R * S if save_mask else 0, dtype=torch.uint8)
    _lib().lwta2_sample(x.data_ptr(), y.data_ptr(), mask.data_ptr() if save_mask else None, R, S, seed & _U64,
                        _threads(R * S))
    return y, mask


@_sample_op.register_fake
def _(x: Tensor, seed: int, save_mask: bool) -> Tuple[Tensor, Tensor]:
    R, S = _rows(x)
    return torch.empty_like(x), x.new_empty(R * S if save_mask else 0, dtype=torch.uint8)


def _sample_setup(ctx, inputs, output) -> None:
    ctx.save_for_backward(output[1])


def _sample_backward(ctx, grad_y: Tensor, grad_mask: Optional[Tensor]):
    (mask,) = ctx.saved_tensors
    if mask.numel() == 0:
        raise RuntimeError('lwta2_sample was called with save_mask=False and cannot be differentiated')
    grad_y = grad_y.contiguous()
    grad_x = torch.empty_like(grad_y)
    R, S = _rows(grad_y)
    _lib().lwta2_sample_backward(grad_y.data_ptr(), mask.data_ptr(), grad_x.data_ptr(), R, S,
                                 _threads(R * S))
    return grad_x, None, None


_sample_op.register_autograd(_sample_backward, setup_context=_sample_setup)


@torch.library.custom_op('lwta_zoo::lwta2_relaxed', mutates_args=())
def _relaxed_op(x: Tensor, seed: int, tau: float, want_kl: bool, save: bool) -> Tuple[Tensor, Tensor, Tensor]:
    R, S = _rows(x)
    y = torch.empty_like(x)
    d = torch.empty(R * S if save else 0, dtype=x.dtype)
    kl = _lib().lwta2_relaxed(x.data_ptr(), y.data_ptr(), d.data_ptr() if save else None, R, S, seed & _U64, tau,
                              want_kl, _threads(R * S))
    return y, d, torch.tensor(kl / x.shape[0], dtype=x.dtype)


@_relaxed_op.register_fake
def _(x: Tensor, seed: int, tau: float, want_kl: bool, save: bool) -> Tuple[Tensor, Tensor, Tensor]:
    R, S = _rows(x)
    return torch.empty_like(x), x.new_empty(R * S if save else 0), x.new_empty(())


def _relaxed_setup(ctx, inputs, output) -> None:
    x, ctx.seed, ctx.tau, ctx.want_kl, _ = inputs
    ctx.batch = x.shape[0]
    ctx.save_for_backward(output[0], output[1])


def _relaxed_backward(ctx, grad_y: Optional[Tensor], grad_d: Optional[Tensor], grad_kl: Optional[Tensor]):
    y, d = ctx.saved_tensors
    if d.numel() == 0:
        raise RuntimeError('lwta2_relaxed was called with save=False and cannot be differentiated')
    grad_y = torch.zeros_like(y) if grad_y is None else grad_y.contiguous()
    kl_scale = float(grad_kl) / ctx.batch if (grad_kl is not None and ctx.want_kl) else 0.0
    grad_x = torch.empty_like(y)
    R, S = _rows(y)
    _lib().lwta2_relaxed_backward(grad_y.data_ptr(), y.data_ptr(), d.data_ptr(), grad_x.data_ptr(), R, S,
                                  ctx.seed & _U64, ctx.tau, kl_scale, _threads(R * S))
    return grad_x, None, None, None, None


_relaxed_op.register_autograd(_relaxed_backward, setup_context=_relaxed_setup)


def _needs_grad(x: Tensor) -> bool:
    return torch.is_grad_enabled() and x.requires_grad


def sample(x: Tensor, seed: Optional[int] = None) -> Tensor:
    """Exact U=2 LWTA sample of ``x`` (the winner passes its response); gradient to the winner."""
    return _sample_op(x, _seed() if seed is None else seed, _needs_grad(x))[0]


def relaxed(x: Tensor, tau: float, want_kl: bool = False, seed: Optional[int] = None) -> Tuple[Tensor, Tensor]:
    """Concrete-relaxed U=2 LWTA at temperature ``tau`` and (if ``want_kl``, else 0) ``lwta_kl(x)``."""
    y, _, kl = _relaxed_op(x, _seed() if seed is None else seed, float(tau), want_kl, _needs_grad(x))
    return y, kl


def uniforms(n: int, seed: int) -> Tensor:
    """The uniforms that a call with ``seed`` draws for its first ``n`` blocks (block j = r*S + p)."""
    out = torch.empty(n)
    _lib().lwta2_uniforms(out.data_ptr(), n, seed & _U64)
    return out
