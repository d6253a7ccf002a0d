"""convert(): ReLU-family activations of any model become LWTA; timm's 'lwta' activation name."""
import pytest
import timm
import torch
import torch.nn as nn
import torchvision

from lwta_zoo import LWTA, convert
from lwta_zoo.convert import RELU_LIKE


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
    _check_converted(convert(model, U=2, tau=0.5), x, before)
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
