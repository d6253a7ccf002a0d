"""CIFAR WideResNet (Zagoruyko & Komodakis) with the TRADES / RobustBench state_dict layout.

Keys: conv1, block{1,2,3}.layer.N.{bn1,conv1,bn2,conv2,convShortcut}, bn1, fc. Inputs are
in [0, 1] with no normalisation, as in TRADES. The activations (relu1, relu2, relu) hold
no weights, so a ReLU checkpoint and its LWTA twin share one layout. In the LWTA networks each
BatchNorm and the LWTA after it are one module (``BatchNormLWTA2d``: the LWTA is ``bnN.act`` and
``reluN`` an identity), with the same keys. TRADES also builds an
unused ``sub_block1``; it is left out here and its keys are dropped on import.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

import torch
import torch.nn as nn
from timm.models import generate_default_cfgs, register_model

from ..layers.batchnorm_lwta import fuse_batchnorm_lwta
from ._base import HF_ORG, DeviceLike, SampledClassifier, _check_input, build, cfg, make_act_layer

__all__ = ['WideResNet']


class BasicBlock(nn.Module):
    """Pre-activation block: bn1-act-conv1-bn2-act-conv2, plus a 1x1 shortcut on a shape change."""

    def __init__(self, in_chs: int, out_chs: int, stride: int, act_layer, device=None, dtype=None):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        self.bn1 = nn.BatchNorm2d(in_chs, **dd)
        self.relu1 = act_layer(inplace=True)
        self.conv1 = nn.Conv2d(in_chs, out_chs, 3, stride, 1, bias=False, **dd)
        self.bn2 = nn.BatchNorm2d(out_chs, **dd)
        self.relu2 = act_layer(inplace=True)
        self.conv2 = nn.Conv2d(out_chs, out_chs, 3, 1, 1, bias=False, **dd)
        self.equal_in_out = in_chs == out_chs and stride == 1
        self.convShortcut = None if self.equal_in_out else nn.Conv2d(in_chs, out_chs, 1, stride, 0, bias=False, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.relu1(self.bn1(x))
        out = self.conv2(self.relu2(self.bn2(self.conv1(a))))
        # As in TRADES: the shortcut of a widening block starts from the activated input.
        return out + (x if self.equal_in_out else self.convShortcut(a))


class NetworkBlock(nn.Module):
    def __init__(self, depth: int, in_chs: int, out_chs: int, stride: int, act_layer, device=None, dtype=None):
        super().__init__()
        self.layer = nn.Sequential(*[
            BasicBlock(in_chs if i == 0 else out_chs, out_chs, stride if i == 0 else 1, act_layer, device, dtype)
            for i in range(depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(SampledClassifier):
    """WRN-depth-widen for 32x32 inputs, ReLU or stochastic LWTA activations."""

    def __init__(
        self,
        depth: int = 34,
        widen_factor: int = 10,
        num_classes: int = 10,
        in_chans: int = 3,
        global_pool: str = 'avg',
        act: str = 'relu',
        lwta_args: Optional[Dict[str, Any]] = None,
        device: Optional[DeviceLike] = None,
        dtype: Optional[torch.dtype] = None,
    ):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        if (depth - 4) % 6:
            raise ValueError(f'WideResNet depth must be 6n+4, got {depth}')
        n = (depth - 4) // 6
        act_layer = make_act_layer(act, lwta_args)
        chs = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.num_classes, self.in_chans = num_classes, in_chans
        self.conv1 = nn.Conv2d(in_chans, chs[0], 3, 1, 1, bias=False, **dd)
        self.block1 = NetworkBlock(n, chs[0], chs[1], 1, act_layer, **dd)
        self.block2 = NetworkBlock(n, chs[1], chs[2], 2, act_layer, **dd)
        self.block3 = NetworkBlock(n, chs[2], chs[3], 2, act_layer, **dd)
        self.bn1 = nn.BatchNorm2d(chs[3], **dd)
        self.relu = act_layer(inplace=True)
        self.init_head(chs[3], num_classes, global_pool)
        self.feature_info = [dict(num_chs=c, reduction=r, module=m) for c, r, m in zip(
            chs[1:], (1, 2, 4), ('block1', 'block2', 'block3'))]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)
        fuse_batchnorm_lwta(self)  # each BatchNorm -> LWTA runs as one pass of the fused kernels

    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        """Parameter groups for timm's layer-wise optimizer settings: stem, then each block (or stage)."""
        return dict(stem=r'^conv1', blocks=[(r'^block(\d+)' if coarse else r'^block(\d+)\.layer\.(\d+)', None),
                                            (r'^bn1', (99999,))])

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(self, x, self.in_chans)
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        return self.relu(self.bn1(x))


