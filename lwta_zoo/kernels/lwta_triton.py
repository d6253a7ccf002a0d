"""Triton kernels for stochastic LWTA on CUDA tensors, and their launchers.

They compute what the C kernels of ``lwta_cpu.c`` compute, on the same layout and with
the same noise, so that a seed gives the same sample on either device. A tensor
(N, C, *S) is R = N*C/U rows of U runs of S values; block j = r*S + p holds the units
x[(r*U + k)*S + p], k < U. One program takes one chunk of CHUNK blocks as a tile
(unit, lane, group) of shape (UP, 4, GROUPS), UP = U rounded up to a power of two, the
chunk's block o = lane*GROUPS + group: the uniform of unit k of that block is word
``lane`` of Philox4x32-10(counter = (group, chunk_lo, chunk_hi, k), key = seed), mapped
to ((w >> 8) + 0.5) / 2^24 in float32, at most the largest float below 1, as the C
``fill()`` does. ``tl.philox`` with uint32 counters is that generator (the same
multipliers, key increments and key (seed_lo, seed_hi)); the tests compare the uniforms
bit for bit.

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
CHUNK = tl.constexpr(256)
GROUPS = tl.constexpr(64)  # CHUNK / 4: one Philox call gives the uniforms of 4 blocks


@triton.jit
def _blocks():
    """The blocks j of this program's chunk as a (1, 4, GROUPS) tile (lane, group)."""
    return (tl.program_id(0).to(tl.int64) * CHUNK + tl.arange(0, 4)[None, :, None] * GROUPS
            + tl.arange(0, GROUPS)[None, None, :])


@triton.jit
def _tile(U: tl.constexpr, UP: tl.constexpr, S, B):
    """This program's chunk as a (UP, 4, GROUPS) tile: unit k, block j, its row r and
    position p, and which (block, unit) entries exist."""
    k = tl.arange(0, UP)[:, None, None]
    j = _blocks()
    return k, j, j // S, j % S, (j < B) & (k < U)


@triton.jit
def _at(r, p, k, S, K: tl.constexpr):
    """Offset of unit k of block (r, p) in a tensor of rows of K runs of S values."""
    return (r * K + k) * S + p


@triton.jit
def _uniform(seed, k):
    """The uniforms of units k (shape (K, 1, 1)) for this program's chunk, (K, 4, GROUPS): in (0, 1),
    as the C kernel's (the top value, which rounds to 1, is held just below it)."""
    chunk = tl.program_id(0).to(tl.int64)
    g = tl.arange(0, GROUPS)[None, None, :].to(tl.uint32) + (k * 0).to(tl.uint32)
    zero = g * 0
    w0, w1, w2, w3 = tl.philox(seed, g, zero + (chunk & 0xFFFFFFFF).to(tl.uint32),
                               zero + (chunk >> 32).to(tl.uint32), zero + k.to(tl.uint32))
    lane = tl.arange(0, 4)[None, :, None]
    w = tl.where(lane == 0, w0, tl.where(lane == 1, w1, tl.where(lane == 2, w2, w3)))
    return tl.minimum(((w >> 8).to(tl.float32) + 0.5) * (1.0 / 16777216.0), 1.0 - 1.0 / 16777216.0)


@triton.jit
def _gumbel(seed, k, U: tl.constexpr):
    """Gumbel noise -log(-log u) for the units k < U (-inf for padding units)."""
    return tl.where(k < U, -tl.log(-tl.log(_uniform(seed, k))), float('-inf'))


@triton.jit
def _sigmoid(z):
    return 1.0 / (1.0 + tl.exp(tl.minimum(-z, 80.0)))  # the C kernels' bound on exp's argument


@triton.jit
def _weights(dv, k, seed, inv_tau, U: tl.constexpr):
    """Relaxed weights s = softmax_k((d_k + noise_k) / tau) of each block from d_k = h_k - h_{U-1}
    (0 for k >= U-1), and the winner argmax_k s_k, shape (1, 4, GROUPS)."""
    if U == 2:  # one logistic variate: s_0 = sigmoid((d + logit u) / tau)
        u = _uniform(seed, tl.zeros((1, 1, 1), tl.int32))
        v = tl.sum(dv, 0, keep_dims=True) + tl.log(u / (1.0 - u))
        s0 = _sigmoid(v * inv_tau)
        return tl.where(k == 0, s0, 1.0 - s0), tl.where(v > 0, 0, 1)
    z = (dv + _gumbel(seed, k, U)) * inv_tau
    e = tl.exp(z - tl.max(z, 0, keep_dims=True))
    return e * (1.0 / tl.sum(e, 0, keep_dims=True)), tl.argmax(z, 0, keep_dims=True)


