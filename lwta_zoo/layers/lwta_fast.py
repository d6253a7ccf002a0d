"""Fused LWTA: the kernels of ``lwta_zoo/kernels`` as torch custom ops.

The ops ``lwta_zoo::lwta_sample`` and ``lwta_zoo::lwta_relaxed`` run the compiled C
kernels on CPU tensors (float32, bfloat16) and the Triton kernels on CUDA tensors (float32,
float16, bfloat16; where Triton is installed), with one autograd formula: ``_kernels()``
picks the device's kernels, which share one interface and one noise (a seed gives the
same sample on either device, up to float rounding). Inputs may be contiguous or
channels_last (dense (N, C) too); outputs and gradients keep the input's layout and dtype,
as ReLU's do (under bfloat16 autocast a convolution's bfloat16 output stays bfloat16), and
the noise is keyed by (position, block, unit), so a seed draws the same sample in either
layout. The uniforms are 16-bit, eight blocks from one Philox4x32-10 draw: winner
probabilities are resolved to 2^-16 (see ``kernels/lwta_cpu.c``). One pass over the input per call
(noise, competition and output together, no intermediate tensors), for any U up to
``max_units()`` (U=2 has its own, faster rule), and a backward that stores only what it
needs:

* exact sample (eval): one uint8 winner index per block;
* concrete relaxation (training, or eval with ``eval_tau``), also with hard
  straight-through samples (``hard``): the differences d_k = h_k - h_{U-1} of each block
  ((U-1)/U of the input's elements, float32) and the output, from which the input is
  recovered; the noise is regenerated from the call's seed, never stored. The KL of the block's softmax
  to the uniform prior comes out of the same pass (``want_kl``).

Each call draws a fresh 64-bit seed from torch's default generator, so
``torch.manual_seed`` makes runs reproducible and no two calls share noise. The eager code
in ``lwta.py`` is the reference and the fallback: ``supports(x, U)`` says when these ops
apply, and ``eager()`` turns them off (for comparisons).
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterator, NamedTuple, Optional, Tuple

import torch
from torch import Tensor

from ..kernels import cpu_library, triton_kernels

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


_DTYPES = {'cpu': (torch.float32, torch.bfloat16), 'cuda': (torch.float32, torch.float16, torch.bfloat16)}


class Geometry(NamedTuple):
    """An input (N, G*U, *S) as the kernels see it: N*G*S blocks of U units; ``nhwc`` when the U
    units of a block are adjacent in memory (channels_last, dense), else contiguous NCHW."""
    N: int
    G: int
    U: int
    S: int
    nhwc: bool


def max_units(device: str = 'cpu') -> int:
    """The largest U the kernels for ``device`` ('cpu' or 'cuda') take (0 where they are not available)."""
    if device == 'cuda':
        kernels = triton_kernels()
        return 0 if kernels is None else kernels.MAX_U
    lib = cpu_library() if device == 'cpu' else None
    return 0 if lib is None else lib.lwta_max_units()


def _units_adjacent(x: Tensor) -> Optional[bool]:
    """True if x's channels are its innermost dimension in memory (channels_last, dense (N, C)),
    False if x is contiguous NCHW with positions, None for any other layout."""
    if x.is_contiguous():
        return math.prod(x.shape[2:]) == 1
    if x.dim() > 2 and x.movedim(1, -1).is_contiguous():
        return True
    return None


def supports(x: Tensor, U: int = 2) -> bool:
    """Whether the fused kernels can take ``x`` with U units a block: contiguous or channels_last, on
    CPU in float32 or bfloat16, on CUDA in float32, float16 or bfloat16, the device's kernels available here."""
    return (_enabled and x.dtype in _DTYPES.get(x.device.type, ()) and x.dim() >= 2
            and _units_adjacent(x) is not None and 2 <= U <= max_units(x.device.type))


