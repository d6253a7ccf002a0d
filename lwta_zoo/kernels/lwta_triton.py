"""Triton kernels for stochastic LWTA on CUDA tensors, and their launchers.

They compute what the C kernels of ``lwta_cpu.c`` compute, on the same layouts and with
the same noise, so that a seed gives the same sample on either device. An input
(N, G*U, *S) holds N*G*S blocks (n, g, p) of U units, either contiguous NCHW (unit k at
((n*G + g)*U + k)*S + p) or with the units adjacent (channels_last, dense: at (q*G + g)*U
+ k, q = n*S + p). One program takes 8 blocks g = 8*g8 + r (r < 8) at QB positions q as a
tile (unit, r, position) of shape (UP, 8, QB), UP = U rounded up to a power of two. The
uniform of unit k of block (n, g, p) is half-word g mod 8 of Philox4x32-10(counter = (q mod
2^32, q >> 32, g div 8, k), key = seed) as (bits + 0.5) / 2^16, as the C ``fill()`` draws
it; ``tl.philox`` with uint32 counters is that generator (the same multipliers, key
increments and key (seed_lo, seed_hi)); the tests compare the uniforms bit for bit.

U=2 decides a block with one logistic variate, general U with a Gumbel a unit (see the
C header). Inputs may be float32, float16 or bfloat16: kernels compute in float32 and
store outputs and gradients in the input's dtype; the saved differences d stay float32
(the backward recovers the input from them). Outputs agree with the C kernels' to float
rounding: a block can be decided differently only where two scores tie within it.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

MAX_U = 16  # as lwta_cpu.c's MAX_U: winner indices are uint8, a tile holds 16 units
QB = tl.constexpr(32)  # positions a program


@triton.jit
def _tile(N, G, S, U: tl.constexpr, UP: tl.constexpr):
    """This program's tile: units k (UP, 1, 1), blocks g and positions q (1, 8, QB), and which
    (block, unit) entries exist."""
    k = tl.arange(0, UP)[:, None, None]
    g = tl.program_id(1) * 8 + tl.arange(0, 8)[None, :, None]
    q = tl.program_id(0).to(tl.int64) * QB + tl.arange(0, QB)[None, None, :]
    blocks = (q < N * S) & (g < G)
    return k, g, q, blocks, blocks & (k < U)


@triton.jit
def _at(g, q, k, G, S, K: tl.constexpr, NHWC: tl.constexpr):
    """Offset of unit k of block g at position q in a tensor of K units a block."""
    if NHWC:
        return (q * G + g) * K + k
    return ((q // S * G + g) * K + k) * S + q % S


@triton.jit
def _uniform(seed, k):
    """The uniforms of units k (shape (K, 1, 1)) for this program's tile, (K, 8, QB), in (0, 1)."""
    q = tl.program_id(0).to(tl.int64) * QB + tl.arange(0, QB)[None, None, :]
    zero = (q * 0 + k * 0).to(tl.uint32)
    w0, w1, w2, w3 = tl.philox(seed, zero + (q & 0xFFFFFFFF).to(tl.uint32), zero + (q >> 32).to(tl.uint32),
                               zero + tl.program_id(1).to(tl.uint32), zero + k.to(tl.uint32))
    r = tl.arange(0, 8)[None, :, None]
    w = tl.where(r < 4, tl.where(r < 2, w0, w1), tl.where(r < 6, w2, w3))
    bits = (w >> ((r % 2) * 16).to(tl.uint32)) & 0xFFFF
    return (bits.to(tl.float32) + 0.5) * (1.0 / 65536.0)


@triton.jit
def _gumbel(seed, k, U: tl.constexpr):
    """Gumbel noise -log(-log u) for the units k < U (-inf for padding units)."""
    return tl.where(k < U, -tl.log(-tl.log(_uniform(seed, k))), float('-inf'))


@triton.jit
def _channels(b, k, G, U: tl.constexpr):
    """Channel index of units k of blocks b, (UP, 8, 1), and which exist."""
    return b * U + k, (b < G) & (k < U)


@triton.jit
def _affine(h, scale, shift, b, k, G, U: tl.constexpr):
    """h*scale + shift by channel: a fused BatchNorm's output read from its input."""
    c, cm = _channels(b, k, G, U)
    return h * tl.load(scale + c, mask=cm, other=1.0) + tl.load(shift + c, mask=cm, other=0.0)


