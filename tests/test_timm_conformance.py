"""timm's model contracts over every zoo architecture and every pretrained tag.

timm 1.0.31 checks its own models in tests/test_models.py (forward, backward, default_cfgs). That
file is not part of timm's wheel and cannot be fetched offline, so these are the same checks,
written here against timm's documented model API: the factory arguments (``device``, ``dtype``,
unknown arguments raise TypeError), ``forward_features`` / ``forward_head`` shapes against the
pretrained_cfg, ``reset_classifier`` (device, dtype, train mode, pooling), ``num_classes=0`` and
``global_pool=''`` at creation, ``group_matcher`` / ``no_weight_decay`` for timm's optimizer
factory, and a gradient for every parameter from the output alone, except the ones listed in
``NO_OUTPUT_GRADIENT`` (asserted to be exactly those).
"""
from __future__ import annotations

import fnmatch
import inspect
from pathlib import Path

import pytest
import timm
import torch
from timm.models import split_model_name_tag
from timm.models._manipulate import group_parameters
from timm.optim import create_optimizer_v2

import lwta_zoo
from lwta_zoo import hub, kl_divergence
from lwta_zoo.layers import IBPMask
from lwta_zoo.models import zoo_model_names
from lwta_zoo.models.aistats import EcocEnsemble, code_bits, hadamard_code

ZOO = zoo_model_names()
TAGGED = sorted(n for n in timm.list_models(pretrained=True) if split_model_name_tag(n)[0] in ZOO)
SHIPPED = sorted(p.name for p in (Path(lwta_zoo.__file__).parent / 'weights').iterdir() if p.is_dir())
ECOC = [n for n in ZOO if n.startswith('aistats_')]
FLATTEN = ECOC + ['lenet5_mnist']  # heads that flatten the feature maps into dense layers: no 'avg' pool
# Wider WRNs differ from wrn34_1 only in numbers: their structure checks run on the meta device
# (no weights allocated), the others' on the CPU (faster than meta for small networks).
LARGE = {n for n in ZOO if n.startswith(('wrn34_5', 'wrn34_10', 'wrn28_10'))}

# Parameters that get no gradient from the network's output alone, with the reason. timm's backward
# test asserts that every parameter does; these enter the ELBO only through its KL term.
NO_OUTPUT_GRADIENT = {
    '*.ibp.stick_a': "IBP stick-breaking posterior Kumaraswamy(a, b): the sticks give the prior's pi, which enters "
                     'only the KL (of the sticks and of z); the mask z is drawn from the posterior pi~ alone',
    '*.ibp.stick_b': 'the same, for b',
}


def _input(model: torch.nn.Module, batch: int = 2, **dd) -> torch.Tensor:
    return torch.rand(batch, *model.pretrained_cfg['input_size'], **dd)


def _device(name: str) -> str:
    return 'meta' if split_model_name_tag(name)[0] in LARGE else 'cpu'


def _tensors(model: torch.nn.Module):
    return [*model.named_parameters(), *model.named_buffers()]


def test_every_zoo_name_and_tag_is_covered():
    assert len(ZOO) == 23 and {'wrn34_10_lwta', 'aistats_tanh16_cifar10', 'smallcnn_mnist', 'lenet5_mnist'} <= set(ZOO)
    assert set(SHIPPED) <= set(TAGGED) and 'aistats_softmax_mnist.lwta_u2_fmnist_pgd' in SHIPPED
    # every architecture has tags but RobustBench's alias of wrn34_1_lwta.authors_pgd
    assert set(ZOO) - {split_model_name_tag(n)[0] for n in TAGGED} == {'wrn34_1_lwta_cifar10_linf'}


@pytest.mark.parametrize('name', ZOO)
def test_factory_device_and_dtype(name):
    model = timm.create_model(name, device='cpu', dtype=torch.float64)
    assert all(t.device.type == 'cpu' for _, t in _tensors(model))
    assert {t.dtype for _, t in _tensors(model) if t.is_floating_point()} == {torch.float64}
    meta = timm.create_model(name, device='meta', dtype=torch.bfloat16)
    assert {t.device.type for _, t in _tensors(meta)} == {'meta'}
    assert {t.dtype for _, t in _tensors(meta) if t.is_floating_point()} == {torch.bfloat16}
    # Prediction in float64 (LWTA falls back from the float32 kernel to the eager code) and bfloat16.
    model = (meta if name in LARGE else model).eval()
    dd = dict(device='meta', dtype=torch.bfloat16) if name in LARGE else dict(dtype=torch.float64)
    out = model(_input(model, **dd))
    assert out.shape == (2, model.num_classes) and out.dtype == dd['dtype']
    if name not in LARGE:
        assert out.isfinite().all()
    with pytest.raises(TypeError):
        timm.create_model(name, device='meta', not_a_model_arg=1)