def _geometry(x: Tensor, U: int) -> Geometry:
    """How the kernels see ``x``; checks what they cannot (they would read and write out of bounds)."""
    top = max_units(x.device.type)
    if not 2 <= U <= top or x.dim() < 2 or x.shape[1] % U:
        raise ValueError(f'the fused LWTA kernels take 2 <= U <= {top} units dividing the channels; '
                         f'got U={U}, input {tuple(x.shape)}')
    nhwc = _units_adjacent(x)
    if nhwc is None:
        raise ValueError(f'the fused LWTA kernels take contiguous or channels_last inputs; got strides {x.stride()}')
    return Geometry(x.shape[0], x.shape[1] // U, U, math.prod(x.shape[2:]), nhwc)


def _like(t: Tensor, stride: Tuple[int, ...], dtype: torch.dtype) -> Tensor:
    """``t`` with these strides and dtype (a gradient arriving in another layout is copied)."""
    if t.stride() == stride and t.dtype == dtype:
        return t
    return torch.empty_strided(t.shape, stride, dtype=dtype, device=t.device).copy_(t)


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


def _ptr(t: Optional[Tensor]) -> Optional[int]:
    return None if t is None else t.data_ptr()


class _Cpu:
    """The C kernels behind the ops on CPU tensors, with the launchers' interface of ``kernels/lwta_triton.py``.

    ``scale`` and ``shift`` (float32, one a channel): the kernels read z = x*scale + shift (a fused
    BatchNorm); backward: the input gradient is written times ``grad_scale``, and ``sums`` (float64,
    2C) gets the channel sums of the gradient z with respect to the affine's output and of z*(x - center).
    """

    @staticmethod
    def _args(t: Tensor, geo: Geometry) -> tuple:
        """The geometry and layout arguments of a C kernel call on ``t`` (layout: 1 for units adjacent, +2 for
        bfloat16)."""
        layout = int(geo.nhwc) + 2 * (t.dtype == torch.bfloat16)
        return geo.N, geo.G, geo.U, geo.S, layout

    @staticmethod
    def sample(x: Tensor, y: Tensor, idx: Optional[Tensor], geo: Geometry, seed: int, scale: Optional[Tensor] = None,
               shift: Optional[Tensor] = None) -> None:
        _lib().lwta_sample(x.data_ptr(), y.data_ptr(), _ptr(idx), _ptr(scale), _ptr(shift), *_Cpu._args(x, geo), seed,
                           _threads(geo.N * geo.G * geo.S))

    @staticmethod
    def sample_backward(gy: Tensor, idx: Tensor, gx: Tensor, geo: Geometry, x: Optional[Tensor] = None,
                        grad_scale: Optional[Tensor] = None, sums: Optional[Tensor] = None) -> None:
        _lib().lwta_sample_backward(gy.data_ptr(), idx.data_ptr(), gx.data_ptr(), _ptr(x), _ptr(grad_scale),
                                    _ptr(sums), *_Cpu._args(gy, geo), _threads(geo.N * geo.G * geo.S))

    @staticmethod
    def relaxed(x: Tensor, y: Tensor, d: Optional[Tensor], geo: Geometry, seed: int, tau: float, hard: bool,
                want_kl: bool, scale: Optional[Tensor] = None, shift: Optional[Tensor] = None) -> Tensor:
        kl = _lib().lwta_relaxed(x.data_ptr(), y.data_ptr(), _ptr(d), _ptr(scale), _ptr(shift), *_Cpu._args(x, geo),
                                 seed, tau, hard, want_kl, _threads(geo.N * geo.G * geo.S))
        return torch.tensor(kl / geo.N if geo.N else math.nan, dtype=torch.float32)

    @staticmethod
    def relaxed_backward(gy: Tensor, y: Optional[Tensor], d: Optional[Tensor], gx: Tensor, geo: Geometry, seed: int,
                         tau: float, hard: bool, kl_scale: Optional[Tensor], x: Optional[Tensor] = None,
                         scale: Optional[Tensor] = None, shift: Optional[Tensor] = None,
                         grad_scale: Optional[Tensor] = None, center: Optional[Tensor] = None,
                         sums: Optional[Tensor] = None) -> None:
        _lib().lwta_relaxed_backward(gy.data_ptr(), _ptr(y), _ptr(d), _ptr(x), _ptr(scale), _ptr(shift),
                                     _ptr(grad_scale), _ptr(center), _ptr(sums), gx.data_ptr(), *_Cpu._args(gy, geo),
                                     seed, tau, hard, 0.0 if kl_scale is None else float(kl_scale),
                                     _threads(geo.N * geo.G * geo.S))

    @staticmethod
    def channel_stats(x: Tensor, geo: Geometry) -> Tuple[Tensor, Tensor]:
        """Per-channel mean and (biased) variance of x, float64, thread-independent."""
        out = torch.empty(3, geo.G * geo.U, dtype=torch.float64)
        N, C, S, layout = geo.N, geo.G * geo.U, geo.S, _Cpu._args(x, geo)[-1]
        _lib().lwta_channel_stats(x.data_ptr(), out.data_ptr(), N, C, S, layout, _threads(N * geo.G * S))
        ref, s1, s2 = out / (N * S)
        return ref * (N * S) + s1, s2 - s1 * s1

    @staticmethod
    def channel_axpb(gz: Tensor, x: Tensor, gx: Tensor, a: Tensor, b: Tensor, e: Tensor, geo: Geometry) -> None:
        """gx = a*gz + b*x + e, channel by channel (gx may be gz)."""
        _lib().lwta_channel_axpb(gz.data_ptr(), x.data_ptr(), gx.data_ptr(), a.data_ptr(), b.data_ptr(), e.data_ptr(),
                                 geo.N, geo.G * geo.U, geo.S, _Cpu._args(gz, geo)[-1], _threads(geo.N * geo.G * geo.S))


def _kernels(t: Tensor):
    """The kernels for ``t``'s device: ``_Cpu`` or the Triton launchers (the same interface)."""
    if t.device.type != 'cuda':
        return _Cpu
    kernels = triton_kernels()
    if kernels is None:
        raise RuntimeError('the LWTA CUDA kernels need Triton, which is not installed here')
    return kernels


@torch.library.custom_op('lwta_zoo::lwta_sample', mutates_args=(), device_types=('cpu', 'cuda'))
def _sample_op(x: Tensor, U: int, seed: int, save_idx: bool) -> Tuple[Tensor, Tensor]:
    geo = _geometry(x, U)
    y = torch.empty_like(x)  # x's layout (empty_like keeps the strides of a dense tensor)
    idx = torch.empty(geo.N * geo.G * geo.S if save_idx else 0, dtype=torch.uint8, device=x.device)
    _kernels(x).sample(x, y, idx if save_idx else None, geo, seed & _U64)
    return y, idx


@_sample_op.register_fake
def _(x: Tensor, U: int, seed: int, save_idx: bool) -> Tuple[Tensor, Tensor]:
    geo = _geometry(x, U)
    return torch.empty_like(x), x.new_empty(geo.N * geo.G * geo.S if save_idx else 0, dtype=torch.uint8)


def _sample_setup(ctx, inputs, output) -> None:
    x, U, _, ctx.saved = inputs
    ctx.geo, ctx.stride = _geometry(x, U), output[0].stride()
    ctx.set_materialize_grads(False)  # the unused outputs' gradients stay None, not tensors of zeros
    ctx.save_for_backward(output[1])


def _sample_backward(ctx, grad_y: Optional[Tensor], grad_idx: Optional[Tensor]):
    (idx,) = ctx.saved_tensors
    if not ctx.saved:
        raise RuntimeError('lwta_sample was called with save_idx=False and cannot be differentiated')
    if grad_y is None:
        return None, None, None, None
    grad_y = _like(grad_y, ctx.stride, grad_y.dtype)
    grad_x = torch.empty_like(grad_y)
    _kernels(grad_y).sample_backward(grad_y, idx, grad_x, ctx.geo)
    return grad_x, None, None, None


_sample_op.register_autograd(_sample_backward, setup_context=_sample_setup)


@torch.library.custom_op('lwta_zoo::lwta_sample_', mutates_args=('x',), device_types=('cpu', 'cuda'))
def _sample_inplace_op(x: Tensor, U: int, seed: int) -> None:
    _kernels(x).sample(x, x, None, _geometry(x, U), seed & _U64)  # each block is read before it is written


@torch.library.custom_op('lwta_zoo::lwta_relaxed', mutates_args=(), device_types=('cpu', 'cuda'))
def _relaxed_op(x: Tensor, U: int, seed: int, tau: float, hard: bool, want_kl: bool,
                save: bool) -> Tuple[Tensor, Tensor, Tensor]:
    """y, the saved differences d (float32) and the KL (float32, mean over the batch)."""
    geo = _geometry(x, U)
    y = torch.empty_like(x)
    d = torch.empty(geo.N * geo.G * (U - 1) * geo.S if save else 0, dtype=torch.float32, device=x.device)
    kl = _kernels(x).relaxed(x, y, d if save else None, geo, seed & _U64, tau, hard, want_kl)
    return y, d, kl


@_relaxed_op.register_fake
def _(x: Tensor, U: int, seed: int, tau: float, hard: bool, want_kl: bool,
      save: bool) -> Tuple[Tensor, Tensor, Tensor]:
    geo, f32 = _geometry(x, U), torch.float32
    d = x.new_empty(geo.N * geo.G * (U - 1) * geo.S if save else 0, dtype=f32)
    return torch.empty_like(x), d, x.new_empty((), dtype=f32)


def _relaxed_setup(ctx, inputs, output) -> None:
    x, U, ctx.seed, ctx.tau, ctx.hard, ctx.want_kl, ctx.saved = inputs
    ctx.geo = _geometry(x, U)
    ctx.set_materialize_grads(False)  # no zeros for d's gradient (nor y's or the KL's when unused)
    ctx.save_for_backward(output[0], output[1])


def _relaxed_backward(ctx, grad_y: Optional[Tensor], grad_d: Optional[Tensor], grad_kl: Optional[Tensor]):
    y, d = ctx.saved_tensors
    if not ctx.saved:
        raise RuntimeError('lwta_relaxed was called with save=False and cannot be differentiated')
    grad_y = torch.zeros_like(y) if grad_y is None else _like(grad_y, y.stride(), y.dtype)
    # a tensor on the device (no host sync on CUDA); in float64, as the C kernel's scale was computed
    kl_scale = grad_kl.double() / ctx.geo.N if (grad_kl is not None and ctx.want_kl) else None
    grad_x = torch.empty_like(y)
    _kernels(y).relaxed_backward(grad_y, y, d, grad_x, ctx.geo, ctx.seed & _U64, ctx.tau, ctx.hard, kl_scale)
    return grad_x, None, None, None, None, None, None


_relaxed_op.register_autograd(_relaxed_backward, setup_context=_relaxed_setup)


def _needs_grad(x: Tensor) -> bool:
    return torch.is_grad_enabled() and x.requires_grad


def sample(x: Tensor, seed: Optional[int] = None, U: int = 2) -> Tensor:
    """Exact LWTA sample of ``x`` over blocks of U channels (the winner passes its response); gradient to the winner."""
    return _sample_op(x, U, _seed() if seed is None else seed, _needs_grad(x))[0]


def sample_(x: Tensor, seed: Optional[int] = None, U: int = 2) -> Tensor:
    """``sample`` written over ``x`` and returned (no gradient; as ``relu_``): what ``LWTA(inplace=True)``
    runs in inference, where a fresh output would cost an allocation and a pass over new memory."""
    _sample_inplace_op(x, U, _seed() if seed is None else seed)
    return x


def relaxed(x: Tensor, tau: float, want_kl: bool = False, seed: Optional[int] = None, U: int = 2,
            hard: bool = False) -> Tuple[Tensor, Tensor]:
    """Concrete-relaxed LWTA at temperature ``tau`` and (if ``want_kl``, else 0) ``lwta_kl(x, U)`` (NaN for an
    empty batch, as that mean is).

    With ``hard`` the forward passes the one-hot argmax of the relaxed sample and the
    backward differentiates the relaxed sample (straight-through).
    """
    y, _, kl = _relaxed_op(x, U, _seed() if seed is None else seed, float(tau), hard, want_kl, _needs_grad(x))
    return y, kl


def uniforms(shape: Tuple[int, ...], seed: int, unit: int = 0, U: int = 2) -> Tensor:
    """The uniforms that a call with ``seed`` on an input of ``shape`` (N, C, *S) draws for ``unit`` of each
    block, shape (N, C/U, *S), from the C kernel (the Triton kernels draw the same, whatever the layout).

    U=2 draws unit 0 only (one logistic variate a block); general U one Gumbel a unit.
    """
    N, G, S = shape[0], shape[1] // U, math.prod(shape[2:])
    out = torch.empty(N, G, *shape[2:])
    _lib().lwta_uniforms(out.data_ptr(), N, G, S, seed & _U64, unit)
    return out


# ---- BatchNorm fused into LWTA -----------------------------------------------------------------
# The ops below read z = x*scale + shift per channel (a BatchNorm) as they read x, so that BatchNorm
# and LWTA make one pass over the tensor rather than two; ``layers/batchnorm_lwta.py`` uses them.


def supports_batchnorm(x: Tensor, U: int = 2) -> bool:
    """Whether the fused BatchNorm + LWTA ops take ``x``: an image batch (N, C, H, W) that ``supports``."""
    return x.dim() == 4 and supports(x, U)


def _channel_sums(x: Tensor, geo: Geometry, wanted: bool) -> Optional[Tensor]:
    return torch.empty(2, geo.G * geo.U, dtype=torch.float64, device=x.device) if wanted else None


@torch.library.custom_op('lwta_zoo::bn_lwta_sample', mutates_args=(), device_types=('cpu', 'cuda'))
def _bn_sample_op(x: Tensor, scale: Tensor, shift: Tensor, U: int, seed: int, save_idx: bool) -> Tuple[Tensor, Tensor]:
    """The exact sample of x*scale + shift (BatchNorm in eval) and, if save_idx, the winners."""
    geo = _geometry(x, U)
    y = torch.empty_like(x)
    idx = torch.empty(geo.N * geo.G * geo.S if save_idx else 0, dtype=torch.uint8, device=x.device)
    _kernels(x).sample(x, y, idx if save_idx else None, geo, seed & _U64, scale, shift)
    return y, idx


@_bn_sample_op.register_fake
def _(x: Tensor, scale: Tensor, shift: Tensor, U: int, seed: int, save_idx: bool) -> Tuple[Tensor, Tensor]:
    geo = _geometry(x, U)
    return torch.empty_like(x), x.new_empty(geo.N * geo.G * geo.S if save_idx else 0, dtype=torch.uint8)


def _bn_sample_setup(ctx, inputs, output) -> None:
    x, scale, _, U, _, ctx.saved = inputs
    ctx.geo, ctx.stride = _geometry(x, U), output[0].stride()
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(x if ctx.needs_input_grad[1] or ctx.needs_input_grad[2] else None, scale, output[1])


def _affine_grads(sums: Optional[Tensor]) -> Tuple[Optional[Tensor], Optional[Tensor]]:
    """The gradients of scale and shift from the channel sums (sum of z*x, sum of z)."""
    return (None, None) if sums is None else (sums[1].float(), sums[0].float())


def _bn_sample_backward(ctx, grad_y: Optional[Tensor], grad_idx: Optional[Tensor]):
    x, scale, idx = ctx.saved_tensors
    if not ctx.saved:
        raise RuntimeError('bn_lwta_sample was called with save_idx=False and cannot be differentiated')
    if grad_y is None:
        return None, None, None, None, None, None
    grad_y = _like(grad_y, ctx.stride, grad_y.dtype)
    grad_x, sums = torch.empty_like(grad_y), _channel_sums(grad_y, ctx.geo, x is not None)
    _kernels(grad_y).sample_backward(grad_y, idx, grad_x, ctx.geo, x, scale, sums)
    return (grad_x, *_affine_grads(sums), None, None, None)


_bn_sample_op.register_autograd(_bn_sample_backward, setup_context=_bn_sample_setup)


@torch.library.custom_op('lwta_zoo::bn_lwta_relaxed', mutates_args=(), device_types=('cpu', 'cuda'))
def _bn_relaxed_op(x: Tensor, scale: Tensor, shift: Tensor, U: int, seed: int, tau: float) -> Tensor:
    """The concrete relaxation of x*scale + shift (BatchNorm in eval; LWTA's ``eval_tau``)."""
    geo = _geometry(x, U)
    y = torch.empty_like(x)
    _kernels(x).relaxed(x, y, None, geo, seed & _U64, tau, False, False, scale, shift)
    return y


@_bn_relaxed_op.register_fake
def _(x: Tensor, scale: Tensor, shift: Tensor, U: int, seed: int, tau: float) -> Tensor:
    _geometry(x, U)
    return torch.empty_like(x)


def _bn_relaxed_setup(ctx, inputs, output) -> None:
    x, scale, shift, U, ctx.seed, ctx.tau = inputs
    ctx.geo, ctx.stride = _geometry(x, U), output.stride()
    ctx.save_for_backward(x, scale, shift)


def _bn_relaxed_backward(ctx, grad_y: Tensor):
    x, scale, shift = ctx.saved_tensors
    grad_y = _like(grad_y, ctx.stride, grad_y.dtype)
    grad_x, sums = torch.empty_like(grad_y), _channel_sums(grad_y, ctx.geo, True)  # the C kernel needs them
    _kernels(grad_y).relaxed_backward(grad_y, None, None, grad_x, ctx.geo, ctx.seed & _U64, ctx.tau, False, None,
                                      x, scale, shift, scale, None, sums)
    return (grad_x, *_affine_grads(sums), None, None, None)


_bn_relaxed_op.register_autograd(_bn_relaxed_backward, setup_context=_bn_relaxed_setup)


@torch.library.custom_op('lwta_zoo::bn_lwta_train', mutates_args=(), device_types=('cpu', 'cuda'))
def _bn_train_op(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], eps: float, U: int, seed: int,
                 tau: float, hard: bool, want_kl: bool) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """BatchNorm in training (batch statistics) then the concrete relaxation (``hard``: its one-hot
    argmax, straight-through) of its output, one pass over x after the statistics' pass. Returns y,
    the batch mean and (biased) variance (float32, for the running statistics; not differentiated)
    and the KL of the winners (float32, mean over the batch; 0 unless want_kl)."""
    geo = _geometry(x, U)
    mean, var = _kernels(x).channel_stats(x, geo)
    scale, shift = _train_affine(mean, var, weight, bias, eps)
    y = torch.empty_like(x)
    kl = _kernels(x).relaxed(x, y, None, geo, seed & _U64, tau, hard, want_kl, scale, shift)
    return y, mean.float(), var.clamp(min=0).float(), kl


