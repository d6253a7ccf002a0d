"""VGG-16 for CIFAR (conv3x3-BN-act stacks, global pool, one linear classifier).

Inputs in [0, 1]; the CIFAR-10 normalisation is inside the model (a buffer, not in the
state_dict). Keys: features.N (conv / bn), fc.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from timm.models import generate_default_cfgs, register_model

from ..layers.batchnorm_lwta import fuse_batchnorm_lwta
from ._base import HF_ORG, DeviceLike, Normalize, SampledClassifier, _check_input, build, cfg, make_act_layer

__all__ = ['VGGCifar']

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2471, 0.2435, 0.2616)
VGG16_LAYERS = (64, 64, 'M', 128, 128, 'M', 256, 256, 256, 'M', 512, 512, 512, 'M', 512, 512, 512, 'M')


def vgg_features(layers: Sequence[Union[int, str]], in_chans: int, conv: Callable[[int, int], List[nn.Module]]
                 ) -> Tuple[nn.Sequential, List[Dict[str, Any]], int]:
    """VGG's feature stack ``features``: the modules ``conv(in, out)`` gives for each width of ``layers``,
    a 2x2 max-pool for each 'M'; with timm's feature_info (a level per pool) and the last width."""
    feats: List[nn.Module] = []
    chs, info, reduction = in_chans, [], 1
    for v in layers:
        if v == 'M':
            feats.append(nn.MaxPool2d(2, 2))
            reduction *= 2
            info.append(dict(num_chs=chs, reduction=reduction, module=f'features.{len(feats) - 1}'))
        else:
            feats += conv(chs, v)
            chs = v
    return nn.Sequential(*feats), info, chs


class VGGCifar(SampledClassifier):
    """VGG with batch norm for 32x32 inputs; ``layers`` lists widths and 'M' for max-pool."""

    def __init__(
        self,
        layers: Sequence[Union[int, str]] = VGG16_LAYERS,
        num_classes: int = 10,
        in_chans: int = 3,
        global_pool: str = 'avg',
        act: str = 'relu',
        lwta_args: Optional[Dict[str, Any]] = None,
        mean: Tuple[float, ...] = CIFAR10_MEAN,
        std: Tuple[float, ...] = CIFAR10_STD,
        device: Optional[DeviceLike] = None,
        dtype: Optional[torch.dtype] = None,
    ):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        act_layer = make_act_layer(act, lwta_args)
        self.num_classes, self.in_chans = num_classes, in_chans
        self.normalize = Normalize(mean, std, **dd)
        self.features, self.feature_info, chs = vgg_features(layers, in_chans, lambda i, o: [
            nn.Conv2d(i, o, 3, padding=1, **dd), nn.BatchNorm2d(o, **dd), act_layer(inplace=True)])
        self.init_head(chs, num_classes, global_pool)
        fuse_batchnorm_lwta(self)  # each BatchNorm -> LWTA runs as one pass of the fused kernels

    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        """Parameter groups for timm's layer-wise optimizer settings: the first conv, then each layer."""
        return dict(stem=r'^features\.0\.', blocks=r'^features\.(\d+)')

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(self, x, self.in_chans)
        return self.features(self.normalize(x))


_FEATURES = dict(out_indices=(0, 1, 2, 3, 4), flatten_sequential=True)  # one level per max-pool

default_cfgs = generate_default_cfgs({
    name: cfg(hf_hub_id=f'{HF_ORG}/{name}', pool_size=(1, 1), first_conv='features.0')
    for name in ('vgg16_cifar', 'vgg16_cifar_lwta')})


@register_model
def vgg16_cifar(pretrained: bool = False, **kwargs) -> VGGCifar:
    """VGG-16 (BN) for CIFAR, ReLU."""
    return build(VGGCifar, 'vgg16_cifar', pretrained, feature_cfg=_FEATURES, **kwargs)


@register_model
def vgg16_cifar_lwta(pretrained: bool = False, **kwargs) -> VGGCifar:
    """VGG-16 (BN) for CIFAR with stochastic LWTA (U=2)."""
    kwargs.setdefault('act', 'lwta')
    return build(VGGCifar, 'vgg16_cifar_lwta', pretrained, feature_cfg=_FEATURES, **kwargs)