@triton.jit
def _nan_blocks(out, h, k, U: tl.constexpr):
    """out, NaN in every unit of a block of h with a NaN unit (as the C kernels)."""
    bad = tl.max(tl.where((h != h) & (k < U), 1, 0), 0, keep_dims=True)
    return tl.where(bad > 0, float('nan'), out)


@triton.jit
def _store_sums(part, z, xc, b, k, G, U: tl.constexpr):
    """This program's channel sums of z and z*xc over its positions: part[pid0, 0 or 1, channel]."""
    c, cm = _channels(b, k, G, U)
    base = part + tl.program_id(0).to(tl.int64) * 2 * G * U
    tl.store(base + c, tl.sum(z, 2, keep_dims=True), mask=cm)
    tl.store(base + G * U + c, tl.sum(z * xc, 2, keep_dims=True), mask=cm)


@triton.jit
def _sigmoid(z):
    return 1.0 / (1.0 + tl.exp(tl.minimum(-z, 80.0)))  # the C kernels' bound on exp's argument


@triton.jit
def _weights(dv, k, seed, inv_tau, U: tl.constexpr):
    """Relaxed weights s = softmax_k((d_k + noise_k) / tau) of each block from d_k = h_k - h_{U-1}
    (0 for k >= U-1), and the winner argmax_k s_k, shape (1, 8, QB)."""
    if U == 2:  # one logistic variate: s_0 = sigmoid((d + logit u) / tau)
        u = _uniform(seed, tl.zeros((1, 1, 1), tl.int32))
        v = tl.sum(dv, 0, keep_dims=True) + tl.log(u / (1.0 - u))
        s0 = _sigmoid(v * inv_tau)
        return tl.where(k == 0, s0, 1.0 - s0), tl.where(v > 0, 0, 1)
    z = (dv + _gumbel(seed, k, U)) * inv_tau
    e = tl.exp(z - tl.max(z, 0, keep_dims=True))
    return e * (1.0 / tl.sum(e, 0, keep_dims=True)), tl.argmax(z, 0, keep_dims=True)


@triton.jit(do_not_specialize=['seed'])
def _sample_kernel(x, y, idx, scale, shift, N, G, S, seed, U: tl.constexpr, UP: tl.constexpr, NHWC: tl.constexpr,
                   SAVE: tl.constexpr, AFFINE: tl.constexpr):
    """Exact sample: the winner of each block passes its response; idx gets its unit (if SAVE). With
    AFFINE the blocks are x*scale + shift by channel (a fused BatchNorm)."""
    k, b, q, blocks, mask = _tile(N, G, S, U, UP)
    at = _at(b, q, k, G, S, U, NHWC)
    h = tl.load(x + at, mask=mask, other=0.0).to(tl.float32)
    if AFFINE:
        h = _affine(h, scale, shift, b, k, G, U)
    if U == 2:  # a wins iff u < sigmoid(a - b), written as the C kernel does
        u = _uniform(seed, tl.zeros((1, 1, 1), tl.int32))
        win = tl.where(u * (1.0 + tl.exp(tl.minimum(-tl.sum(tl.where(k == 0, h, -h), 0, keep_dims=True), 80.0)))
                       < 1.0, 0, 1)
    else:
        win = tl.argmax(h + _gumbel(seed, k, U), 0, keep_dims=True)
    tl.store(y + at, _nan_blocks(tl.where(k == win, h, 0.0), h, k, U).to(y.dtype.element_ty), mask=mask)
    if SAVE:
        tl.store(idx + _at(b, q, 0, G, S, 1, NHWC), win.to(tl.uint8), mask=blocks)


