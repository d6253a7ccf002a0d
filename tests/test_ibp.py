"""IBP architecture sampling: distributions, KL terms, limiting cases, modes, KL collection, report."""
import pytest
import torch
import torch.nn as nn
from torch.distributions import Bernoulli, Beta, Kumaraswamy, kl_divergence as td_kl
from torch.distributions.relaxed_bernoulli import LogitRelaxedBernoulli

from lwta_zoo.layers import LWTA, IBPConv2d, IBPLinear, IBPMask, ibp_keep_fraction, kl_divergence, set_mode
from lwta_zoo.layers.ibp import binary_concrete_log_density, kumaraswamy_beta_kl, kumaraswamy_log_rsample

A = torch.tensor([0.5, 1.0, 2.0, 5.0, 30.0], dtype=torch.float64)
B = torch.tensor([0.7, 1.0, 3.0, 1.5, 1.0], dtype=torch.float64)


def test_kumaraswamy_sample_is_the_inverse_cdf_of_torchs_kumaraswamy():
    x = torch.tensor([0.01, 0.3, 0.5, 0.77, 0.99], dtype=torch.float64)
    u = kumaraswamy_log_rsample(A, B, x).exp()
    dist = Kumaraswamy(A, B)
    torch.testing.assert_close(u, dist.icdf(x))
    torch.testing.assert_close(dist.cdf(u), x)
    # a known value: a=2, b=3, x=1/2 gives (1 - 2^(-1/3))^(1/2)
    assert u[2].item() == pytest.approx((1 - 0.5 ** (1 / 3)) ** 0.5, rel=1e-12)


def test_kumaraswamy_sample_is_reparameterised():
    a, b = A.clone().requires_grad_(), B.clone().requires_grad_()
    kumaraswamy_log_rsample(a, b, torch.full_like(a, 0.4)).sum().backward()
    assert torch.isfinite(a.grad).all() and (a.grad != 0).all() and (b.grad != 0).all()


@pytest.mark.parametrize('alpha', [1.0, 0.5, 4.0])
def test_kumaraswamy_beta_kl_matches_numerical_integration(alpha):
    # E_q[log q(u) - log p(u)] with u = F_q^{-1}(x) on a fine midpoint grid of x in (0, 1)
    x = (torch.arange(200_000, dtype=torch.float64) + 0.5) / 200_000
    a, b = A[:4, None], B[:4, None]
    u = kumaraswamy_log_rsample(a, b, x).exp().clamp(1e-300, 1 - 1e-16)
    numeric = (Kumaraswamy(a, b).log_prob(u) - Beta(torch.tensor(alpha, dtype=torch.float64), 1.0).log_prob(u)).mean(1)
    torch.testing.assert_close(kumaraswamy_beta_kl(a[:, 0], b[:, 0], alpha), numeric, rtol=2e-3, atol=2e-4)


def test_kumaraswamy_beta_kl_is_zero_where_the_distributions_coincide():
    # Kumaraswamy(a, 1) is Beta(a, 1): density a u^(a-1)
    a = torch.tensor([0.3, 1.0, 7.0])
    torch.testing.assert_close(kumaraswamy_beta_kl(a, torch.ones(3), a), torch.zeros(3), atol=1e-6, rtol=0)
    assert (kumaraswamy_beta_kl(torch.tensor([2.0, 0.5]), torch.tensor([3.0, 1.0]), 1.0) > 0).all()


def test_binary_concrete_density_matches_torch():
    y, logit = torch.linspace(-6, 6, 13), torch.linspace(-2, 3, 13)
    for tau in (0.5, 0.67):
        torch.testing.assert_close(binary_concrete_log_density(y, logit, tau),
                                   LogitRelaxedBernoulli(torch.tensor(tau), logits=logit).log_prob(y))


def _fix_prior(mask: IBPMask, log_pi: torch.Tensor) -> None:
    mask.prior_log_pi = lambda: log_pi  # the stick draw, pinned so the KL of z is a known number


def test_bernoulli_kl_of_z_matches_torch():
    mask = IBPMask((4, 3), z_kl='bernoulli')
    with torch.no_grad():
        mask.pi_logit.copy_(torch.randn(4, 3))
    log_pi = torch.tensor([0.5, 0.3, 0.1]).log()
    _fix_prior(mask, log_pi)
    expected = td_kl(Bernoulli(mask.pi), Bernoulli(log_pi.exp().expand(4, 3))).sum()
    torch.testing.assert_close(mask._kl_z(torch.zeros(4, 3)), expected)