def _wrn_cfg(name: str, **kwargs) -> Dict[str, Any]:
    return cfg(hf_hub_id=f'{HF_ORG}/{name}', **kwargs)


_ARCHS = {'wrn34_1': (34, 1), 'wrn34_5': (34, 5), 'wrn34_10': (34, 10), 'wrn28_10': (28, 10)}

# Published weights are the default of their architecture (its untagged cfg is left out): the WRN paper
# authors' checkpoint for wrn34_1_lwta (converted by tools/make_authors_weights.py), and the
# runs of recipes/cifar10_wrn34_1_*_fast.yaml (tools/make_trained_weights.py), in lwta_zoo/weights/.
# timm's default tag is an architecture's first cfg, so the authors' entry comes before the zoo's own.
TRAINED = ['wrn34_1.cifar10_nfgsm', 'wrn34_1_lwta.cifar10_nfgsm', 'wrn34_1_lwta.cifar10_adaptive_nfgsm']
default_cfgs = generate_default_cfgs({
    'wrn34_1_lwta.authors_pgd': _wrn_cfg(
        'wrn34_1_lwta.authors_pgd', license='unknown',
        origin_url='https://github.com/konpanousis/Adversarial-LWTA-AutoAttack',
        paper_name='Stochastic Local Winner-Takes-All Networks Enable Profound Adversarial Robustness'),
    **{name: _wrn_cfg(name) for name in TRAINED},
    **{name + suffix: _wrn_cfg(name + suffix) for name in _ARCHS for suffix in ('', '_lwta')
       if name + suffix not in ('wrn34_1_lwta', 'wrn34_1')},
})


def _wrn(name: str, pretrained: bool, **kwargs) -> WideResNet:
    arch, lwta = name.removesuffix('_lwta'), name.endswith('_lwta')
    depth, widen = _ARCHS[arch]
    if lwta:
        kwargs.setdefault('act', 'lwta')
    return build(WideResNet, name, pretrained, depth=depth, widen_factor=widen, **kwargs)


@register_model
def wrn34_1(pretrained: bool = False, **kwargs) -> WideResNet:
    """WRN-34-1, ReLU."""
    return _wrn('wrn34_1', pretrained, **kwargs)


@register_model
def wrn34_5(pretrained: bool = False, **kwargs) -> WideResNet:
    """WRN-34-5, ReLU."""
    return _wrn('wrn34_5', pretrained, **kwargs)


@register_model
def wrn34_10(pretrained: bool = False, **kwargs) -> WideResNet:
    """WRN-34-10, ReLU."""
    return _wrn('wrn34_10', pretrained, **kwargs)


@register_model
def wrn28_10(pretrained: bool = False, **kwargs) -> WideResNet:
    """WRN-28-10, ReLU."""
    return _wrn('wrn28_10', pretrained, **kwargs)


@register_model
def wrn34_1_lwta(pretrained: bool = False, **kwargs) -> WideResNet:
    """WRN-34-1 with stochastic LWTA (U=2), as in the WRN paper."""
    return _wrn('wrn34_1_lwta', pretrained, **kwargs)


@register_model
def wrn34_5_lwta(pretrained: bool = False, **kwargs) -> WideResNet:
    """WRN-34-5 with stochastic LWTA (U=2), as in the WRN paper."""
    return _wrn('wrn34_5_lwta', pretrained, **kwargs)


@register_model
def wrn34_10_lwta(pretrained: bool = False, **kwargs) -> WideResNet:
    """WRN-34-10 with stochastic LWTA (U=2), as in the WRN paper."""
    return _wrn('wrn34_10_lwta', pretrained, **kwargs)


@register_model
def wrn28_10_lwta(pretrained: bool = False, **kwargs) -> WideResNet:
    """WRN-28-10 with stochastic LWTA (U=2)."""
    return _wrn('wrn28_10_lwta', pretrained, **kwargs)


@register_model
def wrn34_1_lwta_cifar10_linf(pretrained: bool = False, **kwargs) -> WideResNet:
    """wrn34_1_lwta.authors_pgd under RobustBench's name: load_model('wrn34_1_lwta', 'cifar10', 'Linf')."""
    kwargs['pretrained_cfg'] = kwargs.get('pretrained_cfg') or 'authors_pgd'
    return _wrn('wrn34_1_lwta', pretrained, **kwargs)