@triton.jit
def _sample_backward_kernel(gy, idx, gx, x, grad_scale, part, N, G, S, U: tl.constexpr, UP: tl.constexpr,
                            NHWC: tl.constexpr, SCALED: tl.constexpr, SUMS: tl.constexpr):
    """The gradient goes to the winner (times grad_scale by channel if SCALED); with SUMS the channel
    sums of that gradient z and of z*x go to part."""
    k, b, q, blocks, mask = _tile(N, G, S, U, UP)
    at = _at(b, q, k, G, S, U, NHWC)
    win = tl.load(idx + _at(b, q, 0, G, S, 1, NHWC), mask=blocks, other=0).to(tl.int32)
    z = tl.where(k == win, tl.load(gy + at, mask=mask, other=0.0).to(tl.float32), 0.0)
    if SUMS:
        _store_sums(part, z, tl.load(x + at, mask=mask, other=0.0).to(tl.float32), b, k, G, U)
    if SCALED:
        c, cm = _channels(b, k, G, U)
        z = z * tl.load(grad_scale + c, mask=cm, other=1.0)
    tl.store(gx + at, z.to(gx.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=['seed'])
def _relaxed_kernel(x, y, d, kl, scale, shift, N, G, S, seed, inv_tau, U: tl.constexpr, UP: tl.constexpr,
                    NHWC: tl.constexpr, HARD: tl.constexpr, WANT_KL: tl.constexpr, SAVE: tl.constexpr,
                    AFFINE: tl.constexpr):
    """Concrete relaxation (of x*scale + shift with AFFINE); d gets d_k = h_k - h_{U-1} (if SAVE),
    kl[program] the tile's summed KL of softmax(h) to the uniform prior (if WANT_KL)."""
    k, b, q, blocks, mask = _tile(N, G, S, U, UP)
    at = _at(b, q, k, G, S, U, NHWC)
    h = tl.load(x + at, mask=mask, other=0.0).to(tl.float32)
    if AFFINE:
        h = _affine(h, scale, shift, b, k, G, U)
    dv = tl.where(k < U, h - tl.sum(tl.where(k == U - 1, h, 0.0), 0, keep_dims=True), 0.0)
    s, win = _weights(dv, k, seed, inv_tau, U)
    out = tl.where(k == win, h, 0.0) if HARD else h * s
    tl.store(y + at, _nan_blocks(out, h, k, U).to(y.dtype.element_ty), mask=mask)
    if SAVE:
        tl.store(d + _at(b, q, k, G, S, U - 1, NHWC), dv, mask=mask & (k < U - 1))
    if WANT_KL:  # sum_k q_k (h_k - m) - log sum_k e^(h_k - m) + log U, q = softmax(h)
        v = tl.where(k < U, h - tl.max(tl.where(k < U, h, float('-inf')), 0, keep_dims=True), 0.0)
        e = tl.where(k < U, tl.exp(v), 0.0)
        se = tl.sum(e, 0, keep_dims=True)
        block = tl.sum(e * v, 0, keep_dims=True) / se - tl.log(se) + tl.log(U * 1.0)
        tl.store(kl + tl.program_id(0) * tl.num_programs(1) + tl.program_id(1), tl.sum(tl.where(blocks, block, 0.0)))


@triton.jit(do_not_specialize=['seed'])
def _relaxed_backward_kernel(gy, y, d, gx, kl_scale, x, scale, shift, grad_scale, center, part, N, G, S, seed,
                             inv_tau, U: tl.constexpr, UP: tl.constexpr, NHWC: tl.constexpr, HARD: tl.constexpr,
                             WANT_KL: tl.constexpr, FROM_X: tl.constexpr, SCALED: tl.constexpr,
                             CENTERED: tl.constexpr):
    """Backward of the relaxation, the noise regenerated from the seed; adds kl_scale (a float64
    scalar in memory) times the KL's gradient if WANT_KL. The input from y and d, or with FROM_X
    from x*scale + shift (a fused BatchNorm): then the channel sums of the gradient z and of
    z*(x - center) go to part, and z is written times grad_scale if SCALED."""
    k, b, q, blocks, mask = _tile(N, G, S, U, UP)
    at = _at(b, q, k, G, S, U, NHWC)
    g = tl.load(gy + at, mask=mask, other=0.0).to(tl.float32)
    if FROM_X:
        xv = tl.load(x + at, mask=mask, other=0.0).to(tl.float32)
        h = _affine(xv, scale, shift, b, k, G, U)
        dv = tl.where(k < U, h - tl.sum(tl.where(k == U - 1, h, 0.0), 0, keep_dims=True), 0.0)
        s, win = _weights(dv, k, seed, inv_tau, U)
        w = (k == win).to(tl.float32) if HARD else s
    else:
        dv = tl.load(d + _at(b, q, k, G, S, U - 1, NHWC), mask=mask & (k < U - 1), other=0.0)
        s, win = _weights(dv, k, seed, inv_tau, U)
        w = (k == win).to(tl.float32) if HARD else s
        # the input: h_{U-1} = sum_k y_k - sum_k w_k d_k, h_k = h_{U-1} + d_k
        yv = tl.load(y + at, mask=mask, other=0.0).to(tl.float32)
        h = tl.sum(yv - dv * w, 0, keep_dims=True) + dv
    # d/dh_k of sum_l g_l h_l w_l: g_k w_k + s_k (g_k h_k - sum_l g_l h_l s_l) / tau
    grad = g * w + s * (g * h - tl.sum(g * h * s, 0, keep_dims=True)) * inv_tau
    if WANT_KL:  # d KL / dh_k = q_k (d_k - sum_l q_l d_l), q = softmax(d)
        p = tl.where(k < U, tl.exp(dv - tl.max(dv, 0, keep_dims=True)), 0.0)
        p = p / tl.sum(p, 0, keep_dims=True)
        grad += tl.load(kl_scale).to(tl.float32) * p * (dv - tl.sum(p * dv, 0, keep_dims=True))
    if FROM_X:
        c, cm = _channels(b, k, G, U)
        xc = xv - tl.load(center + c, mask=cm, other=0.0) if CENTERED else xv
        _store_sums(part, tl.where(mask, grad, 0.0), xc, b, k, G, U)
        if SCALED:
            grad = grad * tl.load(grad_scale + c, mask=cm, other=1.0)
    tl.store(gx + at, grad.to(gx.dtype.element_ty), mask=mask)


def _launch(geo) -> tuple:
    """(grid, UP): programs over (QB positions, 8 blocks) and U rounded up to a power of two."""
    return (triton.cdiv(geo.N * geo.S, QB.value), triton.cdiv(geo.G, 8)), triton.next_power_of_2(geo.U)


def _blocks(geo) -> int:
    return geo.N * geo.G * geo.S


def _part(geo, grid, wanted: bool, device) -> Optional[Tensor]:
    """Each program's channel sums (see _store_sums), zero where a program has none."""
    return torch.zeros(grid[0], 2, geo.G * geo.U, device=device) if wanted else None


def _sum_parts(part: Optional[Tensor], sums: Optional[Tensor]) -> None:
    """The programs' channel sums added up in a fixed order into sums (float64, 2C)."""
    if sums is not None:
        sums.copy_(part.sum(0, dtype=torch.float64))


def sample(x: Tensor, y: Tensor, idx: Optional[Tensor], geo, seed: int, scale: Optional[Tensor] = None,
           shift: Optional[Tensor] = None) -> None:
    """Exact sample of x (of x*scale + shift by channel, if given) into y; idx (one uint8 a block, or None)
    gets the winners. ``geo``: lwta_fast.Geometry."""
    (grid, UP), N, G, S = _launch(geo), geo.N, geo.G, geo.S
    if _blocks(geo):
        _sample_kernel[grid](x, y, idx, scale, shift, N, G, S, seed, U=geo.U, UP=UP, NHWC=geo.nhwc,
                             SAVE=idx is not None, AFFINE=scale is not None)


def sample_backward(gy: Tensor, idx: Tensor, gx: Tensor, geo, x: Optional[Tensor] = None,
                    grad_scale: Optional[Tensor] = None, sums: Optional[Tensor] = None) -> None:
    """gx = gy at the winners idx (times grad_scale by channel, if given), 0 elsewhere; sums (float64, 2C,
    or None) gets the channel sums of that gradient z (without grad_scale) and of z*x."""
    grid, UP = _launch(geo)
    part = _part(geo, grid, sums is not None, gy.device)
    if _blocks(geo):
        _sample_backward_kernel[grid](gy, idx, gx, x, grad_scale, part, geo.N, geo.G, geo.S, U=geo.U, UP=UP,
                                      NHWC=geo.nhwc, SCALED=grad_scale is not None, SUMS=sums is not None)
    _sum_parts(part, sums)


def relaxed(x: Tensor, y: Tensor, d: Optional[Tensor], geo, seed: int, tau: float, hard: bool,
            want_kl: bool, scale: Optional[Tensor] = None, shift: Optional[Tensor] = None) -> Tensor:
    """Relaxed sample of x (of x*scale + shift by channel, if given) into y; d (float32, U-1 units a block,
    or None) gets the differences.

    Returns the KL to the uniform prior, summed over blocks and averaged over the batch
    (0 unless want_kl; NaN for an empty batch), as a 0-dim float32 tensor on x's device: no host sync.
    """
    grid, UP = _launch(geo)
    kl = torch.zeros(grid[0] * grid[1] if want_kl else 0, dtype=torch.float32, device=x.device)
    if _blocks(geo):
        _relaxed_kernel[grid](x, y, d, kl, scale, shift, geo.N, geo.G, geo.S, seed, 1.0 / tau, U=geo.U, UP=UP,
                              NHWC=geo.nhwc, HARD=hard, WANT_KL=want_kl, SAVE=d is not None,
                              AFFINE=scale is not None)
    return (kl.sum(dtype=torch.float64) / geo.N).float()


def relaxed_backward(gy: Tensor, y: Optional[Tensor], d: Optional[Tensor], gx: Tensor, geo, seed: int, tau: float,
                     hard: bool, kl_scale: Optional[Tensor], x: Optional[Tensor] = None,
                     scale: Optional[Tensor] = None, shift: Optional[Tensor] = None,
                     grad_scale: Optional[Tensor] = None, center: Optional[Tensor] = None,
                     sums: Optional[Tensor] = None) -> None:
    """Gradient gx of relaxed() from the upstream gy; kl_scale (0-dim float64 tensor on the
    device, or None) is the gradient of the loss w.r.t. the summed KL. The input from y and d, or
    (x given) from x*scale + shift: then sums (float64, 2C) gets the channel sums of the gradient z
    and of z*(x - center), and gx is z times grad_scale (if given)."""
    grid, UP = _launch(geo)
    part = _part(geo, grid, x is not None, gy.device)
    if _blocks(geo):
        _relaxed_backward_kernel[grid](gy, y, d, gx, kl_scale, x, scale, shift, grad_scale, center, part, geo.N,
                                       geo.G, geo.S, seed, 1.0 / tau, U=geo.U, UP=UP, NHWC=geo.nhwc, HARD=hard,
                                       WANT_KL=kl_scale is not None, FROM_X=x is not None,
                                       SCALED=grad_scale is not None, CENTERED=center is not None)
    _sum_parts(part, sums)


def channel_stats(x: Tensor, geo) -> tuple:
    """Per-channel mean and biased variance of an (N, C, H, W) x, float64 (BatchNorm's statistics)."""
    var, mean = torch.var_mean(x.float(), dim=(0, 2, 3), correction=0)
    return mean.double(), var.double()


def channel_axpb(gz: Tensor, x: Tensor, gx: Tensor, a: Tensor, b: Tensor, e: Tensor, geo) -> None:
    """gx = a*gz + b*x + e by channel (gx may be gz): BatchNorm's backward once its sums are known."""
    a, b, e = (t.view(1, -1, 1, 1) for t in (a, b, e))
    gx.copy_(torch.addcmul(gz.float() * a + e, x.float(), b))


@triton.jit(do_not_specialize=['seed'])
def _uniforms_kernel(out, N, G, S, seed, unit):
    k, b, q, blocks, mask = _tile(N, G, S, 1, 1)
    tl.store(out + _at(b, q, 0, G, S, 1, False), _uniform(seed, tl.zeros((1, 1, 1), tl.int32) + unit), mask=blocks)


def uniforms(shape: tuple, seed: int, unit: int = 0, U: int = 2, device: str = 'cuda') -> Tensor:
    """The uniforms the kernels draw with ``seed`` on an input of ``shape`` for ``unit`` of each block,
    shape (N, C/U, *S), as ``lwta_fast.uniforms``."""
    N, G = shape[0], shape[1] // U
    S = 1
    for n in shape[2:]:
        S *= n
    out = torch.empty(N, G, *shape[2:], device=device)
    if out.numel():
        _uniforms_kernel[(triton.cdiv(N * S, QB.value), triton.cdiv(G, 8))](out, N, G, S, seed, unit)
    return out
