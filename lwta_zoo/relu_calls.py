"""What a functional ReLU call is: the torch functions and tensor methods of the ReLU family,
the module each one becomes, and where in the user's code a call was made.

``convert`` rewrites these calls into modules (``relu_fx``) and records the ones it could not
rewrite during an example forward (``relu_probe``); both read this table.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Callable, Dict, NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

RELU_LIKE = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.RReLU)
"""The ReLU-family modules ``convert`` swaps for LWTA."""


class ReluFunction(NamedTuple):
    """A functional ReLU: the name it is shown by and the module that computes the same call."""
    label: str
    to_module: Callable[..., nn.Module]  # called with the call's own arguments


def _relu(input, inplace=False):
    return nn.ReLU(inplace)


def _relu_(input):
    return nn.ReLU(inplace=True)


def _relu6(input, inplace=False):
    return nn.ReLU6(inplace)


def _leaky_relu(input, negative_slope=0.01, inplace=False):
    return nn.LeakyReLU(negative_slope, inplace)


def _leaky_relu_(input, negative_slope=0.01):
    return nn.LeakyReLU(negative_slope, inplace=True)


def _rrelu(input, lower=1.0 / 8, upper=1.0 / 3, training=False, inplace=False):
    return nn.RReLU(lower, upper, inplace)


def _rrelu_(input, lower=1.0 / 8, upper=1.0 / 3, training=False, generator=None):
    return nn.RReLU(lower, upper, inplace=True)


FUNCTIONS: Dict[Callable, ReluFunction] = {
    F.relu: ReluFunction('F.relu', _relu),
    torch.relu: ReluFunction('torch.relu', _relu),
    torch.Tensor.relu: ReluFunction('Tensor.relu', _relu),
    torch.relu_: ReluFunction('torch.relu_', _relu_),  # also F.relu_
    torch.Tensor.relu_: ReluFunction('Tensor.relu_', _relu_),
    F.relu6: ReluFunction('F.relu6', _relu6),
    F.leaky_relu: ReluFunction('F.leaky_relu', _leaky_relu),
    F.leaky_relu_: ReluFunction('F.leaky_relu_', _leaky_relu_),
    F.rrelu: ReluFunction('F.rrelu', _rrelu),
    torch.rrelu: ReluFunction('torch.rrelu', _rrelu),
    torch.rrelu_: ReluFunction('torch.rrelu_', _rrelu_),  # also F.rrelu_
}
"""Every functional ReLU convert knows, by the object torch dispatches (fx targets and
``__torch_function__``'s ``func`` alike)."""

METHODS = {'relu': torch.Tensor.relu, 'relu_': torch.Tensor.relu_}
"""Tensor methods as fx records them (``call_method`` nodes name the method)."""


def zoo_code(module_type: type) -> bool:
    """Whether a module is the zoo's own: its functional ReLU calls are left alone (the zoo applies
    activations as modules; the ECOC decoder's ``F.relu`` is part of decoding, not an activation)."""
    return module_type.__module__.startswith('lwta_zoo.')


@dataclass(frozen=True)
class Call:
    """One functional ReLU call in a model: the module whose forward makes it, the function, the line."""
    owner: str  # module path ('' is the model itself)
    function: str
    where: str  # file:line

    def __str__(self) -> str:
        return f"{self.function} in {self.owner or '<model>'!r} at {self.where}"


_TORCH_DIR = os.path.dirname(torch.__file__) + os.sep
_CONVERT_FILES = {os.path.join(os.path.dirname(__file__), name) for name in ('relu_fx.py', 'relu_probe.py')}


def call_site() -> str:
    """file:line of the innermost caller outside torch and convert's own machinery: the line of
    the model's code that made the call being traced or recorded."""
    frame = sys._getframe(1)
    while frame is not None and (frame.f_code.co_filename.startswith(_TORCH_DIR)
                                 or frame.f_code.co_filename in _CONVERT_FILES
                                 or frame.f_code.co_filename == __file__):
        frame = frame.f_back
    return f'{_short(frame.f_code.co_filename)}:{frame.f_lineno}' if frame is not None else '?'


def _short(filename: str) -> str:
    """A file's path from the import root it lies under (timm/models/resnet.py), or as given."""
    roots = [r for r in map(os.path.abspath, filter(None, sys.path)) if filename.startswith(r + os.sep)]
    return os.path.relpath(filename, max(roots, key=len)) if roots else filename
