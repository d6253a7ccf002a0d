"""BatchNorm fused into LWTA (``BatchNormLWTA2d``) against nn.BatchNorm2d followed by LWTA: same
samples for the same seed, outputs, gradients, KL and running statistics; where the zoo's models
and ``convert`` fuse; NaN inputs in every mode."""
import copy
import math

import pytest
import timm
import torch
import torch.nn as nn
import torchvision

import lwta_zoo
from lwta_zoo import LWTA, BatchNormLWTA2d, WideResNet, convert, fuse_batchnorm_lwta, unfuse_batchnorm_lwta
from lwta_zoo.kernels import cpu_library
from lwta_zoo.layers import kl_divergence, lwta_fast

from test_lwta_fast import _noise, _units

kernels = pytest.mark.skipif(cpu_library() is None, reason='no C compiler: the fused kernels are not built')


def _pair(C: int = 8, U: int = 2, **lwta_args) -> nn.Sequential:
    """BatchNorm2d then LWTA, with BatchNorm parameters and statistics away from their defaults."""
    torch.manual_seed(5)
    bn = nn.BatchNorm2d(C)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2), bn.bias.uniform_(-1, 1), bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    return nn.Sequential(bn, LWTA(U=U, **lwta_args))


def _both(pair: nn.Sequential):
    """The pair unfused, and a fused copy (its own parameters)."""
    return pair, fuse_batchnorm_lwta(copy.deepcopy(pair))


def _run(model: nn.Module, x: torch.Tensor, w: torch.Tensor, seed: int = 3):
    """Output, KL, and the gradients of (y * w).sum() + 3 KL with respect to x and the parameters."""
    x = x.clone().requires_grad_(True)
    torch.manual_seed(seed)
    y = model(x)
    kl = kl_divergence(model) if model.training else torch.zeros(())
    grads = torch.autograd.grad((y.float() * w).sum() + 3 * kl, [x, *model.parameters()])
    return y.detach(), kl.detach(), grads


def _close(a: torch.Tensor, b: torch.Tensor, rtol: float, atol: float) -> bool:
    return torch.allclose(a.float(), b.float(), rtol=rtol, atol=atol)


@kernels
@pytest.mark.parametrize('U', [2, 4])
@pytest.mark.parametrize('layout', ['nchw', 'nhwc'])
@pytest.mark.parametrize('mode', ['train', 'train-hard', 'eval', 'eval-tau'])
def test_fused_equals_batchnorm_then_lwta(U, layout, mode):
    lwta_args = {'hard': mode == 'train-hard', 'eval_tau': 0.5 if mode == 'eval-tau' else None}
    plain, fused = _both(_pair(8, U, **lwta_args))
    assert isinstance(fused[0], BatchNormLWTA2d) and isinstance(fused[1], nn.Identity)
    for m in (plain, fused):
        m.train(mode.startswith('train'))
    fmt = torch.channels_last if layout == 'nhwc' else torch.contiguous_format
    x = (torch.randn(6, 8, 5, 7) * 2 + 1).contiguous(memory_format=fmt)
    w = torch.randn(x.shape)
    y0, kl0, g0 = _run(plain, x, w)
    y1, kl1, g1 = _run(fused, x, w)
    assert y1.stride() == y0.stride()
    if mode == 'eval':  # the same samples of the same normalised values (to float rounding)
        assert torch.equal(y1 == 0, y0 == 0)
    assert _close(y1, y0, 1e-5, 1e-5) and _close(kl1, kl0, 1e-5, 1e-6)
    tol = 1e-3 if mode == 'eval-tau' else 1e-4  # the relaxation at tau 0.5 doubles float rounding
    for a, b in zip(g1, g0):
        assert _close(a, b, tol, tol * b.abs().max().item())
    for a, b in zip(fused.buffers(), plain.buffers()):
        assert _close(a, b, 1e-6, 1e-7)


@kernels
def test_fused_takes_bfloat16_and_keeps_it():
    plain, fused = _both(_pair(8, 2))
    x = torch.randn(4, 8, 6, 6).bfloat16().contiguous(memory_format=torch.channels_last)
    w = torch.randn(x.shape)
    for train in (True, False):
        plain.train(train), fused.train(train)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            (y0, _, g0), (y1, _, g1) = _run(plain, x, w), _run(fused, x, w)
        assert y1.dtype == g1[0].dtype == torch.bfloat16 and y1.is_contiguous(memory_format=torch.channels_last)
        # the unfused path rounds BatchNorm's output to bfloat16 before LWTA: within a few bfloat16 steps
        assert _close(y1, y0, 3e-2, 3e-2)
        for a, b in zip(g1, g0):
            assert _close(a, b, 5e-2, 5e-2 * b.abs().max().item())