@triton.jit(do_not_specialize=['seed'])
def _sample_kernel(x, y, idx, S, B, seed, U: tl.constexpr, UP: tl.constexpr, SAVE: tl.constexpr):
    """Exact sample: the winner of each block passes its response; idx gets its unit (if SAVE)."""
    k, j, r, p, mask = _tile(U, UP, S, B)
    h = tl.load(x + _at(r, p, k, S, U), mask=mask, other=0.0).to(tl.float32)
    if U == 2:  # a wins iff u < sigmoid(a - b), written as the C kernel does
        d = tl.sum(tl.where(k == 0, h, -h), 0, keep_dims=True)
        u = _uniform(seed, tl.zeros((1, 1, 1), tl.int32))
        win = tl.where(u * (1.0 + tl.exp(tl.minimum(-d, 80.0))) < 1.0, 0, 1)
    else:
        win = tl.argmax(h + _gumbel(seed, k, U), 0, keep_dims=True)
    tl.store(y + _at(r, p, k, S, U), tl.where(k == win, h, 0.0).to(y.dtype.element_ty), mask=mask)
    if SAVE:
        tl.store(idx + j, win.to(tl.uint8), mask=j < B)


@triton.jit
def _sample_backward_kernel(gy, idx, gx, S, B, U: tl.constexpr, UP: tl.constexpr):
    """The gradient goes to the winner."""
    k, j, r, p, mask = _tile(U, UP, S, B)
    win = tl.load(idx + j, mask=j < B, other=0).to(tl.int32)
    g = tl.load(gy + _at(r, p, k, S, U), mask=mask, other=0.0)
    tl.store(gx + _at(r, p, k, S, U), tl.where(k == win, g, 0.0).to(gx.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=['seed'])
def _relaxed_kernel(x, y, d, kl, S, B, seed, inv_tau, U: tl.constexpr, UP: tl.constexpr, HARD: tl.constexpr,
                    WANT_KL: tl.constexpr, SAVE: tl.constexpr):
    """Concrete relaxation; d gets d_k = h_k - h_{U-1} (if SAVE), kl[chunk] the chunk's summed
    KL of softmax(h) to the uniform prior (if WANT_KL)."""
    k, j, r, p, mask = _tile(U, UP, S, B)
    h = tl.load(x + _at(r, p, k, S, U), mask=mask, other=0.0).to(tl.float32)
    dv = tl.where(k < U, h - tl.sum(tl.where(k == U - 1, h, 0.0), 0, keep_dims=True), 0.0)
    s, win = _weights(dv, k, seed, inv_tau, U)
    out = tl.where(k == win, h, 0.0) if HARD else h * s
    tl.store(y + _at(r, p, k, S, U), out.to(y.dtype.element_ty), mask=mask)
    if SAVE:
        tl.store(d + _at(r, p, k, S, U - 1), dv, mask=mask & (k < U - 1))
    if WANT_KL:  # sum_k q_k (h_k - m) - log sum_k e^(h_k - m) + log U, q = softmax(h)
        v = tl.where(k < U, h - tl.max(tl.where(k < U, h, float('-inf')), 0, keep_dims=True), 0.0)
        e = tl.where(k < U, tl.exp(v), 0.0)
        se = tl.sum(e, 0, keep_dims=True)
        block = tl.sum(e * v, 0, keep_dims=True) / se - tl.log(se) + tl.log(U * 1.0)
        tl.store(kl + tl.program_id(0), tl.sum(tl.where(j < B, block, 0.0)))


@triton.jit(do_not_specialize=['seed'])
def _relaxed_backward_kernel(gy, y, d, gx, kl_scale, S, B, seed, inv_tau, U: tl.constexpr, UP: tl.constexpr,
                             HARD: tl.constexpr, WANT_KL: tl.constexpr):
    """Backward of the relaxation from y and d, the noise regenerated from the seed; adds
    kl_scale (a float64 scalar in memory) times the KL's gradient if WANT_KL."""
    k, j, r, p, mask = _tile(U, UP, S, B)
    g = tl.load(gy + _at(r, p, k, S, U), mask=mask, other=0.0).to(tl.float32)
    dv = tl.load(d + _at(r, p, k, S, U - 1), mask=mask & (k < U - 1), other=0.0)
    s, win = _weights(dv, k, seed, inv_tau, U)
    w = (k == win).to(tl.float32) if HARD else s
    # the input: h_{U-1} = sum_k y_k - sum_k w_k d_k, h_k = h_{U-1} + d_k
    yv = tl.load(y + _at(r, p, k, S, U), mask=mask, other=0.0).to(tl.float32)
    h = tl.sum(yv - dv * w, 0, keep_dims=True) + dv
    # d/dh_k of sum_l g_l h_l w_l: g_k w_k + s_k (g_k h_k - sum_l g_l h_l s_l) / tau
    grad = g * w + s * (g * h - tl.sum(g * h * s, 0, keep_dims=True)) * inv_tau
    if WANT_KL:  # d KL / dh_k = q_k (d_k - sum_l q_l d_l), q = softmax(d)
        q = tl.where(k < U, tl.exp(dv - tl.max(dv, 0, keep_dims=True)), 0.0)
        q = q / tl.sum(q, 0, keep_dims=True)
        grad += tl.load(kl_scale).to(tl.float32) * q * (dv - tl.sum(q * dv, 0, keep_dims=True))
    tl.store(gx + _at(r, p, k, S, U), grad.to(gx.dtype.element_ty), mask=mask)


def _geometry(t: Tensor, U: int):
    """(grid, S, B, UP) of a call on t with U units a block."""
    B = t.numel() // U
    return (triton.cdiv(B, CHUNK.value),), t[0, 0].numel(), B, triton.next_power_of_2(U)


def sample(x: Tensor, y: Tensor, idx: Optional[Tensor], U: int, seed: int) -> None:
    """Exact sample of x into y; idx (one uint8 a block, or None) gets the winners."""
    grid, S, B, UP = _geometry(x, U)
    if B:
        _sample_kernel[grid](x, y, idx, S, B, seed, U=U, UP=UP, SAVE=idx is not None)


def sample_backward(gy: Tensor, idx: Tensor, gx: Tensor, U: int) -> None:
    """gx = gy at the winners idx, 0 elsewhere."""
    grid, S, B, UP = _geometry(gy, U)
    if B:
        _sample_backward_kernel[grid](gy, idx, gx, S, B, U=U, UP=UP)


def relaxed(x: Tensor, y: Tensor, d: Optional[Tensor], U: int, seed: int, tau: float, hard: bool,
            want_kl: bool) -> Tensor:
    """Relaxed sample of x into y; d (float32, U-1 units a block, or None) gets the differences.

    Returns the KL to the uniform prior, summed over blocks and averaged over the batch
    (0 unless want_kl), as a 0-dim float32 tensor on x's device: no host sync.
    """
    grid, S, B, UP = _geometry(x, U)
    kl = torch.zeros(grid[0] if want_kl else 0, dtype=torch.float32, device=x.device)
    if B:
        _relaxed_kernel[grid](x, y, d, kl, S, B, seed, 1.0 / tau, U=U, UP=UP, HARD=hard, WANT_KL=want_kl,
                              SAVE=d is not None)
    return (kl.sum(dtype=torch.float64) / x.shape[0]).float()


def relaxed_backward(gy: Tensor, y: Tensor, d: Tensor, gx: Tensor, U: int, seed: int, tau: float, hard: bool,
                     kl_scale: Optional[Tensor]) -> None:
    """Gradient gx of relaxed() from the upstream gy; kl_scale (0-dim float64 tensor on the
    device, or None) is the gradient of the loss w.r.t. the summed KL."""
    grid, S, B, UP = _geometry(gy, U)
    if B:
        _relaxed_backward_kernel[grid](gy, y, d, gx, kl_scale, S, B, seed, 1.0 / tau, U=U, UP=UP, HARD=hard,
                                       WANT_KL=kl_scale is not None)


@triton.jit(do_not_specialize=['seed'])
def _uniforms_kernel(out, n, seed, unit):
    j = _blocks()
    tl.store(out + j, _uniform(seed, tl.zeros((1, 1, 1), tl.int32) + unit), mask=j < n)


def uniforms(n: int, seed: int, unit: int = 0, device: str = 'cuda') -> Tensor:
    """The uniforms the kernels draw with ``seed`` for ``unit`` of blocks [0, n), as ``lwta_fast.uniforms``."""
    out = torch.empty(n, device=device)
    if n:
        _uniforms_kernel[(triton.cdiv(n, CHUNK.value),)](out, n, seed, unit)
    return out
