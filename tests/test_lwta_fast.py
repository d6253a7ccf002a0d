"""The fused U=2 LWTA kernels against the eager reference: distribution, same-noise outputs
and gradients, noise independence, reproducibility, fallback."""
import math

import pytest
import torch

from lwta_zoo import LWTA, lwta
from lwta_zoo.kernels import cpu_library
from lwta_zoo.layers import lwta_fast, lwta_kl

pytestmark = pytest.mark.skipif(cpu_library() is None, reason='no C compiler: the fused kernels are not built')

SHAPES = [(3, 6, 5, 7), (4, 10), (2, 4, 16, 16)]  # odd runs, dense (S=1), runs of 256


def _pairs(y: torch.Tensor) -> torch.Tensor:
    return y.unflatten(1, (y.shape[1] // 2, 2))


def _logistic(shape, seed: int) -> torch.Tensor:
    """The logistic noise logit(u) the kernels draw for each block of an input of ``shape``."""
    u = lwta_fast.uniforms(math.prod(shape) // 2, seed).double()
    return (u.log() - (-u).log1p()).view(shape[0], shape[1] // 2, *shape[2:])


def _first_wins(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Whether the first unit of each block won: its weight y/x exceeds 1/2 (one-hot or relaxed)."""
    return _pairs(y)[:, :, 0] / _pairs(x)[:, :, 0] > 0.5


def test_fused_path_is_taken_only_where_it_applies():
    x = torch.randn(4, 8, 3, 3)
    assert lwta_fast.supports(x)
    assert not lwta_fast.supports(x.double()) and not lwta_fast.supports(x.transpose(2, 3))
    with lwta_fast.eager():
        assert not lwta_fast.supports(x)
    assert lwta_fast.supports(x)


@pytest.mark.parametrize('training', [False, True])
def test_winner_distribution_matches_softmax_and_the_eager_path(training):
    # 40,000 draws of 8 blocks; a frequency's standard error is <= 0.0025, so 0.0125 is
    # 5 standard errors from softmax and about 3.5 between the two estimates. In training
    # the relaxed weight of the first unit exceeds 1/2 exactly when the sample picks it.
    h = torch.randn(1, 16) * 1.5
    x = h.expand(40_000, -1).contiguous()
    expected = _pairs(h).softmax(2)[0, :, 0].double()
    fast = _first_wins(lwta(x, training=training, tau=0.67), x).double().mean(0)
    with lwta_fast.eager():
        ref = _first_wins(lwta(x, training=training, tau=0.67), x).double().mean(0)
    assert (fast - expected).abs().max() < 0.0125
    assert (fast - ref).abs().max() < 0.0125

@pytest.mark.parametrize('shape', SHAPES)
def test_exact_sample_and_gradient_equal_the_reference_for_the_same_noise(shape):
    x = torch.randn(shape, requires_grad=True)
    y = lwta_fast.sample(x, seed=123)
    first = (_pairs(x)[:, :, 0] - _pairs(x)[:, :, 1]).double() > _logistic(shape, 123)  # the eager rule
    xi = torch.stack((first, ~first), 2).to(x.dtype)
    # a block decides differently only if d is within rounding of the noise: allow 1 in 10^4
    assert (_pairs(y) != _pairs(x) * xi).any(2).float().mean() <= 1e-4
    w = torch.randn(shape)
    (y * w).sum().backward()
    same = (_pairs(y) == _pairs(x) * xi).all(2, keepdim=True)
    assert torch.equal(_pairs(x.grad) * same, _pairs(w) * xi * same)


@pytest.mark.parametrize('shape', SHAPES)
@pytest.mark.parametrize('tau', [0.67, 0.01])
def test_relaxed_sample_kl_and_gradients_equal_the_reference_for_the_same_noise(shape, tau):
    x = (torch.randn(shape) * 2).requires_grad_(True)
    w = torch.randn(shape)
    y, kl = lwta_fast.relaxed(x, tau, want_kl=True, seed=7)
    (grad,) = torch.autograd.grad((y * w).sum() + 3.0 * kl, x)

    xr = x.detach().double().requires_grad_(True)
    h = _pairs(xr)
    s = torch.sigmoid((h[:, :, 0] - h[:, :, 1] + _logistic(shape, 7)) / tau)  # softmax((h + g) / tau), U=2
    y_ref = (h * torch.stack((s, 1 - s), 2)).flatten(1, 2)
    kl_ref = lwta_kl(xr)
    (grad_ref,) = torch.autograd.grad((y_ref * w.double()).sum() + 3.0 * kl_ref, xr)
    assert torch.allclose(y.double(), y_ref, rtol=1e-4, atol=1e-5)
    assert torch.allclose(kl, kl_ref, rtol=1e-4, atol=1e-5)
    # the backward recovers the input from (y, d): float32 rounding scaled by 1/tau
    assert torch.allclose(grad.double(), grad_ref, rtol=1e-3, atol=1e-4 / tau)


def test_module_records_the_fused_kl_with_its_gradient():
    layer = LWTA().train()
    x = torch.randn(6, 8, 4, 4, requires_grad=True)
    layer(x)
    (g_fast,) = torch.autograd.grad(layer.kl, x)
    xr = x.detach().requires_grad_(True)
    kl_ref = lwta_kl(xr)
    (g_ref,) = torch.autograd.grad(kl_ref, xr)
    assert torch.allclose(layer.kl, kl_ref, rtol=1e-5)
    assert torch.allclose(g_fast, g_ref, atol=1e-6)


def test_uniforms_are_uniform():
    # chi-square of 2^18 draws over 64 bins: 63 degrees of freedom, P(chi2 > 120) < 1e-5
    u = lwta_fast.uniforms(1 << 18, seed=2024)
    assert u.min() > 0 and u.max() < 1
    counts = torch.histc(u, bins=64, min=0, max=1)
    expected = u.numel() / 64
    assert ((counts - expected) ** 2 / expected).sum() < 120


@pytest.mark.parametrize('offset', [1, 63, 64, 255, 256, 1024])
def test_noise_is_independent_across_blocks(offset):
    # Equal inputs: each block is a fair coin. Blocks `offset` apart (neighbours, Philox
    # lanes, chunk boundaries, rows) must be uncorrelated: |r| < 5/sqrt(n).
    x = torch.zeros(64, 2 * 32, 8, 8)  # 131,072 blocks, runs of 64
    win = _first_wins(lwta(x + 1.0), x + 1.0).flatten().double()
    assert abs(win.mean() - 0.5) < 5 * 0.5 / math.sqrt(win.numel())
    a, b = win[:-offset], win[offset:]
    r = torch.corrcoef(torch.stack((a, b)))[0, 1]
    assert abs(r) < 5 / math.sqrt(a.numel())


@pytest.mark.parametrize('training', [False, True])
def test_noise_is_fresh_on_every_call_and_reproducible_from_the_seed(training):
    x = torch.ones(256, 2 * 64)
    torch.manual_seed(0)
    w1, w2 = (_first_wins(lwta(x, training=training), x).flatten().double() for _ in range(2))
    r = torch.corrcoef(torch.stack((w1, w2)))[0, 1]
    assert abs(r) < 5 / math.sqrt(w1.numel())  # two calls: independent noise
    torch.manual_seed(0)
    assert torch.equal(_first_wins(lwta(x, training=training), x).flatten().double(), w1)


def test_result_does_not_depend_on_the_thread_count():
    x = torch.randn(8, 16, 9, 9)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = lwta_fast.relaxed(x, 0.67, want_kl=True, seed=5)
        torch.set_num_threads(2)
        two = lwta_fast.relaxed(x, 0.67, want_kl=True, seed=5)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one[0], two[0]) and torch.allclose(one[1], two[1])


def test_without_the_kernel_lwta_falls_back_to_eager(monkeypatch):
    monkeypatch.setenv('LWTA_ZOO_NO_KERNEL', '1')
    cpu_library.cache_clear()
    try:
        x = torch.randn(4, 6, 3, 3)
        assert cpu_library() is None and not lwta_fast.supports(x)
        y = LWTA().eval()(x)
        assert ((_pairs(y) != 0).sum(2) == 1).all()
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


@pytest.mark.parametrize('tau', [0.67, 0.01])
def test_saturated_blocks_stay_finite(tau):
    # |d| / tau far beyond expf's range: the winner takes all, nothing overflows into NaN
    x = torch.tensor([[1e4, -1e4, -1e4, 1e4]], requires_grad=True)
    y, kl = lwta_fast.relaxed(x, tau, want_kl=True)
    assert torch.allclose(y.detach(), torch.tensor([[1e4, 0.0, 0.0, 1e4]]), rtol=0, atol=1e-20)
    assert math.isclose(kl.item(), 2 * math.log(2), rel_tol=1e-5)
    assert torch.autograd.grad(y.sum() + kl, x)[0].isfinite().all()
    assert torch.equal(lwta_fast.sample(x.detach()), torch.tensor([[1e4, 0.0, 0.0, 1e4]]))