@kernels
@pytest.mark.parametrize('momentum,track', [(0.1, True), (None, True), (0.3, False)])
def test_running_statistics_after_steps_match_batchnorm(momentum, track):
    bn = nn.BatchNorm2d(8, momentum=momentum, track_running_stats=track)
    plain, fused = _both(nn.Sequential(bn, LWTA()))
    for step in range(5):
        x = torch.randn(4, 8, 3, 3) * (step + 1) + step
        _run(plain.train(), x, torch.randn(x.shape)), _run(fused.train(), x, torch.randn(x.shape))
    state0, state1 = plain.state_dict(), fused.state_dict()
    assert list(state0) == list(state1)
    for k in state0:
        assert _close(state1[k], state0[k], 1e-5, 1e-6), k
    if track:
        assert state1['0.num_batches_tracked'] == 5
    x = torch.randn(4, 8, 3, 3)  # eval: running statistics, or the batch's without them
    y1, y0 = _run(fused.eval(), x, x)[0], _run(plain.eval(), x, x)[0]
    assert torch.equal(y1 == 0, y0 == 0) and _close(y1, y0, 1e-5, 1e-6)


@kernels
@pytest.mark.parametrize('U', [2, 3])
def test_fused_training_gradient_equals_the_float64_reference_that_gradcheck_verifies(U):
    # the reference: BatchNorm with batch statistics then the concrete relaxation with the kernels' noise
    shape, tau, seed = (3, 2 * U, 2, 3), 0.67, 41
    noise = _noise(shape, U, seed)

    def reference(x, w, b):
        mean, var = x.mean((0, 2, 3), keepdim=True), x.var((0, 2, 3), unbiased=False, keepdim=True)
        z = (x - mean) / (var + 1e-5).sqrt() * w.view(1, -1, 1, 1) + b.view(1, -1, 1, 1)
        h = _units(z, U)
        y = (h * ((h + noise) / tau).softmax(2)).flatten(1, 2)
        log_q = h.log_softmax(2)
        return y, (log_q.exp() * (log_q + math.log(U))).sum(2).flatten(1).sum(1).mean()  # lwta_kl, in float64

    g = torch.Generator().manual_seed(0)
    x, w, b = torch.randn(shape, generator=g) * 2, torch.rand(shape[1], generator=g) + 0.5, torch.randn(shape[1], generator=g)
    gy = torch.randn(shape, generator=g)
    args64 = [t.double().requires_grad_(True) for t in (x, w, b)]
    assert torch.autograd.gradcheck(lambda *a: (lambda y, kl: (y * gy.double()).sum() + 3 * kl)(*reference(*a)), args64)
    y_ref, kl_ref = reference(*args64)
    grads_ref = torch.autograd.grad((y_ref * gy.double()).sum() + 3 * kl_ref, args64)

    args = [t.clone().requires_grad_(True) for t in (x, w, b)]
    y, mean, var, kl = lwta_fast.batchnorm_train(*args, eps=1e-5, tau=tau, U=U, seed=seed)
    grads = torch.autograd.grad((y * gy).sum() + 3 * kl, args)
    assert torch.allclose(y.double(), y_ref, rtol=1e-4, atol=1e-5)
    assert torch.allclose(kl.double(), kl_ref, rtol=1e-4, atol=1e-6)
    assert torch.allclose(mean.double(), x.double().mean((0, 2, 3)), atol=1e-6)
    for a, r in zip(grads, grads_ref):
        assert torch.allclose(a.double(), r, rtol=1e-3, atol=1e-4)


@kernels
def test_a_wrn34_1_step_fused_equals_unfused():
    torch.manual_seed(0)
    fused = WideResNet(depth=34, widen_factor=1, act='lwta')
    plain = unfuse_batchnorm_lwta(copy.deepcopy(fused))
    assert sum(isinstance(m, BatchNormLWTA2d) for m in fused.modules()) == 31
    assert not any(isinstance(m, BatchNormLWTA2d) for m in plain.modules())
    x, target = torch.rand(8, 3, 32, 32), torch.randint(0, 10, (8,))
    for model in (fused, plain):
        optim = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        torch.manual_seed(1)
        loss = nn.functional.cross_entropy(model.train()(x), target) + kl_divergence(model) / 50_000
        loss.backward()
        optim.step()
        model.loss = loss.item()
    assert fused.loss == pytest.approx(plain.loss, rel=1e-5)
    for (k, a), b in zip(fused.state_dict().items(), plain.state_dict().values()):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5), k
    with torch.no_grad():
        torch.manual_seed(2)
        y1 = fused.eval()(x)
        torch.manual_seed(2)
        y0 = plain.eval()(x)
    assert torch.allclose(y1, y0, rtol=1e-4, atol=1e-4)


def test_zoo_models_fuse_every_batchnorm_that_feeds_an_lwta_with_unchanged_keys():
    for name, fused_count in (('wrn34_1', 31), ('vgg16_cifar', 13), ('smallcnn_mnist', 3)):
        relu, lwta_model = (timm.create_model(n) for n in (name, name + '_lwta'))
        assert list(relu.state_dict()) == list(lwta_model.state_dict())
        assert not any(isinstance(m, BatchNormLWTA2d) for m in relu.modules())
        assert sum(isinstance(m, BatchNormLWTA2d) for m in lwta_model.modules()) == fused_count, name
        # every LWTA that reads a BatchNorm is inside one; the dense head's reads a Linear
        loose = [m for m in lwta_model.modules() if isinstance(m, LWTA)]
        assert len(loose) - fused_count == (1 if name == 'smallcnn_mnist' else 0)


