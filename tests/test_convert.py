"""convert(): ReLU-family activations of any model become LWTA, functional calls included, or it
says which it could not; timm's 'lwta' activation name."""
import inspect
import re
import warnings

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

from lwta_zoo import LWTA, convert, fuse_batchnorm_lwta, kl_divergence, set_mode
from lwta_zoo.convert import RELU_LIKE
from lwta_zoo.relu_fx import rewrite_functional_relus


def _check_converted(model: nn.Module, x: torch.Tensor, before: torch.Size) -> None:
    assert not any(isinstance(m, RELU_LIKE) for m in model.modules())
    assert any(isinstance(m, LWTA) for m in model.modules())
    model.eval()
    with torch.no_grad():
        a, b = model(x), model(x)
    assert a.shape == before
    assert not torch.equal(a, b)  # stochastic in eval mode


def test_convert_torchvision_resnet18():
    model = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.rand(2, 3, 32, 32)
    before = model(x).shape
    assert convert(model) is model
    _check_converted(model, x, before)
    assert model.bn1.act.inplace  # torchvision's ReLU(inplace=True): the LWTA keeps it (fused with bn1)


def test_convert_keeps_each_relus_inplace_unless_told():
    model = convert(nn.Sequential(nn.Linear(4, 4), nn.ReLU(inplace=True), nn.Linear(4, 4), nn.ReLU()))
    assert model[1].inplace and not model[3].inplace
    model = convert(nn.Sequential(nn.Linear(4, 4), nn.ReLU(inplace=True)), inplace=False)
    assert not model[1].inplace


def test_convert_timm_vgg11():
    model = timm.create_model('vgg11', num_classes=10).eval()
    x = torch.rand(2, 3, 32, 32)
    before = model(x).shape
    _check_converted(convert(model, U=2, tau=0.5, example_inputs=x), x, before)
    assert all(m.tau == 0.5 for m in model.modules() if isinstance(m, LWTA))


def test_convert_replaces_relu6_and_leaky_relu_and_nested_modules():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU6(), nn.Sequential(nn.Linear(8, 8), nn.LeakyReLU(0.1)), nn.GELU())
    convert(model, U=4)
    assert isinstance(model[1], LWTA) and isinstance(model[2][1], LWTA) and model[1].U == 4
    assert isinstance(model[3], nn.GELU)  # not ReLU-like: left alone


def test_channel_count_not_divisible_names_the_module_path():
    model = convert(nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 9), nn.ReLU()), U=3)
    model(torch.rand(2, 4))  # 6 and 9 are divisible by 3
    convert(model := nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 9), nn.ReLU()), U=2)
    with pytest.raises(ValueError, match=r"LWTA at '3': 9 channels are not divisible by U=2"):
        model(torch.rand(2, 4))


def test_bad_settings_fail_before_the_model_is_touched():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    with pytest.raises(ValueError, match='U >= 2'):
        convert(model, U=1)
    assert isinstance(model[1], nn.ReLU)


def test_timm_act_layer_name():
    model = timm.create_model('resnet18', act_layer='lwta', num_classes=10)
    acts = [m for m in model.modules() if isinstance(m, LWTA)]
    assert acts and not any(isinstance(m, nn.ReLU) for m in model.modules())
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_act_layer_called_positionally_and_with_inplace_by_timm_vgg():
    # timm's VGG calls act_layer(True) and act_layer(inplace=True)
    model = timm.create_model('vgg11', act_layer=LWTA, num_classes=10)
    assert sum(isinstance(m, LWTA) for m in model.modules()) == 10


class _FunctionalBlock(nn.Module):
    """ReLUs as F.relu, torch.relu, x.relu(), x.relu_() (its result unused: later code reads x) and a module."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.act = nn.ReLU()

    def forward(self, x):
        y = F.relu(self.conv(x))
        y = torch.relu(y) + x.relu()
        y.relu_()
        return self.act(y)


class _FunctionalNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3)
        self.blocks = nn.Sequential(_FunctionalBlock(8), _FunctionalBlock(8))
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        return self.fc(F.leaky_relu(self.blocks(self.stem(x)), 0.1).mean((2, 3)))


def _line_of(cls, text: str) -> str:
    """'file.py:line' of the line of ``cls``'s source that contains ``text``."""
    lines, start = inspect.getsourcelines(cls)
    return f'{__name__.split(".")[-1]}.py:{start + next(i for i, line in enumerate(lines) if text in line)}'