@pytest.mark.parametrize('name', ZOO)
def test_backward_reaches_every_parameter_but_the_listed_ones(name):
    dd = dict(device='meta') if name in LARGE else {}
    # A class count other than the cfg's, as timm's test (its 42 builds a 42-branch ensemble: see the ECOC test).
    model = timm.create_model(name, num_classes=12, **dd).train()
    out = model(_input(model, **dd))
    assert out.shape == (2, 12)
    out.mean().backward(retain_graph=True)
    without = {n for n, p in model.named_parameters() if p.grad is None}
    listed = {f'{path}.{p}' for path, m in model.named_modules() if isinstance(m, IBPMask)
              for p in ('stick_a', 'stick_b')}
    assert without == listed
    assert all(any(fnmatch.fnmatch(n, pattern) for pattern in NO_OUTPUT_GRADIENT) for n in without)
    if listed and not dd:  # the KL gives them their gradient
        assert out.isfinite().all()
        kl_divergence(model).backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.named_parameters() if n in listed)


@pytest.mark.parametrize('name', ZOO)
def test_model_api_contract(name):
    device = _device(name)
    model = timm.create_model(name, device=device, dtype=torch.float32).eval()
    cfg, x = model.pretrained_cfg, _input(model, batch=1, device=device)
    assert model.in_chans == cfg['input_size'][0] and model.num_classes == cfg['num_classes']
    sd = model.state_dict()
    classifiers = cfg['classifier'] if isinstance(cfg['classifier'], tuple) else (cfg['classifier'],)
    assert all(f'{c}.weight' in sd for c in classifiers) and f"{cfg['first_conv']}.weight" in sd

    feats = model.forward_features(x)
    assert feats.shape[1] == model.num_features and tuple(feats.shape[2:]) == cfg['pool_size']
    pre = model.forward_head(feats, pre_logits=True)
    assert pre.shape == (1, model.head_hidden_size)
    assert model.to(torch.bfloat16)(x.bfloat16()).dtype == torch.bfloat16  # no dtype left behind by a forward
    model.float()

    assert inspect.signature(model.reset_classifier).parameters['global_pool'].default is None
    model.reset_classifier(0)
    assert model.num_classes == 0 and model(x).shape == pre.shape
    model.reset_classifier(0, '')
    assert tuple(model(x).shape[2:]) == cfg['pool_size']
    assert timm.create_model(name, num_classes=0, device=device).eval()(x).shape == pre.shape
    unpooled = timm.create_model(name, num_classes=0, global_pool='', device=device).eval()
    assert tuple(unpooled(x).shape[2:]) == cfg['pool_size']

    model.to(dtype=torch.float64)  # a new classifier follows the model's device, dtype and mode
    model.reset_classifier(0)
    model.reset_classifier(2, 'flatten' if name in FLATTEN else 'avg')
    head = list(model.get_classifier().parameters())
    assert head and all(p.device.type == device and p.dtype == torch.float64 for p in head)
    assert not any(m.training for m in model.modules())
    assert model(x.double()).shape == (1, 2)

    model.requires_grad_(False)
    model.reset_classifier(0, '')
    assert not any(p.requires_grad for p in model.parameters())  # frozen weights stay frozen


@pytest.mark.parametrize('name', ZOO)
def test_optimizer_factory_uses_group_matcher_and_no_weight_decay(name):
    model = timm.create_model(name, device='meta')
    assert len(set(group_parameters(model, model.group_matcher(coarse=False), reverse=True).values())) > 1
    names = [n for n, _ in model.named_parameters()]
    assert all(any(fnmatch.fnmatch(n, p) for n in names) for p in model.no_weight_decay())
    groups = create_optimizer_v2(model, 'sgd', lr=0.1, weight_decay=1e-4).param_groups
    decayed = {id(p) for g in groups if g['weight_decay'] for p in g['params']}
    variational = {id(p) for m in model.modules() if isinstance(m, IBPMask) for p in m.parameters()}
    assert decayed and not decayed & variational  # the KL, not weight decay, regularises the IBP
    assert bool(variational) == getattr(model, 'method', '').endswith('_ibp')  # method= networks default to LWTA & IBP


