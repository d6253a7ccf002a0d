"""lwta_zoo: stochastic Local Winner-Takes-All networks for adversarial robustness.

``import lwta_zoo`` registers the zoo's models in timm's registry and 'lwta' as a timm
activation name.
"""
from .convert import convert, register_timm_activation
from .layers import LWTA, kl_divergence, lwta, set_mode
from .models import SmallCNN, VGGCifar, WideResNet
from .sampling import MultiSample, set_samples

register_timm_activation()

__version__ = '0.1.0'
__all__ = [
    'LWTA', 'MultiSample', 'SmallCNN', 'VGGCifar', 'WideResNet', 'convert', 'kl_divergence', 'lwta',
    'set_mode', 'set_samples',
]
