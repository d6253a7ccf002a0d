"""The LWTA layer: competition, sampling distribution, relaxation, KL, modes, bad input."""
import math

import pytest
import torch
import torch.nn.functional as F

from lwta_zoo import LWTA, kl_divergence, lwta, set_mode
from lwta_zoo.layers import lwta_fast, lwta_kl


def _blocks(y: torch.Tensor, U: int) -> torch.Tensor:
    return y.unflatten(1, (y.shape[1] // U, U))


@pytest.mark.parametrize('shape', [(64, 12), (8, 12, 5, 5)])
@pytest.mark.parametrize('U', [2, 3, 4])
def test_eval_output_has_exactly_one_winner_per_block(shape, U):
    x = torch.randn(shape)
    y = LWTA(U=U).eval()(x)
    assert y.shape == x.shape
    nonzero = _blocks(y, U) != 0
    assert (nonzero.sum(2) == 1).all()
    # the winner passes its own linear response unchanged
    assert torch.equal(_blocks(y, U).sum(2), (_blocks(x, U) * nonzero).sum(2))


@pytest.mark.parametrize('U', [2, 4])
def test_winner_frequencies_match_softmax(U):
    # 40,000 draws of each block; the standard error of a frequency is <= 0.0025, so a
    # tolerance of 0.012 is about 5 standard errors.
    h = torch.randn(1, 6 * U) * 1.5
    draws = 40_000
    y = LWTA(U=U).eval()(h.expand(draws, -1).contiguous())
    freq = (_blocks(y, U) != 0).double().mean(0)
    expected = _blocks(h, U).softmax(2)[0].double()
    assert (freq - expected).abs().max() < 0.012


def test_conv_competition_is_positionwise_among_adjacent_maps():
    # Channels (0,1) and (2,3) form the blocks: a map can only lose to its neighbour.
    x = torch.zeros(1, 4, 2, 2)
    x[:, 0], x[:, 1] = 50.0, -50.0  # block 0: map 0 wins everywhere
    x[:, 2, 0, 0], x[:, 3, 1, 1] = 50.0, 50.0  # block 1: winner depends on the position
    y = set_mode(LWTA(), 'max')(x)
    assert (y[:, 0] == 50).all() and (y[:, 1] == 0).all()
    assert y[0, 2, 0, 0] == 50 and y[0, 3, 0, 0] == 0 and y[0, 3, 1, 1] == 50 and y[0, 2, 1, 1] == 0


def test_training_relaxation_and_gradients():
    layer = LWTA(tau=0.67).train()
    x = torch.randn(16, 8, 4, 4, requires_grad=True)
    y = layer(x)
    xi = _blocks(y, 2) / _blocks(x, 2)
    assert torch.allclose(xi.sum(2), torch.ones(()), atol=1e-5)  # soft weights on the simplex
    assert ((xi > 0) & (xi < 1)).any()  # relaxed, not one-hot
    (y.sum() + layer.kl).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_hard_straight_through_is_one_hot_forward_with_soft_gradient():
    layer = LWTA(hard=True).train()
    x = torch.randn(32, 6, requires_grad=True)
    y = layer(x)
    assert ((_blocks(y, 2) != 0).sum(2) == 1).all()
    y.pow(2).sum().backward()
    # the loser's response still gets a gradient through the relaxed sample
    assert (x.grad != 0).float().mean() > 0.9


def test_kl_is_finite_nonnegative_and_zero_for_equal_inputs():
    layer = LWTA(U=4).train()
    layer(torch.randn(10, 16, 3, 3))
    assert torch.isfinite(layer.kl) and layer.kl >= 0
    layer(torch.ones(10, 16, 3, 3))
    assert layer.kl.abs() < 1e-6
    # large gaps approach the maximum log U per block
    layer(torch.tensor([[100.0, 0.0, 0.0, 0.0]]))
    assert math.isclose(layer.kl.item(), math.log(4), rel_tol=1e-4)


def test_kl_matches_categorical_kl_from_torch_distributions():
    x = torch.randn(5, 6)
    q = torch.distributions.Categorical(logits=x.view(5, 3, 2))
    p = torch.distributions.Categorical(probs=torch.full((5, 3, 2), 0.5))
    expected = torch.distributions.kl_divergence(q, p).sum(1).mean()
    assert torch.allclose(lwta_kl(x, 2), expected, atol=1e-6)


def test_modes_max_and_mean():
    x = torch.randn(20, 8)
    hb = _blocks(x, 2)
    y_max = LWTA(mode='max').eval()(x)
    assert torch.equal(y_max, (hb * F.one_hot(hb.argmax(2), 2)).flatten(1))
    y_mean = LWTA(mode='mean').eval()(x)
    assert torch.allclose(y_mean, (hb * hb.softmax(2)).flatten(1))
    # the deterministic modes agree between calls; the sampled mode does not
    layer = LWTA().eval()
    assert not torch.equal(layer(x), layer(x))


def test_eval_tau_reproduces_the_authors_soft_test_time_samples():
    y = LWTA(eval_tau=0.01).eval()(torch.randn(200, 8))
    w = _blocks(y, 2)
    assert ((w != 0).sum(2) == 2).any()  # soft weights: both units non-zero somewhere


def test_straight_through_passes_softmax_gradient_in_eval():
    x = torch.randn(4, 6, requires_grad=True)
    lwta(x, straight_through=True).sum().backward()
    assert (x.grad != 0).all()


class _ReusesOneReLU(torch.nn.Module):
    """Like torchvision's ResNet blocks: one activation module called twice per forward."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.act = torch.nn.Linear(4, 8), torch.nn.Linear(8, 8), torch.nn.ReLU()

    def forward(self, x):
        return self.act(self.fc2(self.act(self.fc1(x))))


def test_kl_divergence_covers_every_call_of_a_reused_module_in_one_forward():
    from lwta_zoo import convert
    net = convert(_ReusesOneReLU()).train()
    x = torch.randn(3, 4)
    torch.manual_seed(1)
    net(x)
    kl = kl_divergence(net)
    torch.manual_seed(1)
    h1 = net.fc1(x)
    expected = lwta_kl(h1) + lwta_kl(net.fc2(net.act(h1)))
    assert torch.allclose(kl, expected)
    torch.manual_seed(1)
    net(x)  # the next forward replaces the KL rather than piling up
    assert torch.allclose(kl_divergence(net), expected)


@pytest.mark.parametrize('U', [1, 0, -2, 2.0, True])
def test_u_below_two_or_not_an_integer_is_rejected(U):
    with pytest.raises(ValueError, match='U >= 2'):
        LWTA(U=U)


def test_channels_not_divisible_by_u_names_layer_and_numbers():
    with pytest.raises(ValueError, match=r'10 channels are not divisible by U=4'):
        LWTA(U=4)(torch.randn(2, 10))


def test_bad_mode_and_temperature_are_rejected():
    with pytest.raises(ValueError, match='mode'):
        LWTA(mode='argmax')
    with pytest.raises(ValueError, match='temperature'):
        LWTA(tau=0)
    with pytest.raises(ValueError, match=r'\(N, C\)'):
        LWTA()(torch.randn(4))


def test_inplace_argument_is_accepted_like_relu():
    assert LWTA(True).inplace and LWTA(inplace=True).inplace and not LWTA().inplace
    x = torch.randn(3, 4, requires_grad=True)
    x0 = x.detach().clone()
    for training in (True, False):
        LWTA(inplace=True).train(training)(x)
        assert torch.equal(x.detach(), x0)  # autograd needs the input: a call it tracks leaves it alone
    # (inference overwriting the input on the fused path: tests/test_lwta_fast.py)


def test_straight_through_replaces_the_relaxed_samples_gradient_too():
    # with eval_tau (the authors' protocol) the forward is the soft sample, the backward softmax(h)
    x = torch.randn(64, 6, requires_grad=True)
    torch.manual_seed(3)
    y_st = lwta(x, eval_tau=0.01, straight_through=True)
    (g_st,) = torch.autograd.grad(y_st.sum(), x)
    torch.manual_seed(3)
    with lwta_fast.eager():  # the same noise as the straight-through call, which runs eager
        y = lwta(x, eval_tau=0.01)
    (g,) = torch.autograd.grad(y.sum(), x)
    assert torch.allclose(y_st, y, atol=1e-6)
    hb = _blocks(x, 2).detach().requires_grad_(True)
    xi = _blocks(y, 2).detach() / hb.detach()
    (expected,) = torch.autograd.grad((hb * (xi + hb.softmax(2) - hb.softmax(2).detach())).sum(), hb)
    assert torch.allclose(g_st, expected.flatten(1), atol=1e-5) and not torch.allclose(g_st, g, atol=1e-3)


def _binary_concrete_kl(delta: float, tau: float, prior_tau: float) -> float:
    """KL[Concrete((d, 0), tau) || Concrete((0, 0), prior_tau)] for U=2 by numerical integration.

    A 2-unit concrete sample is fixed by t = x1 - x2 of its logs, t = (d + L) / tau with L standard
    logistic, so the KL is the one-dimensional KL of those densities of t.
    """
    from scipy import integrate

    def log_density(t, d, temp):
        z = temp * t - d
        return math.log(temp) - z - 2 * math.log1p(math.exp(-z)) if z > -30 else math.log(temp) + z

    def integrand(t):
        log_q = log_density(t, delta, tau)
        return math.exp(log_q) * (log_q - log_density(t, 0.0, prior_tau))

    centre = delta / tau
    return integrate.quad(integrand, centre - 60 / tau, centre + 60 / tau, limit=400)[0]


@pytest.mark.parametrize('delta', [0.0, 1.5, -3.0])
def test_relaxed_kl_mean_over_draws_matches_the_concrete_kl_by_quadrature(delta):
    n = 200_000
    layer = LWTA(kl='relaxed', tau=0.67, prior_tau=0.5).train()
    x = torch.tensor([[delta, 0.0]]).repeat(n, 1)
    layer(x)
    expected = _binary_concrete_kl(delta, 0.67, 0.5)
    # per-draw estimates have a standard deviation below 1.5 here: 5 standard errors
    assert abs(layer.kl.item() - expected) < 5 * 1.5 / math.sqrt(n), (layer.kl.item(), expected)
    # and the relaxed KL is not the categorical one (at delta=0 the categorical KL is 0)
    if delta == 0.0:
        assert expected > 0.01 and lwta_kl(x[:1]).abs() < 1e-6


def test_relaxed_kl_scores_the_forward_sample_with_the_concrete_densities():
    """Per draw, log q - log p equals the simplex-space concrete densities (Maddison et al. eq. of
    Concrete(alpha, lambda)) at the sample the forward used, for U=4."""
    U, tau, prior_tau = 4, 0.67, 0.5
    layer = LWTA(U=U, kl='relaxed', tau=tau, prior_tau=prior_tau).train()
    x = torch.randn(1, U, dtype=torch.float64) * 2
    y = layer(x)
    xi = (y / x).squeeze(0).double()  # the relaxed sample: y = h * xi
    assert torch.isclose(xi.sum(), torch.tensor(1.0, dtype=torch.float64))

    def log_concrete(y, log_alpha, lam):
        n = len(y)
        return (math.lgamma(n) + (n - 1) * math.log(lam) + (log_alpha - (lam + 1) * y.log()).sum()
                - n * torch.logsumexp(log_alpha - lam * y.log(), 0))

    log_alpha = x.squeeze(0).log_softmax(0)
    expected = log_concrete(xi, log_alpha, tau) - log_concrete(xi, torch.zeros(U, dtype=torch.float64), prior_tau)
    assert torch.isclose(layer.kl.double(), expected, rtol=1e-4, atol=1e-4)


def test_relaxed_kl_is_differentiable_and_closed_form_is_the_default():
    layer = LWTA(kl='relaxed').train()
    x = torch.randn(8, 6, 3, 3, requires_grad=True)
    (layer(x).sum() + layer.kl).backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert "kl='relaxed'" in repr(layer) and LWTA().kl_form == 'closed'
    closed = LWTA().train()
    closed(x.detach())
    assert torch.allclose(closed.kl, lwta_kl(x.detach()))
    with pytest.raises(ValueError, match='kl must be one of'):
        LWTA(kl='exact')