def _train_step(model: nn.Module, x: torch.Tensor) -> None:
    """One SGD step on the ELBO: every LWTA records a KL and the step moves the parameters."""
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    model.train()
    loss = F.cross_entropy(model(x), torch.arange(len(x)) % 10) + kl_divergence(model) / 100
    loss.backward()
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    assert kl_divergence(model) > 0 and all(m.kl is not None for m in model.modules() if isinstance(m, LWTA))
    assert not torch.equal(before, torch.cat([p.detach().flatten() for p in model.parameters()]))


def test_functional_relus_are_converted_each_to_a_named_lwta():
    model, x = _FunctionalNet(), torch.rand(2, 3, 10, 10)
    keys = list(model.state_dict())
    assert convert(model, U=2, example_inputs=x) is model
    sites = {s.path: s for s in model.lwta_conversion}
    expected = {'leaky_relu_call0'} | {f'blocks.{b}.{name}' for b in (0, 1)
                                       for name in ('act', 'relu_call0', 'relu_call1', 'relu_call2', 'relu_call3')}
    assert set(sites) == expected
    lwtas = {path for path, m in model.named_modules() if isinstance(m, LWTA)}
    assert lwtas == expected
    assert [sites[f'blocks.0.relu_call{i}'].activation for i in range(4)] == [
        'F.relu', 'torch.relu', 'Tensor.relu', 'Tensor.relu_']
    assert sites['blocks.0.act'].kind == 'module' and sites['blocks.0.relu_call0'].kind == 'function'
    assert sites['blocks.0.relu_call0'].where.endswith(_line_of(_FunctionalBlock, 'F.relu(self.conv'))
    assert all(s.channels == (8,) and s.U == 2 for s in sites.values())
    printed = str(model.lwta_conversion)
    assert printed.startswith('11 ReLU site(s) converted to LWTA\n')
    assert re.search(r'^blocks\.1\.relu_call3 +function +Tensor\.relu_ +8 +2 +' + _line_of(_FunctionalBlock, 'y.relu_()'),
                     printed, re.M)
    assert list(model.state_dict()) == keys  # LWTA holds no state: the checkpoint layout is the ReLU model's
    assert model.blocks[0].relu_call3.inplace and not model.blocks[0].relu_call0.inplace
    model.train()
    model(x)
    assert all(m.kl is not None for m in model.modules() if isinstance(m, LWTA))  # kl_divergence counts every site
    assert torch.isclose(kl_divergence(model), sum(m.kl for m in model.modules() if isinstance(m, LWTA)))
    set_mode(model, 'max')
    assert model.blocks[1].relu_call2.mode == 'max'


def test_rewritten_forward_keeps_relu_semantics_in_both_modes():
    """Before the swap each call is a ReLU module: the rewritten forward computes what the original
    did, the in-place x.relu_() included, in training and in eval mode; undo gives the forward back."""
    model, x = _FunctionalNet(), torch.rand(2, 3, 10, 10)
    for mode in (True, False):
        model.train(mode)
        reference = model(x)
        rewrite = rewrite_functional_relus(model)
        assert len(rewrite.sites) == 9 and isinstance(model.blocks[0].relu_call3, nn.ReLU)
        assert torch.equal(model(x), reference)
        rewrite.undo()
        assert not hasattr(model.blocks[0], 'relu_call0') and 'forward' not in vars(model.blocks[0])