def test_fuse_and_unfuse_round_trip_and_refuse_what_is_not_a_pair():
    torch.manual_seed(0)
    model = WideResNet(depth=10, widen_factor=1, act='lwta')
    keys = list(model.state_dict())
    unfuse_batchnorm_lwta(model)
    assert model.block1.layer[0].relu1.__class__ is LWTA and list(model.state_dict()) == keys
    fuse_batchnorm_lwta(model)
    assert isinstance(model.block1.layer[0].bn1, BatchNormLWTA2d) and isinstance(model.bn1.act, LWTA)
    # torchvision's BasicBlock calls one ReLU twice: that LWTA is not fused; the stem's is
    net = convert(torchvision.models.resnet18(num_classes=10))
    assert isinstance(net.bn1, BatchNormLWTA2d) and isinstance(net.layer1[0].relu, LWTA)
    assert not any(isinstance(m, BatchNormLWTA2d) for m in convert(torchvision.models.resnet18(), fuse=False).modules())


@kernels
def test_other_modes_and_straight_through_run_batchnorm_then_lwta():
    plain, fused = _both(_pair(8, 2))
    x = torch.randn(4, 8, 3, 3)
    for mode in ('max', 'mean'):
        lwta_zoo.set_mode(plain, mode), lwta_zoo.set_mode(fused, mode)
        assert torch.equal(_run(fused.eval(), x, x)[0], _run(plain.eval(), x, x)[0])
    lwta_zoo.set_mode(plain, 'sample'), lwta_zoo.set_mode(fused, 'sample')
    plain[1].straight_through = fused[0].act.straight_through = True
    (y0, _, g0), (y1, _, g1) = _run(plain.eval(), x, x), _run(fused.eval(), x, x)
    assert torch.equal(y1, y0) and all(torch.equal(a, b) for a, b in zip(g1, g0))


def test_a_hook_on_the_lwta_sees_batchnorms_output_as_unfused():
    """A forward hook on the fused module's LWTA (the winner-probability figure reads its input) still fires,
    with BatchNorm's output as its input, and the output is the fused one's."""
    plain, fused = _both(_pair(8, 2))
    x = torch.randn(4, 8, 3, 3)
    seen = []
    handle = fused[0].act.register_forward_hook(lambda module, inputs, out: seen.append(inputs[0]))
    torch.manual_seed(0)
    with torch.no_grad():
        y_hooked = fused.eval()(x)
    handle.remove()
    torch.manual_seed(0)
    with torch.no_grad():
        y = fused(x)
    assert len(seen) == 1 and torch.allclose(seen[0], plain.eval()[0](x), atol=1e-6)
    # the same winners (BatchNorm rounded as a scale and shift in the fused pass: within an ulp or so)
    assert torch.equal(y_hooked == 0, y == 0) and torch.allclose(y_hooked, y, atol=1e-5)


CASES = [('train', 'sample', False), ('eval', 'sample', False), ('eval-tau', 'sample', False),
         ('eval', 'max', False), ('eval', 'mean', False), ('train', 'sample', True), ('eval', 'sample', True),
         ('eval-tau', 'sample', True), ('train-bn', 'sample', False), ('eval-bn', 'sample', False)]


@pytest.mark.parametrize('U', [2, 4])
@pytest.mark.parametrize('case,mode,eager', CASES)
def test_a_nan_input_makes_its_block_nan_in_every_mode_and_path(case, mode, eager, U):
    """As ReLU passes a NaN on, every unit of a block with a NaN is NaN; the others stay finite
    (with a BatchNorm in training, the NaN's whole channel is NaN: its batch mean is)."""
    x = torch.randn(3, 4 * U, 2, 2)
    x[1, U, 0, 1] = math.nan  # unit 0 of block 1 at one position
    training = case.startswith('train')
    model = LWTA(U=U, mode=mode, eval_tau=0.5 if case == 'eval-tau' else None).train(training)
    z = x
    if case.endswith('-bn'):
        model = fuse_batchnorm_lwta(nn.Sequential(nn.BatchNorm2d(4 * U), model)).train(training)
        assert isinstance(model[0], BatchNormLWTA2d)
        z = nn.BatchNorm2d(4 * U).train(training)(x)
    expected = z.unflatten(1, (4, U)).isnan().any(2, keepdim=True).expand(-1, -1, U, -1, -1).flatten(1, 2)
    if eager:
        with lwta_fast.eager():
            y = model(x)
    else:
        y = model(x)
    assert expected.any() and not expected.all() and torch.equal(y.isnan(), expected)
