"""The Triton kernels (the CUDA side of the fused LWTA ops) against the C kernels: the same
uniforms bit for bit, the same exact samples and winners, and relaxed outputs, saved
differences, KL and gradients to float rounding, for the same seed.

On a GPU machine (benchmarks/gpu_check.py runs this file there) the Triton side runs on CUDA
tensors. Without a GPU the kernels run under Triton's interpreter on CPU tensors. It is chosen
by TRITON_INTERPRET=1 when a kernel is decorated, Triton's own helpers (``tl.philox``)
included, which are decorated when triton is imported, and ``import lwta_zoo`` imports
triton already (torchvision imports torch._dynamo). So the Triton side runs in one
subprocess started with the variable set (this file run as a script): it routes the custom
ops to the Triton launchers and computes what ``_outputs()`` computes here with the C kernels.
"""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, Tuple

import pytest
import torch

from lwta_zoo.kernels import cpu_library
from lwta_zoo.layers import lwta_fast, lwta_kl

pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec('triton') is None, reason='triton is not installed'),
    pytest.mark.skipif(cpu_library() is None, reason='no C compiler: no C kernels to compare with'),
]

# dense over 2 tiles of positions, the last one partial; conv with 35 positions, tiles straddling
# examples; U = 2, 3, 4, 16 divide the 48 channels (G = 24, 16, 12, 3: full and partial draws of 8
# blocks); conv inputs contiguous ('nchw') and channels_last ('nhwc')
CASES = [((40, 48), U, 'nchw') for U in (2, 3, 4, 16)] + [
    ((2, 48, 5, 7), U, layout) for U in (2, 3, 4, 16) for layout in ('nchw', 'nhwc')]
HALF_CASES = [((2, 48, 5, 7), U, dtype, layout) for U in (2, 4)
              for dtype, layout in (('float16', 'nchw'), ('bfloat16', 'nchw'), ('bfloat16', 'nhwc'))]
UNIFORM_CASES = [(seed, unit) for seed in (0, 5, 2 ** 31 + 7, 2 ** 63 + 12345, 2 ** 64 - 1) for unit in (0, 3)]
UNIFORM_SHAPE = (3, 2 * 20, 5, 7)
SEED, TAU, KL_WEIGHT = -2 ** 62 - 2024, 0.67, 3.0  # the ops take signed seeds; this one sets bit 63
Case = Tuple[Tuple[int, ...], int, str, str]


def _inputs(shape: Tuple[int, ...], U: int, dtype: str, layout: str = 'nchw') -> Tuple[torch.Tensor, torch.Tensor]:
    """The input and the upstream gradient of a case, representable in ``dtype``, in the layout."""
    g = torch.Generator().manual_seed(100 * len(shape) + U)
    x, gy = torch.randn(shape, generator=g) * 2, torch.randn(shape, generator=g)
    fmt = torch.channels_last if layout == 'nhwc' else torch.contiguous_format
    return tuple(t.to(getattr(torch, dtype)).contiguous(memory_format=fmt) for t in (x, gy))


def _outputs(case: Case, compute: str, device: str = 'cpu') -> Dict[str, torch.Tensor]:
    """A case's exact sample, relaxed samples (soft, hard), their saved tensors, KL and
    gradients, through the custom ops and their autograd, in the dtype ``compute``, computed on
    ``device`` and returned on the CPU."""
    shape, U, dtype, layout = case
    x, gy = (t.to(device=device, dtype=getattr(torch, compute)) for t in _inputs(shape, U, dtype, layout))
    x.requires_grad_(True)
    out = {}
    y, out['idx'] = torch.ops.lwta_zoo.lwta_sample(x, U, SEED, True)
    out['sample'], (out['sample_grad'],) = y, torch.autograd.grad((y * gy).sum(), x)
    out['sample_unsaved'] = torch.ops.lwta_zoo.lwta_sample(x, U, SEED, False)[0]  # inference: no idx, d, KL
    out['sample_inplace'] = x.detach().clone()  # LWTA(inplace=True) in inference: written over its input
    torch.ops.lwta_zoo.lwta_sample_(out['sample_inplace'], U, SEED)
    out['y_unsaved'] = torch.ops.lwta_zoo.lwta_relaxed(x, U, SEED, TAU, False, False, False)[0]
    for hard in (False, True):
        y, d, kl = torch.ops.lwta_zoo.lwta_relaxed(x, U, SEED, TAU, hard, True, True)
        (grad,) = torch.autograd.grad((y * gy).sum() + KL_WEIGHT * kl, x)
        out.update({f'y{hard}': y, f'd{hard}': d, f'kl{hard}': kl, f'grad{hard}': grad})
    if len(shape) == 4:
        out.update(_batchnorm_outputs(x, gy, U))
    return {k: v.detach().cpu() for k, v in out.items()}