def _train_affine(mean: Tensor, var: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
                  eps: float) -> Tuple[Tensor, Tensor]:
    """BatchNorm's output as x*scale + shift (float32) from the batch statistics (float64)."""
    invstd = (var.clamp(min=0) + eps).rsqrt()
    scale = invstd if weight is None else invstd * weight.double()
    shift = -mean * scale + (0.0 if bias is None else bias.double())
    return scale.float(), shift.float()


@_bn_train_op.register_fake
def _(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], eps: float, U: int, seed: int, tau: float,
      hard: bool, want_kl: bool) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    geo, f32 = _geometry(x, U), torch.float32
    C = geo.G * geo.U
    return torch.empty_like(x), x.new_empty(C, dtype=f32), x.new_empty(C, dtype=f32), x.new_empty((), dtype=f32)


def _bn_train_setup(ctx, inputs, output) -> None:
    x, weight, bias, ctx.eps, U, ctx.seed, ctx.tau, ctx.hard, ctx.want_kl = inputs
    ctx.geo, ctx.stride = _geometry(x, U), output[0].stride()
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(x, weight, bias, output[1], output[2])


def _bn_train_backward(ctx, grad_y: Optional[Tensor], grad_mean, grad_var, grad_kl: Optional[Tensor]):
    """LWTA's backward and BatchNorm's reductions in one pass (the gradient z of BatchNorm's output and
    its channel sums), then BatchNorm's input gradient in a second: with M = N*H*W,
    dx = scale * (z - sum(z)/M - (x - mean) * invstd^2 * sum(z (x - mean))/M)."""
    x, weight, bias, mean, var = ctx.saved_tensors
    geo, M = ctx.geo, ctx.geo.N * ctx.geo.S
    grad_y = torch.zeros_like(x) if grad_y is None else _like(grad_y, ctx.stride, x.dtype)
    mean64, var64 = mean.double(), var.double()
    scale, shift = _train_affine(mean64, var64, weight, bias, ctx.eps)
    kl_scale = grad_kl.double() / geo.N if (grad_kl is not None and ctx.want_kl) else None
    grad_x, sums = torch.empty_like(grad_y), _channel_sums(grad_y, geo, True)
    kernels = _kernels(grad_y)
    kernels.relaxed_backward(grad_y, None, None, grad_x, geo, ctx.seed & _U64, ctx.tau, ctx.hard, kl_scale,
                             x, scale, shift, None, mean, sums)
    invstd = (var64 + ctx.eps).rsqrt()
    s1, s2 = sums
    a = scale.double()
    b = -a * invstd * invstd * s2 / M
    e = -b * mean64 - a * s1 / M
    kernels.channel_axpb(grad_x, x, grad_x, a.float(), b.float(), e.float(), geo)
    grad_weight = (s2 * invstd).to(weight.dtype) if weight is not None and ctx.needs_input_grad[1] else None
    grad_bias = s1.to(bias.dtype) if bias is not None and ctx.needs_input_grad[2] else None
    return grad_x, grad_weight, grad_bias, None, None, None, None, None, None


