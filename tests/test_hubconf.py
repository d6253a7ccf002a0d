"""torch.hub entrypoints from a local checkout."""
import importlib.util
import inspect
from pathlib import Path

import torch

import lwta_zoo

REPO = Path(__file__).resolve().parents[1]


def _hubconf():
    spec = importlib.util.spec_from_file_location('hubconf', REPO / 'hubconf.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_one_documented_entrypoint_per_registered_model_and_shipped_weights():
    hubconf = _hubconf()
    # what torch.hub.list shows: public callables of hubconf.py
    entrypoints = {n for n in dir(hubconf) if callable(getattr(hubconf, n)) and not n.startswith('_')}
    zoo = set(lwta_zoo.models.zoo_model_names())
    assert {'wrn34_10_lwta', 'wrn34_10', 'vgg16_cifar_lwta', 'smallcnn_mnist_lwta'} <= zoo
    # and one per shipped weights, named arch.tag like timm
    assert entrypoints == zoo | set(lwta_zoo.hub.shipped_weights())
    for name in entrypoints:
        fn = getattr(hubconf, name)
        params = inspect.signature(fn).parameters
        assert fn.__doc__ and params['pretrained'].default is False and params['samples'].default == 1
    assert {'torch', 'timm'} <= set(hubconf.dependencies)


def test_hub_load_builds_the_model_with_l_samples():
    model = torch.hub.load(str(REPO), 'wrn34_10_lwta', source='local', samples=5)
    assert type(model) is lwta_zoo.WideResNet and model.num_samples == 5
    assert model.fc.in_features == 640
    small = torch.hub.load(str(REPO), 'smallcnn_mnist_lwta', source='local', samples=3).eval()
    assert small(torch.rand(2, 1, 28, 28)).shape == (2, 10)