class _DataDependent(nn.Module):
    """fx cannot trace it: a functional ReLU inside control flow that depends on the data."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.act = nn.ReLU()

    def forward(self, x):
        x = self.act(self.conv(x))
        if x.sum() > 0:
            x = F.relu(x - 0.1)
        return x.mean((2, 3))


def test_untraceable_functional_relu_raises_naming_it_or_warns_with_strict_false():
    x = torch.rand(2, 3, 8, 8)
    model = _DataDependent()
    with pytest.raises(ValueError, match=r"1 functional ReLU call\(s\) not converted:\n  F\.relu in '<model>' at "
                                         + _line_of(_DataDependent, 'F.relu(x')):
        convert(model, example_inputs=x)
    assert isinstance(model.act, nn.ReLU)  # raised before touching the model
    with pytest.warns(UserWarning, match=r"F\.relu in '<model>' at .*" + _line_of(_DataDependent, 'F.relu(x')):
        convert(model, example_inputs=x, strict=False)
    assert isinstance(model.act, LWTA) and [s.path for s in model.lwta_conversion] == ['act']
    with pytest.warns(UserWarning, match=r"fx could not trace the forward of '<model>' \(_DataDependent: .*"
                                         r"pass example_inputs= to check"):
        convert(_DataDependent())  # without an example nothing can say whether it calls a ReLU


class _ComputedArgument(nn.Module):
    def forward(self, x):
        return F.rrelu(x, lower=x.shape[1] / 100)  # fx traces it, but the argument is computed: no module can hold it


def test_call_fx_cannot_rewrite_is_named_without_example_inputs():
    with pytest.raises(ValueError, match=r"F\.rrelu in '<model>' at " + _line_of(_ComputedArgument, 'F.rrelu')):
        convert(_ComputedArgument())
    with pytest.warns(UserWarning, match='F.rrelu'):
        convert(_ComputedArgument(), strict=False)


def test_example_inputs_check_that_u_divides_every_site_at_convert_time():
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 9), nn.ReLU(), nn.Linear(9, 2))
    convert(model, U=3, example_inputs=torch.rand(2, 4))
    assert [s.channels for s in model.lwta_conversion] == [(6,), (9,)]
    model = _FunctionalNet()
    with pytest.raises(ValueError, match=r"U=3 competing units do not divide the channels \(dim 1\) of: "
                                         r"'blocks\.0\.relu_call0' \(input \(2, 8, 8, 8\)\), .*'blocks\.0\.act'.*'leaky_relu_call0'"):
        convert(model, U=3, example_inputs=torch.rand(2, 3, 10, 10))
    assert isinstance(model.blocks[0].act, nn.ReLU) and 'forward' not in vars(model.blocks[0])  # left as it was


def test_bad_input_gets_one_clear_error():
    with pytest.raises(TypeError, match='convert needs a torch.nn.Module to change, got list'):
        convert([nn.ReLU()])
    with pytest.raises(ValueError, match='U >= 2'):
        convert(_FunctionalNet(), U=1)
    model = _FunctionalNet()
    with pytest.raises(ValueError, match=r'convert: the model does not run on example_inputs of shape \(2, 5, 10, 10\): '
                                         'RuntimeError: '):
        convert(model, example_inputs=torch.rand(2, 5, 10, 10))
    assert not hasattr(model.blocks[0], 'relu_call0')  # the rewrite was taken back
    with pytest.raises(TypeError, match='example_inputs must be a tensor or a tuple'):
        convert(model, example_inputs=[torch.rand(2, 3, 10, 10)])


def test_torchvision_resnet18_converts_fully_and_trains_one_step():
    model, x = torchvision.models.resnet18(num_classes=10), torch.rand(2, 3, 32, 32)
    convert(model, example_inputs=x)  # strict: raises if any ReLU call were left
    assert len(model.lwta_conversion) == 9 and not any(isinstance(m, RELU_LIKE) for m in model.modules())
    _train_step(model, x)


def test_timm_model_with_functional_relus_converts_fully_and_trains_one_step():
    model, x = timm.create_model('mobilevitv2_050', num_classes=10), torch.rand(2, 3, 64, 64)
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        convert(model, example_inputs=x)
    functions = [s for s in model.lwta_conversion if s.kind == 'function']
    assert len(functions) == 9 and all(s.where.startswith('timm/models/mobilevit.py:') for s in functions)
    _train_step(model, x)


@pytest.mark.parametrize('name, shape', [('smallcnn_mnist', (1, 28, 28)), ('vgg16_cifar', (3, 32, 32)),
                                         ('aistats_softmax_mnist', (1, 28, 28)), ('wrn34_1', (3, 32, 32))])
def test_zoo_models_convert_as_before(name, shape):
    """ReLU modules become LWTA, nothing else changes: no warning (the zoo applies activations as
    modules; the ECOC decoder's F.relu is decoding, left alone), the same state_dict keys."""
    model = timm.create_model(name, **({'method': 'relu'} if name.startswith('aistats') else {}))
    keys, relus = list(model.state_dict()), [p for p, m in model.named_modules() if isinstance(m, RELU_LIKE)]
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        convert(model, example_inputs=torch.rand(2, *shape), fuse=False)
    assert list(model.state_dict()) == keys
    assert [s.path for s in model.lwta_conversion] == relus and all(s.kind == 'module' for s in model.lwta_conversion)
    assert [p for p, m in model.named_modules() if isinstance(m, LWTA)] == relus
    fuse_batchnorm_lwta(model)  # what convert's default fuse=True adds: an LWTA fed by a BatchNorm moves into it
    assert list(model.state_dict()) == keys
    assert len([m for m in model.modules() if isinstance(m, LWTA)]) == len(relus)
