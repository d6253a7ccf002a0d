"""Swap the ReLU-family activations of any nn.Module for stochastic LWTA."""
from __future__ import annotations

import torch.nn as nn
from timm.layers import create_act

from .layers.batchnorm_lwta import fuse_batchnorm_lwta
from .layers.lwta import LWTA, track_kl

RELU_LIKE = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.RReLU)


def convert(model: nn.Module, U: int = 2, fuse: bool = True, **lwta_kwargs) -> nn.Module:
    """Replace every ReLU-like activation module in ``model`` by ``LWTA(U, **lwta_kwargs)``.

    Works in place on torchvision, timm or your own modules and returns ``model``. Each LWTA
    keeps its ReLU's ``inplace`` unless ``lwta_kwargs`` sets it. ReLUs called as functions
    (``F.relu``) are not modules and are left alone. A channel count that U does not divide
    is reported, with the module path, on the first forward. With ``fuse`` (the default) each
    BatchNorm2d that feeds an LWTA becomes one ``BatchNormLWTA2d`` (``fuse_batchnorm_lwta``; the
    same state_dict keys), which the fused kernels run in one pass.
    """
    LWTA(U=U, **lwta_kwargs)  # validate the settings before touching the model
    for path, module in list(model.named_modules()):
        for name, child in module.named_children():
            if isinstance(child, RELU_LIKE):
                setattr(module, name, LWTA(U=U, **{'inplace': getattr(child, 'inplace', False), **lwta_kwargs}))
    track_kl(model)
    return fuse_batchnorm_lwta(model) if fuse else model


def register_timm_activation() -> None:
    """Make 'lwta' an activation name for timm (``create_model(..., act_layer='lwta')``).

    timm has no public hook for new names; its factory reads this module-level dict.
    """
    create_act._ACT_LAYER_DEFAULT.setdefault('lwta', LWTA)
