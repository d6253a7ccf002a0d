"""lwta_zoo: stochastic Local Winner-Takes-All networks for adversarial robustness.

``import lwta_zoo`` registers the zoo's models in timm's registry and 'lwta' as a timm
activation name.
"""
from .convert import convert, register_timm_activation
from .hub import load_pretrained, push_to_hub, save_pretrained
from .layers import (LWTA, BatchNormLWTA2d, IBPConv2d, IBPLinear, fuse_batchnorm_lwta, kl_divergence, lwta, set_mode,
                     unfuse_batchnorm_lwta)
from .models import LeNet5, SmallCNN, VGGCifar, VGGSmall, WideResNet
from .sampling import MultiSample, set_samples

register_timm_activation()

__version__ = '0.1.0'
__all__ = [
    'BatchNormLWTA2d', 'IBPConv2d', 'IBPLinear', 'LWTA', 'LeNet5', 'MultiSample', 'SmallCNN', 'VGGCifar', 'VGGSmall',
    'WideResNet', 'convert', 'fuse_batchnorm_lwta', 'kl_divergence', 'load_pretrained', 'lwta', 'push_to_hub',
    'save_pretrained', 'set_mode', 'set_samples', 'unfuse_batchnorm_lwta',
]