def _batchnorm_outputs(x: torch.Tensor, gy: torch.Tensor, U: int) -> Dict[str, torch.Tensor]:
    """The fused BatchNorm + LWTA ops on x: eval (a channel affine: exact sample, relaxation) and
    training (batch statistics, soft and hard), outputs and the gradients of x and the BatchNorm's parameters."""
    g = torch.Generator().manual_seed(7)
    scale, shift = torch.rand(x.shape[1], generator=g) + 0.5, torch.randn(x.shape[1], generator=g)
    scale, shift = (t.to(x.device).requires_grad_(True) for t in (scale, shift))
    out = {}
    y = torch.ops.lwta_zoo.bn_lwta_sample(x, scale, shift, U, SEED, True)[0]
    out['bn_sample'] = y
    out['bn_sample_gx'], out['bn_sample_gscale'], out['bn_sample_gshift'] = torch.autograd.grad(
        (y * gy).sum(), (x, scale, shift))
    y = torch.ops.lwta_zoo.bn_lwta_relaxed(x, scale, shift, U, SEED, TAU)
    out['bn_relaxed'] = y
    out['bn_relaxed_gx'], out['bn_relaxed_gscale'], out['bn_relaxed_gshift'] = torch.autograd.grad(
        (y * gy).sum(), (x, scale, shift))
    for hard in (False, True):
        y, mean, var, kl = torch.ops.lwta_zoo.bn_lwta_train(x, scale, shift, 1e-5, U, SEED, TAU, hard, True)
        out.update({f'bn_train{hard}': y, f'bn_mean{hard}': mean, f'bn_var{hard}': var, f'bn_kl{hard}': kl})
        out[f'bn_train_gx{hard}'], out[f'bn_train_gw{hard}'], out[f'bn_train_gb{hard}'] = torch.autograd.grad(
            (y * gy).sum() + KL_WEIGHT * kl, (x, scale, shift))
    return out


def _worker(path: str, device: str) -> None:
    """The Triton side: on a GPU machine the ops on CUDA tensors (real Triton kernels); elsewhere, run with
    TRITON_INTERPRET=1, the ops on CPU tensors routed to the Triton launchers."""
    import lwta_zoo
    from lwta_zoo.kernels import triton_kernels

    torch.set_num_threads(1)
    lwta_zoo.LWTA(U=4).train()(torch.randn(2, 8, 3, 3))  # the fused CPU path
    imported_for_cpu = 'lwta_zoo.kernels.lwta_triton' in sys.modules
    kernels = triton_kernels()
    if device == 'cpu':
        lwta_fast._kernels = lambda t: kernels
    torch.save({
        'device': device,
        'imported_for_cpu': imported_for_cpu,
        'max_units': kernels.MAX_U,
        'uniforms': {c: kernels.uniforms(UNIFORM_SHAPE, *c, device=device).cpu() for c in UNIFORM_CASES},
        'outputs': {(s, U, layout): _outputs((s, U, 'float32', layout), 'float32', device)
                    for s, U, layout in CASES},
        'half': {c: _outputs(c, c[2], device) for c in HALF_CASES},
    }, path)


@pytest.fixture(scope='module')
def triton_side(tmp_path_factory) -> dict:
    """The Triton side's results, from a subprocess: real CUDA where there is a GPU, else the interpreter."""
    path = tmp_path_factory.mktemp('triton') / 'results.pt'
    device = 'cuda' if torch.cuda.is_available() else 'cpu'
    env = {**os.environ, **({} if device == 'cuda' else {'TRITON_INTERPRET': '1'})}
    run = subprocess.run([sys.executable, __file__, str(path), device], env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]
    return torch.load(path)


def test_triton_is_imported_only_for_cuda_tensors_and_takes_the_same_units(triton_side):
    assert not triton_side['imported_for_cpu']
    assert triton_side['max_units'] == lwta_fast.max_units()


@pytest.mark.parametrize('seed,unit', UNIFORM_CASES)
def test_uniforms_equal_the_c_kernels_bit_for_bit(triton_side, seed, unit):
    assert torch.equal(triton_side['uniforms'][seed, unit], lwta_fast.uniforms(UNIFORM_SHAPE, seed, unit))


@pytest.mark.parametrize('shape,U,layout', CASES)
def test_exact_sample_winners_and_gradient_equal_the_c_kernels(triton_side, shape, U, layout):
    tri, c = triton_side['outputs'][shape, U, layout], _outputs((shape, U, 'float32', layout), 'float32')
    assert tri['sample'].stride() == c['sample'].stride() == _inputs(shape, U, 'float32', layout)[0].stride()
    assert (c['sample'] != 0).any() and (c['sample'] == 0).any()
    for key in ('idx', 'sample', 'sample_grad', 'sample_unsaved', 'sample_inplace'):
        assert torch.equal(tri[key], c[key]), key
    assert torch.equal(c['sample_inplace'], c['sample'])


