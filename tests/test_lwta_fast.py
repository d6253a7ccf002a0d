"""The fused LWTA kernels (U=2 and general U) against the eager reference: distribution,
same-noise outputs and gradients, noise independence, reproducibility, fallback."""
import math

import pytest
import torch
import torch.nn.functional as F

from lwta_zoo import LWTA, lwta
from lwta_zoo.kernels import cpu_library
from lwta_zoo.layers import lwta_fast, lwta_kl

pytestmark = pytest.mark.skipif(cpu_library() is None, reason='no C compiler: the fused kernels are not built')

SHAPES = [(3, 12, 5, 7), (4, 12), (2, 12, 16, 16)]  # odd runs, dense (S=1), runs of 256; U = 2, 3, 4 divide 12


def _units(y: torch.Tensor, U: int = 2) -> torch.Tensor:
    return y.unflatten(1, (y.shape[1] // U, U))


def _noise(shape, U: int, seed: int, exact: bool = False) -> torch.Tensor:
    """The perturbations e the kernels add to the units h of each block, (N, C/U, U, *S): the
    exact sample is argmax(h + e), the relaxed one softmax((h + e) / tau). U=2: (+-logit(u), 0)
    from one uniform a block (logistic = difference of two Gumbels; the exact rule, a wins iff
    u < sigmoid(d), takes -logit(u)); else one Gumbel a unit."""
    u = [lwta_fast.uniforms(shape, seed, k, U).double() for k in range(1 if U == 2 else U)]
    logistic = (u[0].log() - (-u[0]).log1p()) * (-1 if exact else 1)
    e = [logistic, torch.zeros_like(logistic)] if U == 2 else [-(-uk.log()).log() for uk in u]
    return torch.stack(e, 2)


def _one_hot(index: torch.Tensor, U: int) -> torch.Tensor:
    """One-hot along dim 2 (the unit axis) of winner indices of shape (N, C/U, *S)."""
    return F.one_hot(index, U).movedim(-1, 2)


def _winner(y: torch.Tensor, x: torch.Tensor, U: int = 2) -> torch.Tensor:
    """Each block's winner: the unit of largest weight y/x (one-hot or relaxed)."""
    return (_units(y, U) / _units(x, U)).argmax(2)


def test_fused_path_is_taken_only_where_it_applies():
    x = torch.randn(4, 8, 3, 3)
    assert lwta_fast.supports(x) and lwta_fast.supports(x, 4) and lwta_fast.supports(x, lwta_fast.max_units())
    assert not lwta_fast.supports(x, lwta_fast.max_units() + 1)
    assert not lwta_fast.supports(x.double()) and not lwta_fast.supports(x.transpose(2, 3))
    with lwta_fast.eager():
        assert not lwta_fast.supports(x)
    assert lwta_fast.supports(x)


@pytest.mark.parametrize('U,channels', [(4, 6), (3, 8), (17, 34), (1, 4)])
def test_kernels_refuse_what_they_cannot_take(U, channels):
    x = torch.randn(2, channels, 3)
    with pytest.raises(ValueError, match=f'got U={U}'):
        lwta_fast.sample(x, U=U)
    with pytest.raises(ValueError, match=f'got U={U}'):
        lwta_fast.relaxed(x, 0.67, U=U)


@pytest.mark.parametrize('U', [2, 4])
@pytest.mark.parametrize('training,hard', [(False, False), (True, False), (True, True)])
def test_layer_dispatches_to_the_fused_kernels(U, training, hard):
    # the same draw from torch's generator (the call's seed) gives the kernel's own result
    x = torch.randn(5, 8, 3, 3)
    layer = LWTA(U=U, hard=hard).train(training)
    torch.manual_seed(11)
    y = layer(x)
    torch.manual_seed(11)
    expected = lwta_fast.relaxed(x, 0.67, U=U, hard=hard)[0] if training else lwta_fast.sample(x, U=U)
    assert torch.equal(y, expected)


@pytest.mark.parametrize('U', [2, 3, 4])
@pytest.mark.parametrize('training,hard', [(False, False), (True, False), (True, True)])
def test_winner_distribution_matches_softmax_and_the_eager_path(U, training, hard):
    # 40,000 draws of 12 / U blocks; a frequency's standard error is <= 0.0025, so 0.0125 is
    # 5 standard errors from softmax and about 3.5 between the two estimates. In training
    # the unit of largest relaxed weight is the one the exact sample would pick.
    h = torch.randn(1, 12) * 1.5
    x = h.expand(40_000, -1).contiguous()
    expected = _units(h, U).softmax(2)[0].double()

    def frequencies() -> torch.Tensor:
        return _one_hot(_winner(lwta(x, U, training=training, hard=hard), x, U), U).double().mean(0)

    fast = frequencies()
    with lwta_fast.eager():
        ref = frequencies()
    assert (fast - expected).abs().max() < 0.0125
    assert (fast - ref).abs().max() < 0.0125


@pytest.mark.parametrize('U', [2, 3, 4])
@pytest.mark.parametrize('shape', SHAPES)
def test_exact_sample_and_gradient_equal_the_reference_for_the_same_noise(shape, U):
    x = torch.randn(shape, requires_grad=True)
    y = lwta_fast.sample(x, seed=123, U=U)
    h = _units(x.detach(), U)
    xi = _one_hot((h.double() + _noise(shape, U, 123, exact=True)).argmax(2), U).to(x.dtype)  # the eager rule
    # a block decides differently only if two scores are within rounding: allow 1 in 10^4
    assert (_units(y, U) != h * xi).any(2).float().mean() <= 1e-4
    w = torch.randn(shape)
    (y * w).sum().backward()
    same = (_units(y, U) == h * xi).all(2, keepdim=True)
    assert torch.equal(_units(x.grad, U) * same, _units(w, U) * xi * same)


@pytest.mark.parametrize('U', [2, 3, 4])
@pytest.mark.parametrize('shape', SHAPES)
@pytest.mark.parametrize('tau', [0.67, 0.01])
@pytest.mark.parametrize('hard', [False, True])
def test_relaxed_sample_kl_and_gradients_equal_the_reference_for_the_same_noise(shape, tau, U, hard):
    x = (torch.randn(shape) * 2).requires_grad_(True)
    w = torch.randn(shape)
    y, kl = lwta_fast.relaxed(x, tau, want_kl=True, seed=7, U=U, hard=hard)
    (grad,) = torch.autograd.grad((y * w).sum() + 3.0 * kl, x)

    xr = x.detach().double().requires_grad_(True)
    h = _units(xr, U)
    s = ((h + _noise(shape, U, 7)) / tau).softmax(2)
    xi = _one_hot(s.argmax(2), U) - s.detach() + s if hard else s  # lwta()'s straight-through rule
    y_ref = (h * xi).flatten(1, 2)
    kl_ref = lwta_kl(xr, U)
    (grad_ref,) = torch.autograd.grad((y_ref * w.double()).sum() + 3.0 * kl_ref, xr)
    assert torch.allclose(y.double(), y_ref, rtol=1e-4, atol=1e-5)
    assert torch.allclose(kl, kl_ref, rtol=1e-4, atol=1e-5)
    # the backward recovers the input from (y, d): float32 rounding scaled by 1/tau
    assert torch.allclose(grad.double(), grad_ref, rtol=1e-3, atol=1e-4 / tau)


@pytest.mark.parametrize('U,hard', [(2, False), (4, False), (4, True)])
def test_module_records_the_fused_kl_with_its_gradient(U, hard):
    layer = LWTA(U=U, hard=hard).train()
    x = torch.randn(6, 8, 4, 4, requires_grad=True)
    layer(x)
    (g_fast,) = torch.autograd.grad(layer.kl, x)
    xr = x.detach().requires_grad_(True)
    kl_ref = lwta_kl(xr, U)
    (g_ref,) = torch.autograd.grad(kl_ref, xr)
    assert torch.allclose(layer.kl, kl_ref, rtol=1e-5)
    assert torch.allclose(g_fast, g_ref, atol=1e-6)


def _philox4x32_10(counter, key):
    """Philox4x32-10 (Salmon et al. 2011) of four 32-bit counter words and a 64-bit key, from its definition."""
    mask, (k0, k1), w = 0xFFFFFFFF, (key & 0xFFFFFFFF, key >> 32), list(counter)
    for _ in range(10):
        p0, p1 = 0xD2511F53 * w[0], 0xCD9E8D57 * w[2]
        w = [(p1 >> 32) ^ w[1] ^ k0, p1 & mask, (p0 >> 32) ^ w[3] ^ k1, p0 & mask]
        k0, k1 = (k0 + 0x9E3779B9) & mask, (k1 + 0xBB67AE85) & mask
    return w


def _reference_uniforms(shape, seed: int, unit: int, U: int) -> torch.Tensor:
    """The kernels' uniforms from their definition: unit k of block (n, g, p) takes half-word g mod 8
    (bits 16*(g mod 2) of word (g mod 8) // 2) of Philox4x32-10(counter (q mod 2^32, q >> 32, g // 8, k),
    key seed), q = n*S + p, as (bits + 0.5) / 2^16."""
    N, G, S = shape[0], shape[1] // U, math.prod(shape[2:])
    out = torch.empty(N, G, S, dtype=torch.float64)
    for n in range(N):
        for p in range(S):
            q = n * S + p
            for g in range(G):
                words = _philox4x32_10((q & 0xFFFFFFFF, q >> 32, g // 8, unit), seed)
                out[n, g, p] = (((words[g % 8 // 2] >> (16 * (g % 2))) & 0xFFFF) + 0.5) / 2 ** 16
    return out.float().view(N, G, *shape[2:])


@pytest.mark.parametrize('extra_flags', [[], ['-mno-avx2']], ids=['this-cpu', 'portable'])
def test_uniforms_are_halves_of_philox4x32_10(extra_flags, monkeypatch, tmp_path):
    """Both builds of the generator (vector instructions where the CPU has them, plain code elsewhere)
    draw the definition above: Random123's known answer for Philox4x32-10, and the definition across
    draws, rows, positions and units."""
    if extra_flags:  # build the portable generator into a private cache
        from lwta_zoo import kernels
        monkeypatch.setattr(kernels, 'COMPILE_FLAGS', kernels.COMPILE_FLAGS + extra_flags)
        monkeypatch.setenv('LWTA_ZOO_CACHE', str(tmp_path))
        cpu_library.cache_clear()
    try:
        # Random123's known answer for counter 0, key 0: words 6627e8d5 e169c58d bc57ac4c 9b00dbd8, whose
        # half-words (low first) are the uniforms of blocks g = 0..7 at the first position
        first_draw = lwta_fast.uniforms((1, 16), seed=0, unit=0)[0]
        halves = [w >> s & 0xFFFF for w in (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8) for s in (0, 16)]
        assert torch.equal(first_draw, (torch.tensor(halves, dtype=torch.float32) + 0.5) / 2 ** 16)
        seed = 0x0123456789ABCDEF
        for shape, U, unit in [((2, 2 * 20, 5, 7), 2, 0), ((3, 4 * 9, 33), 4, 3), ((70, 2 * 3), 2, 0)]:
            assert torch.equal(lwta_fast.uniforms(shape, seed, unit, U), _reference_uniforms(shape, seed, unit, U))
    finally:
        monkeypatch.undo()
        cpu_library.cache_clear()


@pytest.mark.parametrize('unit', [0, 1, 3])
def test_uniforms_are_uniform(unit):
    # chi-square of 2^18 draws over 64 bins: 63 degrees of freedom, P(chi2 > 120) < 1e-5
    u = lwta_fast.uniforms((64, 2 * 64, 8, 8), seed=2024, unit=unit).flatten()
    assert u.min() == 2 ** -17 and u.max() == 1 - 2 ** -17  # the extreme half-words, each about 4 times here
    counts = torch.histc(u, bins=64, min=0, max=1)
    expected = u.numel() / 64
    assert ((counts - expected) ** 2 / expected).sum() < 120


@pytest.mark.parametrize('other', [1, 2, 3])
def test_noise_is_independent_across_units_of_a_block(other):
    # General U draws a Gumbel a unit from its own Philox counter: |r| < 5/sqrt(n)
    n = 1 << 17
    a, b = (lwta_fast.uniforms((n // 64, 4 * 64), seed=9, unit=k, U=4).flatten() for k in (0, other))
    assert abs(torch.corrcoef(torch.stack((a, b)))[0, 1]) < 5 / math.sqrt(n)
    # equal inputs: every unit wins 1/4 of the blocks; chi-square, 3 dof, P(chi2 > 25) < 2e-5
    x = torch.ones(64, 4 * 16, 8, 8)
    counts = torch.bincount(_winner(lwta(x, 4), x, 4).flatten(), minlength=4).double()
    assert ((counts - counts.sum() / 4) ** 2 / (counts.sum() / 4)).sum() < 25


@pytest.mark.parametrize('U', [2, 4])
@pytest.mark.parametrize('offset', [1, 31, 32, 64, 128, 512, 2048])
def test_noise_is_independent_across_blocks(offset, U):
    # Equal inputs: the first unit wins a block with probability p = 1/U. Blocks `offset`
    # apart (neighbour positions, tiles, half-words and words of one draw, draws, examples) must be uncorrelated:
    # |r| < 5/sqrt(n); the frequency within 5 standard errors of p.
    x = torch.ones(64, U * 32, 8, 8)  # 131,072 blocks, runs of 64
    win = (_winner(lwta(x, U), x, U) == 0).flatten().double()
    p = 1 / U
    assert abs(win.mean() - p) < 5 * math.sqrt(p * (1 - p) / win.numel())
    a, b = win[:-offset], win[offset:]
    r = torch.corrcoef(torch.stack((a, b)))[0, 1]
    assert abs(r) < 5 / math.sqrt(a.numel())


@pytest.mark.parametrize('U', [2, 4])
@pytest.mark.parametrize('training', [False, True])
def test_noise_is_fresh_on_every_call_and_reproducible_from_the_seed(training, U):
    x = torch.ones(256, U * 64)

    def first_wins() -> torch.Tensor:
        return (_winner(lwta(x, U, training=training), x, U) == 0).flatten().double()

    torch.manual_seed(0)
    w1, w2 = first_wins(), first_wins()
    r = torch.corrcoef(torch.stack((w1, w2)))[0, 1]
    assert abs(r) < 5 / math.sqrt(w1.numel())  # two calls: independent noise
    torch.manual_seed(0)
    assert torch.equal(first_wins(), w1)


@pytest.mark.parametrize('U', [2, 4])
def test_result_does_not_depend_on_the_thread_count(U):
    x = torch.randn(8, 16, 64, 64, requires_grad=True)  # >= 2 * GRAIN blocks: two threads do run
    threads = torch.get_num_threads()

    def run():
        y, kl = lwta_fast.relaxed(x, 0.67, want_kl=True, seed=5, U=U)
        return y, kl, torch.autograd.grad(y.square().sum() + kl, x)[0], lwta_fast.sample(x.detach(), seed=5, U=U)

    try:
        torch.set_num_threads(1)
        one = run()
        torch.set_num_threads(2)
        two = run()
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(one[:1] + one[2:], two[:1] + two[2:]))
    assert torch.allclose(one[1], two[1])


def test_without_the_kernel_lwta_falls_back_to_eager(monkeypatch):
    monkeypatch.setenv('LWTA_ZOO_NO_KERNEL', '1')
    cpu_library.cache_clear()
    try:
        x = torch.randn(4, 6, 3, 3)
        assert cpu_library() is None and not lwta_fast.supports(x)
        y = LWTA().eval()(x)
        assert ((_units(y) != 0).sum(2) == 1).all()
    finally:
        monkeypatch.delenv('LWTA_ZOO_NO_KERNEL')
        cpu_library.cache_clear()
    assert cpu_library() is not None


def test_a_failing_build_warns_and_falls_back(monkeypatch, tmp_path):
    monkeypatch.setenv('CC', str(tmp_path / 'no-such-compiler'))
    monkeypatch.setenv('LWTA_ZOO_CACHE', str(tmp_path))
    cpu_library.cache_clear()
    try:
        with pytest.warns(UserWarning, match='could not build'):
            assert cpu_library() is None
    finally:
        monkeypatch.undo()
        cpu_library.cache_clear()


@pytest.mark.parametrize('shape', SHAPES)
@pytest.mark.parametrize('U', [2, 4])
def test_inplace_inference_overwrites_the_input_with_the_same_sample(shape, U):
    x = torch.randn(shape)
    torch.manual_seed(3)
    expected = LWTA(U=U).eval()(x)
    inplace, x_copy = LWTA(U=U, inplace=True).eval(), x.clone()
    torch.manual_seed(3)
    with torch.no_grad():
        y = inplace(x_copy)
    assert y.data_ptr() == x_copy.data_ptr() and torch.equal(y, expected)
    # where a gradient is needed the input stays as it was and the winner gets the gradient
    xg = x.clone().requires_grad_(True)
    y = inplace(xg)
    assert torch.equal(xg.detach(), x) and y.data_ptr() != xg.data_ptr()
    (grad,) = torch.autograd.grad(y.sum(), xg)
    assert torch.equal(grad, (y != 0).float())


def test_the_extreme_uniforms_give_finite_blocks():
    # the smallest and largest uniforms (2^-17 and 1 - 2^-17) give the extreme Gumbels and logistic
    # variates; a uniform of 0 or 1 would make them infinite and the block NaN
    shape = (1, 4 * 2 ** 17)
    u = lwta_fast.uniforms(shape, seed=1, unit=0, U=4)
    assert u.min() == 2 ** -17 and u.max() == 1 - 2 ** -17
    for U in (2, 4):
        x = torch.randn(shape, requires_grad=True)
        y, kl = lwta_fast.relaxed(x, 0.67, want_kl=True, seed=1, U=U)
        (grad,) = torch.autograd.grad(y.sum() + kl, x)
        assert torch.isfinite(y).all() and torch.isfinite(grad).all()
        assert torch.isfinite(lwta_fast.sample(x.detach(), seed=1, U=U)).all()


@pytest.mark.parametrize('U', [2, 4])
@pytest.mark.parametrize('tau', [0.67, 0.01])
@pytest.mark.parametrize('hard', [False, True])
def test_saturated_blocks_stay_finite(tau, U, hard):
    # |d| / tau far beyond expf's range: the winner takes all, nothing overflows into NaN
    x = torch.full((1, 2 * U), -1e4)
    x[0, 0] = x[0, -1] = 1e4  # the first unit of block 0 and the last of block 1 win
    expected = x.clamp(min=0)
    x.requires_grad_(True)
    y, kl = lwta_fast.relaxed(x, tau, want_kl=True, U=U, hard=hard)
    assert torch.allclose(y.detach(), expected, rtol=0, atol=1e-20)
    assert math.isclose(kl.item(), 2 * math.log(U), rel_tol=1e-5)
    assert torch.autograd.grad(y.sum() + kl, x)[0].isfinite().all()
    assert torch.equal(lwta_fast.sample(x.detach(), U=U), expected)


def _layouts(x: torch.Tensor):
    """x as contiguous NCHW and (4-d inputs) as channels_last."""
    yield x.contiguous()
    if x.dim() == 4:
        yield x.contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize('U', [2, 3, 4])
@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
def test_channels_last_inputs_draw_the_same_sample_and_keep_their_layout(U, dtype):
    # the noise is keyed by (position, block, unit), not by memory order: a seed gives the same sample
    x = (torch.randn(3, 12 * 4, 9, 11) * 2).to(dtype)  # 13 draws of 8 blocks a position for U=3 (one partial)
    w = torch.randn(x.shape).to(dtype)
    results = []
    for xl in _layouts(x):
        xl.requires_grad_(True)
        y = lwta_fast.sample(xl, seed=21, U=U)
        (g_sample,) = torch.autograd.grad((y * w).sum(), xl)
        yr, kl = lwta_fast.relaxed(xl, 0.67, want_kl=True, seed=21, U=U)
        (g_relaxed,) = torch.autograd.grad((yr * w).sum() + kl, xl)
        for t in (y, g_sample, yr, g_relaxed):
            assert t.stride() == xl.stride() and t.dtype == dtype
        results.append((y, g_sample, yr, kl, g_relaxed))
    (y0, gs0, yr0, kl0, gr0), (y1, gs1, yr1, kl1, gr1) = results
    # exact samples decide alike but where exp rounds differently at a threshold (vector and scalar code)
    assert (y0 != y1).float().mean() <= 1e-4 and (gs0 != gs1).float().mean() <= 1e-4
    tol = 1e-5 if dtype == torch.float32 else 2 ** -7
    assert torch.allclose(yr0.float(), yr1.float(), rtol=tol, atol=tol)
    assert torch.allclose(kl0, kl1, rtol=1e-5)
    assert torch.allclose(gr0.float(), gr1.float(), rtol=10 * tol, atol=10 * tol)


@pytest.mark.parametrize('U', [2, 4])
@pytest.mark.parametrize('shape', SHAPES)
@pytest.mark.parametrize('hard', [False, True])
def test_bfloat16_inputs_match_the_float32_computation_on_their_values(shape, U, hard):
    # the kernels compute in float32 from bfloat16 values and round once on output: the exact sample
    # passes the input's values; relaxed outputs and gradients agree at bfloat16 resolution
    for xb in _layouts((torch.randn(shape) * 2).bfloat16()):
        w = torch.randn(shape).bfloat16()
        xf = xb.float().requires_grad_(True)
        xb.requires_grad_(True)
        y = lwta_fast.sample(xb, seed=8, U=U)
        assert y.dtype == torch.bfloat16
        assert (y.float() != lwta_fast.sample(xf.detach(), seed=8, U=U)).float().mean() <= 1e-4
        yb, klb = lwta_fast.relaxed(xb, 0.67, want_kl=True, seed=8, U=U, hard=hard)
        yf, klf = lwta_fast.relaxed(xf, 0.67, want_kl=True, seed=8, U=U, hard=hard)
        (gb,) = torch.autograd.grad((yb * w).sum() + klb, xb)
        (gf,) = torch.autograd.grad((yf * w.float()).sum() + klf, xf)
        assert yb.dtype == gb.dtype == torch.bfloat16 and klb.dtype == torch.float32
        assert torch.allclose(yb.float(), yf, rtol=2 ** -8, atol=1e-6)  # one rounding: half a step
        assert torch.allclose(klb, klf, rtol=1e-5)
        # the backward recovers the input from the rounded y: a few steps of bfloat16
        assert torch.allclose(gb.float(), gf, rtol=3 * 2 ** -7, atol=3 * 2 ** -7)


@pytest.mark.parametrize('training', [False, True])
def test_under_bfloat16_autocast_lwta_takes_the_fused_path_and_returns_what_relu_returns(training, monkeypatch):
    # autocast runs the convolution in bfloat16; ReLU then returns bfloat16 (it keeps its input's dtype),
    # and so does LWTA, on the fused kernels, in the input's memory format
    conv = torch.nn.Conv2d(3, 8, 3, padding=1)
    x = torch.randn(4, 3, 8, 8).contiguous(memory_format=torch.channels_last)
    calls = []
    monkeypatch.setattr(lwta_fast, 'supports', lambda t, U=2, f=lwta_fast.supports: calls.append(f(t, U)) or f(t, U))
    layer = LWTA().train(training)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        h = conv(x)
        relu_out, lwta_out = torch.relu(h), layer(h)
    assert calls == [True] and lwta_out.dtype == relu_out.dtype == torch.bfloat16
    assert lwta_out.stride() == h.stride()
    lwta_out.float().sum().backward()
    assert conv.weight.grad.dtype == torch.float32 and conv.weight.grad.abs().sum() > 0


@pytest.mark.parametrize('U', [2, 4])
@pytest.mark.parametrize('shape', [(0, 8, 5, 7), (0, 8), (3, 0, 5, 5)])
def test_empty_inputs_give_empty_outputs_and_gradients(shape, U):
    for x in _layouts(torch.randn(shape)):
        xg = x.clone().requires_grad_(True)
        for training in (False, True):
            y = LWTA(U=U).train(training)(xg)
            (grad,) = torch.autograd.grad(y.sum(), xg)
            assert y.shape == grad.shape == x.shape
        y, kl = lwta_fast.relaxed(xg, 0.67, want_kl=True, U=U)
        (grad,) = torch.autograd.grad(y.sum() + kl.nan_to_num(), xg)
        assert grad.shape == x.shape
        assert lwta_fast.sample_(x.clone(), U=U).shape == x.shape


@pytest.mark.parametrize('U', [2, 4])
def test_winner_frequencies_match_softmax_at_the_noise_resolution(U):
    """16-bit uniforms resolve winner probabilities to 2^-16: for U=2 unit a wins with the multiple
    of 2^-16 nearest sigmoid(a - b) (u = (k + 0.5) / 2^16 < sigmoid(d) for that many k of 2^16); for
    general U each Gumbel takes 2^16 equiprobable values. 2^21 blocks a row of probabilities down to
    about 1e-3: every frequency within 5 standard errors of softmax (a bias of 2^-16 is far below one)."""
    logits = torch.tensor([0.2, -1.0, -3.0, -7.0, 2.5, 0.3, -5.0, 1.0])[: 2 * U]  # no zeros: _winner divides
    x = logits.repeat(2 ** 21 // 2 * U // len(logits), 1).view(-1, len(logits))  # 2^21 blocks
    p = _units(logits[None], U).softmax(2)[0].double()  # (blocks a row, U)
    freq = _one_hot(_winner(lwta_fast.sample(x, seed=77, U=U), x, U), U).double().mean(0)
    se = (p * (1 - p) / x.shape[0]).sqrt()
    assert ((freq - p).abs() <= 5 * se + 2 ** -16).all(), (freq, p)
    if U == 2:  # the resolution itself, from the definition: at most half a step from sigmoid(d)
        d = torch.linspace(-12, 12, 100_001, dtype=torch.float64)
        uniforms = (torch.arange(2 ** 16, dtype=torch.float64) + 0.5) / 2 ** 16  # every value, once
        resolved = torch.searchsorted(uniforms, torch.sigmoid(d)) / 2 ** 16  # the share of u < sigmoid(d)
        assert (resolved - torch.sigmoid(d)).abs().max() <= 2 ** -17