def test_relaxed_kl_of_z_is_the_one_sample_estimate_and_vanishes_for_equal_relaxations():
    mask = IBPMask((2, 3), tau=0.67, prior_tau=0.5)
    log_pi = torch.tensor([0.9, 0.5, 0.2]).log()
    _fix_prior(mask, log_pi)
    y = torch.randn(2, 3)
    prior_logit = (log_pi - torch.log1p(-log_pi.exp())).expand(2, 3)
    expected = (LogitRelaxedBernoulli(torch.tensor(0.67), logits=mask.pi_logit).log_prob(y)
                - LogitRelaxedBernoulli(torch.tensor(0.5), logits=prior_logit).log_prob(y)).sum()
    torch.testing.assert_close(mask._kl_z(y), expected)
    same = IBPMask((2, 3), tau=0.5, prior_tau=0.5)
    with torch.no_grad():
        same.pi_logit.copy_(prior_logit)
    _fix_prior(same, log_pi)
    assert abs(same._kl_z(y).item()) < 1e-4


def _keep_everything(layer: nn.Module) -> nn.Module:
    """Posterior pi~ = 1 and sticks and prior concentrated at u = 1 (pi_k = 1 for every k)."""
    with torch.no_grad():
        layer.ibp.pi_logit.fill_(30.0)
        layer.ibp.stick_a.fill_(1e6)  # softplus(1e6) = 1e6: Kumaraswamy(1e6, 1) sits at 1
    layer.ibp.alpha = 1e6
    return layer


@pytest.mark.parametrize('training', [True, False])
def test_ibp_layers_keeping_everything_equal_their_plain_layers(training):
    x = torch.randn(5, 8)
    dense = _keep_everything(IBPLinear(8, 6, U=2, ibp_args=dict(z_kl='bernoulli'))).train(training)
    plain = nn.Linear(8, 6)
    plain.load_state_dict({k: v for k, v in dense.state_dict().items() if not k.startswith('ibp.')})
    torch.testing.assert_close(dense(x), plain(x))
    img = torch.randn(2, 3, 6, 6)
    conv = _keep_everything(IBPConv2d(3, 4, 3, U=2, padding=1, ibp_args=dict(z_kl='bernoulli'))).train(training)
    plain_conv = nn.Conv2d(3, 4, 3, padding=1)
    plain_conv.load_state_dict({k: v for k, v in conv.state_dict().items() if not k.startswith('ibp.')})
    torch.testing.assert_close(conv(img), plain_conv(img))
    if training:  # the posterior equals the prior: nothing to pay
        assert 0 <= dense.ibp.kl.item() < 1e-3 and 0 <= conv.ibp.kl.item() < 1e-3


@pytest.mark.parametrize('training', [True, False])
def test_ibp_layers_with_pi_driven_to_zero_output_zero(training):
    with torch.no_grad():
        dense = IBPLinear(8, 6, U=3).train(training)
        conv = IBPConv2d(3, 4, 3, U=2, padding=1).train(training)
        nobias = IBPLinear(8, 6, bias=False).train(training)
        for layer in (dense, conv, nobias):
            layer.ibp.pi_logit.fill_(-40.0)
        out = dense(torch.randn(5, 8))
        torch.testing.assert_close(out, dense.bias.expand(5, 6), atol=1e-6, rtol=0)  # no input reaches it
        torch.testing.assert_close(conv(torch.randn(2, 3, 6, 6)), torch.zeros(2, 4, 6, 6), atol=1e-6, rtol=0)
        torch.testing.assert_close(nobias(torch.randn(5, 8)), torch.zeros(5, 6), atol=1e-6, rtol=0)


def test_dense_mask_gates_connections_per_block_and_conv_mask_whole_kernels():
    dense = IBPLinear(4, 6, U=2, bias=False).eval()
    with torch.no_grad():
        dense.ibp.pi_logit.fill_(40.0)
        dense.ibp.pi_logit[1, 2] = -40.0  # input 1 -> block 2 (outputs 4 and 5) is cut
        x = torch.zeros(1, 4)
        x[0, 1] = 1.0
        out = dense(x)
    torch.testing.assert_close(out[0, :4], dense.weight[:4, 1].detach())
    assert (out[0, 4:] == 0).all()
    conv = IBPConv2d(2, 6, 1, U=3).eval()
    with torch.no_grad():
        conv.ibp.pi_logit.copy_(torch.tensor([40.0, -40.0]))
        out = conv(torch.randn(1, 2, 3, 3))
    assert (out[:, 3:] == 0).all() and (out[:, :3] != 0).all()