_bn_train_op.register_autograd(_bn_train_backward, setup_context=_bn_train_setup)


def batchnorm_sample(x: Tensor, scale: Tensor, shift: Tensor, U: int = 2, seed: Optional[int] = None) -> Tensor:
    """``sample(x*scale + shift)`` (scale, shift: float32, one a channel) in one pass: BatchNorm in eval, then LWTA."""
    return _bn_sample_op(x, scale, shift, U, _seed() if seed is None else seed, _needs_grad(x) or _needs_grad(scale)
                         or _needs_grad(shift))[0]


def batchnorm_relaxed(x: Tensor, scale: Tensor, shift: Tensor, tau: float, U: int = 2,
                      seed: Optional[int] = None) -> Tensor:
    """``relaxed(x*scale + shift, tau)`` in one pass: BatchNorm in eval, then LWTA's test-time relaxation."""
    return _bn_relaxed_op(x, scale, shift, U, _seed() if seed is None else seed, float(tau))


def batchnorm_train(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], eps: float, tau: float, U: int = 2,
                    hard: bool = False, want_kl: bool = True,
                    seed: Optional[int] = None) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """BatchNorm with batch statistics, then ``relaxed``: (y, batch mean, biased batch variance, KL)."""
    return _bn_train_op(x, weight, bias, float(eps), U, _seed() if seed is None else seed, float(tau), hard, want_kl)