@pytest.mark.parametrize('hard', [False, True])
@pytest.mark.parametrize('shape,U,layout', CASES)
def test_relaxed_outputs_saved_differences_kl_and_gradients_match_the_c_kernels(triton_side, shape, U, layout, hard):
    tri, c = triton_side['outputs'][shape, U, layout], _outputs((shape, U, 'float32', layout), 'float32')
    assert torch.equal(tri[f'd{hard}'], c[f'd{hard}'])
    if hard:  # one-hot: the winner's response
        assert torch.equal(tri['yTrue'], c['yTrue'])
    assert torch.allclose(tri[f'y{hard}'], c[f'y{hard}'], rtol=1e-5, atol=1e-6)
    assert torch.allclose(tri[f'kl{hard}'], c[f'kl{hard}'], rtol=1e-5)
    assert torch.allclose(tri[f'grad{hard}'], c[f'grad{hard}'], rtol=1e-4, atol=1e-5)
    assert torch.equal(tri['y_unsaved'], tri['yFalse'])
    assert torch.allclose(tri['y_unsaved'], c['y_unsaved'], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('hard', [False, True])
@pytest.mark.parametrize('shape,U,layout', [CASES[1], CASES[6], CASES[7]])
def test_relaxed_sample_kl_and_gradient_equal_the_eager_reference(triton_side, shape, U, layout, hard):
    from test_lwta_fast import _noise, _one_hot, _units  # the C tests' reference for the same noise

    tri = triton_side['outputs'][shape, U, layout]
    x, gy = (t.double() for t in _inputs(shape, U, 'float32', layout))
    x.requires_grad_(True)
    s = ((_units(x, U) + _noise(shape, U, SEED)) / TAU).softmax(2)
    xi = _one_hot(s.argmax(2), U) - s.detach() + s if hard else s
    y, kl = (_units(x, U) * xi).flatten(1, 2), lwta_kl(x, U)
    (grad,) = torch.autograd.grad((y * gy).sum() + KL_WEIGHT * kl, x)
    assert torch.allclose(tri[f'y{hard}'].double(), y, rtol=1e-4, atol=1e-5)
    assert torch.allclose(tri[f'kl{hard}'], kl, rtol=1e-5)
    assert torch.allclose(tri[f'grad{hard}'].double(), grad, rtol=1e-3, atol=1e-4 / TAU)


@pytest.mark.parametrize('shape,U,layout', [c for c in CASES if len(c[0]) == 4])
def test_fused_batchnorm_ops_match_the_c_kernels(triton_side, shape, U, layout):
    tri, c = triton_side['outputs'][shape, U, layout], _outputs((shape, U, 'float32', layout), 'float32')
    bn_keys = [k for k in c if k.startswith('bn_')]
    assert len(bn_keys) == 22 and set(bn_keys) <= set(tri)
    for key in bn_keys:
        a, b = tri[key], c[key]
        assert a.shape == b.shape and a.stride() == b.stride(), key
        # the normalised values to float rounding (fused multiply-add or not): a block whose two
        # scores are that close may be decided differently (none here); the sums by other orders
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-4 * max(1.0, b.abs().max().item())), key
    for key in ('bn_sample', 'bn_trainTrue'):  # the same winners
        assert torch.equal(tri[key] == 0, c[key] == 0), key


@pytest.mark.parametrize('case', HALF_CASES, ids=str)
def test_half_precision_inputs_match_the_c_kernels_on_their_float32_values(triton_side, case):
    # the sample passes input values: exact; the relaxation rounds y to the input's dtype,
    # and its backward recovers the input from that y
    tri, c = triton_side['half'][case], _outputs(case, 'float32')
    dtype, tol = getattr(torch, case[2]), {'float16': 2e-3, 'bfloat16': 2.4e-2}[case[2]]  # about 2 and 3 eps
    if dtype == torch.bfloat16:  # the C kernels take bfloat16 too: the same rounding of the same values
        c_bf16 = _outputs(case, 'bfloat16')
        for key in ('idx', 'sample', 'sample_grad', 'sample_inplace', 'yTrue', 'dTrue', 'dFalse'):
            assert torch.equal(tri[key], c_bf16[key]), key
        # float32 arithmetic in both, then one rounding: y within one bfloat16 step (2^-7 relative);
        # the gradients from that y, as against float32 below
        assert torch.allclose(tri['yFalse'].float(), c_bf16['yFalse'].float(), rtol=2 ** -7, atol=1e-5)
        for key in ('gradFalse', 'gradTrue'):
            assert torch.allclose(tri[key].float(), c_bf16[key].float(), rtol=tol, atol=tol), key
    assert tri['sample'].dtype == tri['sample_grad'].dtype == tri['yTrue'].dtype == dtype
    assert tri['dTrue'].dtype == tri['klTrue'].dtype == torch.float32
    for key in ('idx', 'sample', 'sample_grad'):
        assert torch.equal(tri[key].to(c[key].dtype), c[key]), key
    for hard in (False, True):
        assert torch.equal(tri[f'd{hard}'], c[f'd{hard}'])
        assert torch.allclose(tri[f'kl{hard}'], c[f'kl{hard}'], rtol=1e-5)
        for key in (f'y{hard}', f'grad{hard}'):
            assert torch.allclose(tri[key].float(), c[key], rtol=tol, atol=tol), key


if __name__ == '__main__':
    _worker(sys.argv[1], sys.argv[2])
