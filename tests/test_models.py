"""The zoo's models in timm's registry: names, timm's model interface, activations, bad input."""
import pytest
import timm
import torch
import torch.nn as nn

import lwta_zoo
from lwta_zoo import LWTA

# Small members of each family keep the suite fast; the WRN widths differ only in numbers.
MODELS = {
    'wrn34_1': (3, 32), 'wrn34_1_lwta': (3, 32), 'vgg16_cifar': (3, 32), 'vgg16_cifar_lwta': (3, 32),
    'smallcnn_mnist': (1, 28), 'smallcnn_mnist_lwta': (1, 28),
}
ALL = ['wrn34_1', 'wrn34_5', 'wrn34_10', 'wrn28_10', 'vgg16_cifar', 'smallcnn_mnist']


def test_registry_lists_every_model_and_its_lwta_twin():
    names = set(timm.list_models())
    for name in ALL:
        assert {name, f'{name}_lwta'} <= names
    assert set(timm.list_models('*lwta*')) >= {f'{n}_lwta' for n in ALL}


def test_unknown_model_name_gives_timms_error():
    with pytest.raises(RuntimeError, match='Unknown model'):
        timm.create_model('wrn99_lwta')


@pytest.mark.parametrize('name', ALL)
def test_activations_are_relu_or_lwta_as_named(name):
    for variant, expected in ((name, nn.ReLU), (f'{name}_lwta', LWTA)):
        model = timm.create_model(variant)
        acts = [m for m in model.modules() if isinstance(m, (nn.ReLU, LWTA))]
        assert acts and all(type(m) is expected for m in acts), variant


@pytest.mark.parametrize('name', MODELS)
def test_timm_model_interface(name):
    chans, size = MODELS[name]
    model = timm.create_model(name).eval()
    x = torch.rand(2, chans, size, size)
    cfg = model.pretrained_cfg
    assert cfg['input_size'] == (chans, size, size) and cfg['num_classes'] == model.num_classes == 10
    assert cfg['hf_hub_id'].startswith(f'{lwta_zoo.models.HF_ORG}/{name}') and cfg['license']
    sd = model.state_dict()
    assert f"{cfg['first_conv']}.weight" in sd and f"{cfg['classifier']}.weight" in sd
    assert model.get_classifier() is model.fc

    feats = model.forward_features(x)
    assert feats.shape[1] == model.num_features and tuple(feats.shape[2:]) == cfg['pool_size']
    pre = model.forward_head(feats, pre_logits=True)
    assert pre.shape == (2, model.head_hidden_size)
    assert model(x).shape == (2, 10)

    model.reset_classifier(5)
    assert model(x).shape == (2, 5) and model.num_classes == 5
    model.reset_classifier(0, global_pool='')
    assert model.forward_head(model.forward_features(x)).shape == feats.shape  # unpooled features

    config = timm.data.resolve_data_config({}, model=model)
    assert config['mean'] == (0.0,) * chans and config['std'] == (1.0,) * chans  # inputs in [0, 1]


@pytest.mark.parametrize('name', MODELS)
def test_features_only_follows_feature_info(name):
    chans, size = MODELS[name]
    model = timm.create_model(name, features_only=True)
    feats = model(torch.rand(2, chans, size, size))
    assert [f.shape[1] for f in feats] == model.feature_info.channels()
    assert [size // f.shape[-1] for f in feats] == model.feature_info.reduction()


def test_unpooled_creation_through_timm():
    unpooled = timm.create_model('wrn34_1', num_classes=0, global_pool='')
    assert unpooled(torch.rand(1, 3, 32, 32)).shape == (1, 64, 8, 8)


def test_wrn_state_dict_follows_the_trades_layout():
    keys = set(timm.create_model('wrn34_10_lwta').state_dict())
    for key in ('conv1.weight', 'block1.layer.0.bn1.weight', 'block1.layer.0.conv1.weight',
                'block1.layer.0.bn2.running_var', 'block1.layer.4.conv2.weight', 'block1.layer.0.convShortcut.weight',
                'block2.layer.0.convShortcut.weight', 'block3.layer.4.conv2.weight', 'bn1.weight', 'fc.bias'):
        assert key in keys, key
    assert not any(k.startswith('block2.layer.1.convShortcut') for k in keys)
    assert keys == set(timm.create_model('wrn34_10').state_dict())  # ReLU and LWTA twins share it
    wrn34_1 = timm.create_model('wrn34_1')
    assert 'block1.layer.0.convShortcut.weight' not in wrn34_1.state_dict()  # 16 -> 16 channels


def test_parameter_counts_of_wide_resnets():
    # WRN-d-k: conv widths 16, 16k, 32k, 64k; the counts follow from the architecture.
    counts = {n: sum(p.numel() for p in timm.create_model(n).parameters()) for n in ('wrn34_10', 'wrn28_10')}
    assert 46.1e6 < counts['wrn34_10'] < 46.2e6 and 36.4e6 < counts['wrn28_10'] < 36.5e6


def test_lwta_settings_reach_every_layer_and_bad_u_fails_before_building():
    model = timm.create_model('wrn34_1_lwta', lwta_args={'U': 4, 'tau': 0.5})
    assert all(m.U == 4 and m.tau == 0.5 for m in model.modules() if isinstance(m, LWTA))
    with pytest.raises(ValueError, match='U >= 2'):
        timm.create_model('wrn34_1_lwta', lwta_args={'U': 1})
    with pytest.raises(ValueError, match="LWTA at 'block1.layer.0.bn1.act': 16 channels are not divisible by U=3"):
        timm.create_model('wrn34_1_lwta', lwta_args={'U': 3})(torch.rand(1, 3, 32, 32))


def test_wrong_input_shape_is_a_clear_error():
    model = timm.create_model('wrn34_1_lwta')
    with pytest.raises(ValueError, match=r'expects images \(N, 3, H, W\), got \(2, 1, 32, 32\)'):
        model(torch.rand(2, 1, 32, 32))


def test_lwta_model_is_stochastic_in_eval_and_max_mode_is_not():
    model = timm.create_model('smallcnn_mnist_lwta').eval()
    x = torch.rand(4, 1, 28, 28)
    assert not torch.equal(model(x), model(x))
    lwta_zoo.set_mode(model, 'max')
    assert torch.equal(model(x), model(x))


def test_training_step_collects_kl_from_every_layer():
    model = timm.create_model('smallcnn_mnist_lwta').train()
    x, y = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))
    loss = nn.functional.cross_entropy(model(x), y) + lwta_zoo.kl_divergence(model) / 60_000
    loss.backward()
    layers = [m for m in model.modules() if isinstance(m, LWTA)]
    assert len(layers) == 4 and all(m.kl is not None and m.kl > 0 for m in layers)
    assert all(p.grad is not None for p in model.parameters())