def test_eval_draws_bernoulli_masks_with_a_cutoff_and_modes():
    mask = IBPMask((20000,), cutoff=0.05).eval()
    with torch.no_grad():
        mask.pi_logit.copy_(torch.tensor([0.3, 0.04]).log().sub(torch.tensor([0.7, 0.96]).log()).repeat(10000))
    z = mask()
    assert set(z.unique().tolist()) <= {0.0, 1.0}
    assert z[0::2].mean().item() == pytest.approx(0.3, abs=0.02)
    assert (z[1::2] == 0).all()  # pi~ = 0.04 is below the cut-off: pruned, never drawn
    mask.mode = 'mean'
    torch.testing.assert_close(mask()[:2], torch.tensor([0.3, 0.0]))
    mask.mode = 'max'
    assert mask()[:2].tolist() == [0.0, 0.0]
    mask.eval_tau = 0.01
    mask.mode = 'sample'
    soft = mask()
    assert ((soft > 0) & (soft < 1)).any()  # the authors' soft test-time relaxation


def test_training_draws_relaxed_masks_and_kl_reaches_the_variational_parameters():
    mask = IBPMask((50, 4)).train()
    z = mask()
    assert ((z > 0) & (z < 1)).all()
    mask.kl.backward()
    for p in (mask.pi_logit, mask.stick_a, mask.stick_b):
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


def test_kl_is_collected_with_lwta_and_cleared_by_eval_forwards():
    model = nn.Sequential(IBPConv2d(1, 4, 3, U=2, padding=1), LWTA(U=2), nn.Flatten(), IBPLinear(4 * 5 * 5, 6, U=2),
                          LWTA(U=2))
    model.train()(torch.randn(3, 1, 5, 5))
    terms = [model[0].ibp.kl, model[1].kl, model[3].ibp.kl, model[4].kl]
    assert all(t is not None for t in terms)
    torch.testing.assert_close(kl_divergence(model), torch.stack(terms).sum())
    model.eval()(torch.randn(3, 1, 5, 5))
    assert model[0].ibp.kl is None and model[3].ibp.kl is None


def test_keep_fraction_report_counts_pruned_connections_and_kernels():
    model = nn.Sequential(IBPConv2d(1, 4, 3, U=2), IBPLinear(10, 4))
    with torch.no_grad():
        model[0].ibp.pi_logit[0] = -10.0  # 1 of 2 kernels pruned
        model[1].ibp.pi_logit[:5] = -10.0  # 20 of 40 connections pruned
    conv, dense, total = ibp_keep_fraction(model)
    assert (conv['unit'], conv['units'], conv['kept'], conv['kept_frac']) == ('kernels', 2, 1, 0.5)
    assert (dense['unit'], dense['units'], dense['kept'], dense['weights_kept']) == ('connections', 40, 20, 20)
    assert conv['weights_kept'] == 18 and total['weights'] == 36 + 40 and total['weights_kept'] == 38
    assert dense['expected_frac'] == pytest.approx(0.5 * 0.99, rel=1e-5)


def test_set_ibp_mode_and_bad_arguments():
    model = nn.Sequential(IBPLinear(3, 4))
    assert set_mode(model, 'mean')[0].ibp.mode == 'mean'
    with pytest.raises(ValueError, match='mode'):
        set_mode(model, 'soft')
    with pytest.raises(ValueError, match='U=3 must be a positive integer dividing the 4'):
        IBPLinear(3, 4, U=3)
    with pytest.raises(ValueError, match='IBPConv2d: U=0'):
        IBPConv2d(3, 4, 3, U=0)
    with pytest.raises(ValueError, match='z_kl'):
        IBPMask((3,), z_kl='exact')
    with pytest.raises(ValueError, match='positive'):
        IBPMask((3,), tau=0.0)
    with pytest.raises(ValueError, match='pi_init'):
        IBPMask((3,), pi_init=1.0)
    with pytest.raises(RuntimeError):
        IBPLinear(3, 4)(torch.randn(2, 5))
