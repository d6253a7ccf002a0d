"""The benchmark yardsticks: batched-EoT cross-entropy equals the EoT loop; the reference LWTA samples softmax."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from benchmarks.eot import EoTCrossEntropy
from benchmarks.reference import to_reference
from lwta_zoo import LWTA


class _Draws(nn.Module):
    """A 'stochastic' model whose k-th call in a batch of k copies is a known function."""

    def __init__(self, samples: int):
        super().__init__()
        self.w = nn.Parameter(torch.randn(samples, 3, 5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.w.shape[0]
        return torch.einsum('kni,kic->knc', x.unflatten(0, (k, -1)) ** 2, self.w).flatten(0, 1)


def test_eot_logits_give_the_mean_cross_entropy_and_its_gradient():
    k, x, y = 4, torch.randn(6, 3, requires_grad=True), torch.randint(0, 5, (6,))
    model = _Draws(k)
    loss = F.cross_entropy(EoTCrossEntropy(model, k, y)(x), y, reduction='none')
    (grad,) = torch.autograd.grad(loss.sum(), x)
    z = model(x.repeat(k, 1)).unflatten(0, (k, 6))
    loop = torch.stack([F.cross_entropy(z[i], y, reduction='none') for i in range(k)]).mean(0)
    (grad_loop,) = torch.autograd.grad(loop.sum(), x)
    assert torch.allclose(loss, loop, atol=1e-5) and torch.allclose(grad, grad_loop, atol=1e-5)
    with pytest.raises(ValueError, match='6 labels'):
        EoTCrossEntropy(model, k, y)(x[:2])


@pytest.mark.parametrize('training', [False, True])
def test_reference_lwta_winner_frequencies_match_softmax(training):
    h = torch.randn(1, 8) * 1.5
    x = h.expand(40_000, -1).contiguous()
    y = to_reference(nn.Sequential(LWTA())).train(training)(x)
    assert isinstance(y, torch.Tensor)
    first = (y.unflatten(1, (4, 2))[:, :, 0] / x.unflatten(1, (4, 2))[:, :, 0] > 0.5).double().mean(0)
    assert (first - h.unflatten(1, (4, 2)).softmax(2)[0, :, 0]).abs().max() < 0.0125  # 5 standard errors
