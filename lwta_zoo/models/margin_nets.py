"""The AISTATS paper's section 4.3.3 networks: LeNet-5 and a small VGG-like CIFAR-10 network.

The paper measures decision-boundary margins across frequencies (``lwta-zoo margins``) on a
LeNet-5 trained on MNIST (its Fig. 4) and a "VGG-like" network trained on CIFAR-10 (Fig. 5),
each as ReLU, LWTA and LWTA & IBP, without adversarial training. Like the paper's other
networks (``lwta_zoo.models.aistats``), the hidden activation is the ``method`` kwarg
('relu', 'lwta', 'lwta_ibp', and the deterministic 'lwta_max' / 'lwta_max_ibp') and a
pretrained tag, ``timm.create_model('lenet5_mnist.lwta_ibp_u2')``; only U=2 has tags here
(LeNet-5's 6 first-layer filters do not split into blocks of 4).

* ``lenet5_mnist``: LeNet-5 as the PyTorch examples write it for 28x28 inputs (LeCun et al.
  1998 on 32x32, the first conv padded by 2 instead): conv 5x5 (6) -> act -> max-pool ->
  conv 5x5 (16, no padding) -> act -> max-pool -> flatten 400 -> dense 120 -> dense 84 -> fc.
* ``vgg_small_cifar10``: the zoo's VGG (``vgg16_cifar``: 3x3 conv stacks, max-pools, global
  average pool, one linear classifier), shallower and narrower so that a variant trains in
  about an hour of one CPU core: widths (32, 32, M, 64, 64, M, 128, 128, M), with the AISTATS
  networks' conv -> activation -> BatchNorm order, so a method builds the same layers as there.

The paper gives neither network's sizes; these are ours.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from timm.layers import SelectAdaptivePool2d, get_device_dtype
from timm.models import generate_default_cfgs, register_model

from ..layers.ibp import IBPMask
from ._base import HF_ORG, DeviceLike, Normalize, SampledClassifier, _check_input, cfg
from .aistats import DEFAULT_U, METHODS, _Layers, build_with_method, method_tag
from .vgg_cifar import CIFAR10_MEAN, CIFAR10_STD, vgg_features

__all__ = ['LeNet5', 'VGGSmall']

VGG_SMALL_LAYERS = (32, 32, 'M', 64, 64, 'M', 128, 128, 'M')
TAGS = [method_tag(m, DEFAULT_U) for m in METHODS]


class _MethodClassifier(SampledClassifier):
    """What both networks share: the method's layers, a head rebuilt on the model's device and dtype."""

    def _start(self, method: str, U: int, lwta_args: Optional[Dict[str, Any]], ibp_args: Optional[Dict[str, Any]],
               in_chans: int, dd: Dict[str, Any]) -> _Layers:
        self.method, self.U, self.in_chans = method, U, in_chans
        self._layer_args = (method, U, lwta_args, ibp_args)
        return _Layers(*self._layer_args, **dd)

    def _finish(self, num_classes: int, global_pool: str) -> None:
        self.reset_classifier(num_classes, global_pool)
        self.has_ibp = any(isinstance(m, IBPMask) for m in self.modules())

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """A fresh classifier ``fc`` (none for 0) of the method's kind (IBP or plain), on the model's
        device and dtype, in its train/eval mode; ``global_pool`` as the network allows."""
        if global_pool is not None:
            self._set_pool(global_pool)
        self.num_classes = num_classes
        layers = _Layers(*self._layer_args, **get_device_dtype(self))
        self.fc = layers.dense(self.head_hidden_size, num_classes, act=False) if num_classes else nn.Identity()
        self.fc.train(self.training)

    def _set_pool(self, global_pool: str) -> None:
        raise NotImplementedError


class LeNet5(_MethodClassifier):
    """LeNet-5 for 28x28 grayscale images (``img_size`` sets the dense head's input for other sizes);
    ``global_pool`` 'flatten' (the dense head) or '' (unpooled features)."""

    def __init__(
        self,
        num_classes: int = 10,
        in_chans: int = 1,
        img_size: Tuple[int, int] = (28, 28),
        method: str = 'lwta_ibp',
        U: int = DEFAULT_U,
        lwta_args: Optional[Dict[str, Any]] = None,
        ibp_args: Optional[Dict[str, Any]] = None,
        global_pool: str = 'flatten',
        device: Optional[DeviceLike] = None,
        dtype: Optional[torch.dtype] = None,
    ):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        layers = self._start(method, U, lwta_args, ibp_args, in_chans, dd)
        self.conv1 = nn.Sequential(layers.conv(in_chans, 6, 5, padding=2, where='LeNet5 conv1'), nn.MaxPool2d(2))
        self.conv2 = nn.Sequential(layers.conv(6, 16, 5, padding=0, where='LeNet5 conv2'), nn.MaxPool2d(2))
        self.feature_info = [dict(num_chs=6, reduction=2, module='conv1'), dict(num_chs=16, reduction=4, module='conv2')]
        flat = 16 * ((img_size[0] // 2 - 4) // 2) * ((img_size[1] // 2 - 4) // 2)  # 'same' conv1, valid conv2
        self.hidden = nn.Sequential(layers.dense(flat, 120, where='LeNet5 dense 1'),
                                    layers.dense(120, 84, where='LeNet5 dense 2'))
        self.num_features, self.head_hidden_size = 16, 84
        self._finish(num_classes, global_pool)

    def _set_pool(self, global_pool: str) -> None:
        if global_pool not in ('flatten', ''):
            raise ValueError(f"LeNet5: global_pool must be 'flatten' or '', got {global_pool!r}")
        self.global_pool = global_pool

    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        """Parameter groups for timm's layer-wise optimizer settings: conv1, conv2, the dense head."""
        return dict(stem=r'^conv1', blocks=[(r'^conv(\d+)', None), (r'^hidden|^fc', (99999,))])

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(self, x, self.in_chans)
        return self.conv2(self.conv1(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if not self.global_pool:  # '': the unpooled features, as in timm
            return x
        x = self.hidden(x.flatten(1))
        return x if pre_logits else self.fc(x)


class VGGSmall(_MethodClassifier):
    """A VGG for 32x32 inputs: ``layers`` lists widths and 'M' for max-pool; global pool, linear ``fc``."""

    def __init__(
        self,
        layers: Sequence[Union[int, str]] = VGG_SMALL_LAYERS,
        num_classes: int = 10,
        in_chans: int = 3,
        method: str = 'lwta_ibp',
        U: int = DEFAULT_U,
        lwta_args: Optional[Dict[str, Any]] = None,
        ibp_args: Optional[Dict[str, Any]] = None,
        global_pool: str = 'avg',
        device: Optional[DeviceLike] = None,
        dtype: Optional[torch.dtype] = None,
    ):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        method_layers = self._start(method, U, lwta_args, ibp_args, in_chans, dd)
        self.normalize = Normalize(CIFAR10_MEAN, CIFAR10_STD, **dd)
        self.features, self.feature_info, chs = vgg_features(layers, in_chans, lambda i, o: [
            method_layers.conv(i, o, 3, bn=True, where=f'VGGSmall {i}->{o} conv')])
        self.num_features = self.head_hidden_size = chs
        self.pre_logits = nn.Identity()
        self._finish(num_classes, global_pool)

    def _set_pool(self, global_pool: str) -> None:
        self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=bool(global_pool))
        self.global_pool.train(self.training)

    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        """Parameter groups for timm's layer-wise optimizer settings: the first conv, then each layer."""
        return dict(stem=r'^features\.0\.', blocks=r'^features\.(\d+)')

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(self, x, self.in_chans)
        return self.features(self.normalize(x))


_NETS = {
    'lenet5_mnist': dict(input_size=(1, 28, 28), pool_size=(5, 5), first_conv='conv1.0.0', fixed_input_size=True),
    'vgg_small_cifar10': dict(pool_size=(4, 4), first_conv='features.0.0'),
}
# Weights this repo trained (recipes/margins_*.yaml): '<method tag>_<training>' per architecture.
TRAINED: Dict[str, list] = {'lenet5_mnist': [f'{t}_fmnist' for t in ('relu', 'lwta_u2', 'lwta_ibp_u2')],
                            'vgg_small_cifar10': [f'{t}_cifar10' for t in ('relu', 'lwta_u2', 'lwta_ibp_u2')]}

default_cfgs = generate_default_cfgs({
    f'{name}.{tag}': cfg(hf_hub_id=f'{HF_ORG}/{name}.{tag}', **net)
    for name, net in _NETS.items() for tag in TAGS + TRAINED[name]})


@register_model
def lenet5_mnist(pretrained: bool = False, **kwargs) -> LeNet5:
    """LeNet-5 for 28x28 grayscale images; ``method`` ReLU, LWTA or LWTA & IBP (AISTATS paper, Fig. 4)."""
    kwargs.setdefault('feature_cfg', dict(out_indices=(0, 1)))
    return build_with_method(LeNet5, 'lenet5_mnist', pretrained, TAGS + TRAINED['lenet5_mnist'], **kwargs)


@register_model
def vgg_small_cifar10(pretrained: bool = False, **kwargs) -> VGGSmall:
    """A small VGG for CIFAR-10; ``method`` ReLU, LWTA or LWTA & IBP (AISTATS paper, Fig. 5)."""
    kwargs.setdefault('feature_cfg', dict(out_indices=(0, 1, 2), flatten_sequential=True))
    return build_with_method(VGGSmall, 'vgg_small_cifar10', pretrained, TAGS + TRAINED['vgg_small_cifar10'], **kwargs)
