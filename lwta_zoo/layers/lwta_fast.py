"""Fused LWTA on CPU: the compiled kernels of ``lwta_zoo/kernels`` as torch custom ops.

One pass over the input per call (noise, competition and output together, no
intermediate tensors), for any U up to ``max_units()`` (U=2 has its own, faster rule),
and a backward that stores only what it needs:

* exact sample (eval): one uint8 winner index per block;
* concrete relaxation (training, or eval with ``eval_tau``), also with hard
  straight-through samples (``hard``): the differences d_k = h_k - h_{U-1} of each block
  ((U-1)/U of the input's size) and the output, from which the input is recovered; the
  noise is regenerated from the call's seed, never stored. The KL of the block's softmax
  to the uniform prior comes out of the same pass (``want_kl``).

Each call draws a fresh 64-bit seed from torch's default generator, so
``torch.manual_seed`` makes runs reproducible and no two calls share noise. The eager code
in ``lwta.py`` is the reference and the fallback: ``supports(x, U)`` says when these ops
apply, and ``eager()`` turns them off (for comparisons).
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


def max_units() -> int:
    """The largest U the kernels take (0 where they are not built)."""
    lib = cpu_library()
    return 0 if lib is None else lib.lwta_max_units()


def supports(x: Tensor, U: int = 2) -> bool:
    """Whether the fused kernels can take ``x`` with U units a block: float32, CPU, contiguous, built here."""
    return (_enabled and x.device.type == 'cpu' and x.dtype == torch.float32 and x.dim() >= 2
            and x.is_contiguous() and 2 <= U <= max_units())


def _rows(x: Tensor, U: int) -> Tuple[int, int]:
    """(R, S): the kernels see (N, C, *S) as R = N*C/U rows of U contiguous runs of S values.

    Checks what the kernels cannot (they would read and write out of bounds).
    """
    if not 2 <= U <= max_units() or x.dim() < 2 or x.shape[1] % U:
        raise ValueError(f'the fused LWTA kernels take 2 <= U <= {max_units()} units dividing the channels; '
                         f'got U={U}, input {tuple(x.shape)}')
    S = x[0, 0].numel()
    return x.shape[0] * x.shape[1] // U, S


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


@torch.library.custom_op('lwta_zoo::lwta_sample', mutates_args=())
def _sample_op(x: Tensor, U: int, seed: int, save_idx: bool) -> Tuple[Tensor, Tensor]:
    R, S = _rows(x, U)
    y = torch.empty_like(x)
    idx = torch.empty(R * S if save_idx else 0, dtype=torch.uint8)
    _lib().lwta_sample(x.data_ptr(), y.data_ptr(), idx.data_ptr() if save_idx else None, R, U, S, seed & _U64,
                       _threads(R * S))
    return y, idx


@_sample_op.register_fake
def _(x: Tensor, U: int, seed: int, save_idx: bool) -> Tuple[Tensor, Tensor]:
    R, S = _rows(x, U)
    return torch.empty_like(x), x.new_empty(R * S if save_idx else 0, dtype=torch.uint8)


def _sample_setup(ctx, inputs, output) -> None:
    ctx.U = inputs[1]
    ctx.save_for_backward(output[1])


def _sample_backward(ctx, grad_y: Tensor, grad_idx: Optional[Tensor]):
    (idx,) = ctx.saved_tensors
    if idx.numel() == 0:
        raise RuntimeError('lwta_sample was called with save_idx=False and cannot be differentiated')
    grad_y = grad_y.contiguous()
    grad_x = torch.empty_like(grad_y)
    R, S = _rows(grad_y, ctx.U)
    _lib().lwta_sample_backward(grad_y.data_ptr(), idx.data_ptr(), grad_x.data_ptr(), R, ctx.U, S, _threads(R * S))
    return grad_x, None, None, None


_sample_op.register_autograd(_sample_backward, setup_context=_sample_setup)


@torch.library.custom_op('lwta_zoo::lwta_relaxed', mutates_args=())
def _relaxed_op(x: Tensor, U: int, seed: int, tau: float, hard: bool, want_kl: bool,
                save: bool) -> Tuple[Tensor, Tensor, Tensor]:
    R, S = _rows(x, U)
    y = torch.empty_like(x)
    d = torch.empty(R * (U - 1) * S if save else 0, dtype=x.dtype)
    kl = _lib().lwta_relaxed(x.data_ptr(), y.data_ptr(), d.data_ptr() if save else None, R, U, S, seed & _U64, tau,
                             hard, want_kl, _threads(R * S))
    return y, d, torch.tensor(kl / x.shape[0], dtype=x.dtype)


@_relaxed_op.register_fake
def _(x: Tensor, U: int, seed: int, tau: float, hard: bool, want_kl: bool,
      save: bool) -> Tuple[Tensor, Tensor, Tensor]:
    R, S = _rows(x, U)
    return torch.empty_like(x), x.new_empty(R * (U - 1) * S if save else 0), x.new_empty(())


def _relaxed_setup(ctx, inputs, output) -> None:
    x, ctx.U, ctx.seed, ctx.tau, ctx.hard, ctx.want_kl, _ = inputs
    ctx.batch = x.shape[0]
    ctx.save_for_backward(output[0], output[1])


def _relaxed_backward(ctx, grad_y: Optional[Tensor], grad_d: Optional[Tensor], grad_kl: Optional[Tensor]):
    y, d = ctx.saved_tensors
    if d.numel() == 0:
        raise RuntimeError('lwta_relaxed was called with save=False and cannot be differentiated')
    grad_y = torch.zeros_like(y) if grad_y is None else grad_y.contiguous()
    kl_scale = float(grad_kl) / ctx.batch if (grad_kl is not None and ctx.want_kl) else 0.0
    grad_x = torch.empty_like(y)
    R, S = _rows(y, ctx.U)
    _lib().lwta_relaxed_backward(grad_y.data_ptr(), y.data_ptr(), d.data_ptr(), grad_x.data_ptr(), R, ctx.U, S,
                                 ctx.seed & _U64, ctx.tau, ctx.hard, kl_scale, _threads(R * S))
    return grad_x, None, None, None, None, None, None


_relaxed_op.register_autograd(_relaxed_backward, setup_context=_relaxed_setup)


def _needs_grad(x: Tensor) -> bool:
    return torch.is_grad_enabled() and x.requires_grad


def sample(x: Tensor, seed: Optional[int] = None, U: int = 2) -> Tensor:
    """Exact LWTA sample of ``x`` over blocks of U channels (the winner passes its response); gradient to the winner."""
    return _sample_op(x, U, _seed() if seed is None else seed, _needs_grad(x))[0]


def relaxed(x: Tensor, tau: float, want_kl: bool = False, seed: Optional[int] = None, U: int = 2,
            hard: bool = False) -> Tuple[Tensor, Tensor]:
    """Concrete-relaxed LWTA at temperature ``tau`` and (if ``want_kl``, else 0) ``lwta_kl(x, U)``.

    With ``hard`` the forward passes the one-hot argmax of the relaxed sample and the
    backward differentiates the relaxed sample (straight-through).
    """
    y, _, kl = _relaxed_op(x, U, _seed() if seed is None else seed, float(tau), hard, want_kl, _needs_grad(x))
    return y, kl


def uniforms(n: int, seed: int, unit: int = 0) -> Tensor:
    """The uniforms that a call with ``seed`` draws for ``unit`` of its first ``n`` blocks (block j = r*S + p).

    U=2 draws unit 0 only (one logistic variate a block); general U one Gumbel a unit.
    """
    out = torch.empty(n)
    _lib().lwta_uniforms(out.data_ptr(), n, seed & _U64, unit)
    return out
