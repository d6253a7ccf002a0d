"""A small CNN for 28x28 grayscale images (MNIST, Fashion-MNIST) that trains on a CPU.

conv(32)-act-conv(64)-act-pool-conv(128)-act-pool, global average pool, a dense hidden
layer (256 units, with the activation: dense LWTA in the LWTA twin) and a linear classifier.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

import torch
import torch.nn as nn
from timm.models import generate_default_cfgs, register_model

from ..layers.batchnorm_lwta import fuse_batchnorm_lwta
from ._base import HF_ORG, DeviceLike, SampledClassifier, _check_input, build, cfg, make_act_layer

__all__ = ['SmallCNN']


class SmallCNN(SampledClassifier):
    """Three conv-BN-act layers, global pool, a dense act layer and the classifier ``fc``."""

    def __init__(
        self,
        num_classes: int = 10,
        in_chans: int = 1,
        global_pool: str = 'avg',
        hidden: int = 256,
        act: str = 'relu',
        lwta_args: Optional[Dict[str, Any]] = None,
        device: Optional[DeviceLike] = None,
        dtype: Optional[torch.dtype] = None,
    ):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        act_layer = make_act_layer(act, lwta_args)
        self.num_classes, self.in_chans = num_classes, in_chans

        def conv(i: int, o: int) -> list:
            return [nn.Conv2d(i, o, 3, padding=1, bias=False, **dd), nn.BatchNorm2d(o, **dd), act_layer(inplace=True)]

        self.conv1 = nn.Sequential(*conv(in_chans, 32))
        self.conv2 = nn.Sequential(*conv(32, 64), nn.MaxPool2d(2))
        self.conv3 = nn.Sequential(*conv(64, 128), nn.MaxPool2d(2))
        self.feature_info = [dict(num_chs=c, reduction=r, module=m) for c, r, m in (
            (32, 1, 'conv1'), (64, 2, 'conv2'), (128, 4, 'conv3'))]
        self.init_head(128, num_classes, global_pool, nn.Sequential(nn.Linear(128, hidden, **dd), act_layer()), hidden)
        fuse_batchnorm_lwta(self)  # each BatchNorm -> LWTA runs as one pass of the fused kernels

    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        """Parameter groups for timm's layer-wise optimizer settings: stem, conv layers, dense head."""
        return dict(stem=r'^conv1', blocks=[(r'^conv(\d+)', None), (r'^pre_logits', (99999,))])

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(self, x, self.in_chans)
        return self.conv3(self.conv2(self.conv1(x)))


default_cfgs = generate_default_cfgs({
    name: cfg(hf_hub_id=f'{HF_ORG}/{name}', input_size=(1, 28, 28), pool_size=(7, 7), first_conv='conv1.0')
    for name in ('smallcnn_mnist', 'smallcnn_mnist_lwta')})


@register_model
def smallcnn_mnist(pretrained: bool = False, **kwargs) -> SmallCNN:
    """Small CNN for 28x28 grayscale images, ReLU."""
    return build(SmallCNN, 'smallcnn_mnist', pretrained, **kwargs)


@register_model
def smallcnn_mnist_lwta(pretrained: bool = False, **kwargs) -> SmallCNN:
    """Small CNN for 28x28 grayscale images with stochastic LWTA (conv and dense, U=2)."""
    kwargs.setdefault('act', 'lwta')
    return build(SmallCNN, 'smallcnn_mnist_lwta', pretrained, **kwargs)