@pytest.mark.parametrize('tagged', TAGGED)
def test_every_pretrained_tag_builds_with_its_cfg(tagged):
    name, tag = split_model_name_tag(tagged)
    model = timm.create_model(tagged, device=_device(tagged)).eval()
    cfg = model.pretrained_cfg
    assert cfg['architecture'] == name and cfg.get('tag', '') == tag and cfg['hf_hub_id'] and cfg['license']
    x = _input(model, batch=1, device=_device(tagged))
    assert tuple(model.forward_features(x).shape[2:]) == cfg['pool_size'] and model(x).shape == (1, 10)


@pytest.mark.parametrize('tagged', SHIPPED)
def test_shipped_weights_load_in_the_asked_dtype(tagged, request):
    if hub.conversion(tagged):  # not redistributed: converted from ../shared's checkpoint, or the test skips
        request.getfixturevalue('authors_weights')
    ref = timm.create_model(tagged, pretrained=True)
    model = timm.create_model(tagged, pretrained=True, device='cpu', dtype=torch.float64, samples=5).eval()
    for (k, t), (_, r) in zip(_tensors(model), _tensors(ref)):
        assert t.dtype == (torch.float64 if r.is_floating_point() else r.dtype), k
        torch.testing.assert_close(t, r.to(t.dtype), msg=k)
    with torch.no_grad():
        out = model(_input(model, batch=4, dtype=torch.float64))
    assert out.dtype == torch.float64 and out.shape == (4, 10) and out.isfinite().all()


@pytest.mark.parametrize('name', ECOC)
def test_ecoc_networks_take_more_classes_than_their_code_length(name):
    # One rule for every variant (aistats.code_bits): one-hot codes grow a bit a class, Hadamard codes
    # to the next power of 2 with a row for each class; the ensemble grows a branch a bit.
    model = timm.create_model(name, num_classes=42).eval()
    hadamard = 'tanh16' in name
    assert model.decoder.code.shape == (42, 64 if hadamard else 42) and model.num_bits == code_bits(
        'hadamard' if hadamard else 'onehot', 42)
    assert model(_input(model, batch=1)).shape == (1, 42)
    if isinstance(model, EcocEnsemble):
        assert len(model.branches) == len(model.fc) == 42
    reset = timm.create_model(name)
    reset.reset_classifier(42)  # reset_classifier picks the same code as creation
    torch.testing.assert_close(reset.decoder.code, model.decoder.code, rtol=0, atol=0)


def test_code_lengths_and_the_ensembles_refusal():
    assert [code_bits('hadamard', c) for c in (2, 10, 16, 17, 42, 64, 65)] == [16, 16, 16, 32, 64, 64, 128]
    assert code_bits('onehot', 42) == 42
    M = hadamard_code(42, 64)
    gram = M @ M.t()
    assert len({tuple(r.tolist()) for r in M}) == 42 and (gram.diag() == 64).all()
    assert (gram - 64 * torch.eye(42) <= 0).all()  # distinct codewords still never correlate positively
    with pytest.raises(ValueError, match='5 code bits do not split into 2 chunks'):
        timm.create_model('aistats_logens10_mnist', num_classes=5, device='meta')


@pytest.mark.parametrize('name', [n for n in ECOC if 'logens' not in n])
def test_ecoc_features_only_gives_each_stage(name):
    model = timm.create_model(name, features_only=True).eval()
    size = timm.get_pretrained_cfg_value(name, 'input_size')
    feats = model(torch.rand(1, *size))
    assert [f.shape[1] for f in feats] == model.feature_info.channels()
    assert [-(-size[-1] // r) for r in model.feature_info.reduction()] == [f.shape[-1] for f in feats]


def test_the_ensemble_refuses_features_only_clearly():
    with pytest.raises(ValueError, match='no single feature pyramid'):
        timm.create_model('aistats_logens10_cifar10', features_only=True)
