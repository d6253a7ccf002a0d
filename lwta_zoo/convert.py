"""Swap every ReLU-family activation of any nn.Module for stochastic LWTA: modules, and functional
calls (``F.relu``, ``x.relu_()``...) rewritten with torch.fx; say which ones it could not convert.

See docs/convert.md for what is handled and what is not.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn
from timm.layers import create_act

from .layers.batchnorm_lwta import fuse_batchnorm_lwta
from .layers.lwta import LWTA, track_kl
from .relu_calls import RELU_LIKE, Call
from .relu_fx import Rewrite, rewrite_functional_relus
from .relu_probe import ExampleInputs, Probe, probe

__all__ = ['RELU_LIKE', 'ConvertedSite', 'ConversionSummary', 'convert', 'register_timm_activation']


@dataclass(frozen=True)
class ConvertedSite:
    """One ReLU that became an LWTA module at ``path``."""
    path: str
    kind: str  # 'module' (a ReLU module was swapped) or 'function' (a functional call was rewritten)
    activation: str  # the ReLU it replaces: 'ReLU', 'F.relu', 'Tensor.relu_'...
    channels: Optional[Tuple[int, ...]]  # the channel counts it saw in the example forward (None: not run)
    U: int
    where: str = ''  # file:line of a functional call


class ConversionSummary(list):
    """The sites ``convert`` turned into LWTA (``print(model.lwta_conversion)``)."""

    def __str__(self) -> str:
        rows = [('path', 'kind', 'activation', 'channels', 'U', 'call site')] + [
            (s.path, s.kind, s.activation, ','.join(map(str, s.channels)) if s.channels else '-', str(s.U), s.where)
            for s in self]
        widths = [max(len(row[i]) for row in rows) for i in range(5)]
        lines = ['  '.join(cell.ljust(w) for cell, w in zip(row, widths)) + '  ' + row[5] for row in rows]
        return f'{len(self)} ReLU site(s) converted to LWTA\n' + '\n'.join(line.rstrip() for line in lines)


def convert(model: nn.Module, U: int = 2, *, example_inputs: Optional[ExampleInputs] = None, strict: bool = True,
            fuse: bool = True, **lwta_kwargs) -> nn.Module:
    """Replace every ReLU-family activation that ``model`` applies by ``LWTA(U, **lwta_kwargs)``, in place.

    ReLU modules (ReLU, ReLU6, LeakyReLU, RReLU) are swapped; functional calls that torch.fx can
    trace (``F.relu``, ``torch.relu``, ``x.relu()``, ``x.relu_()``, ``F.relu6``, ``F.leaky_relu``...)
    are rewritten into a module named after the call (``block.relu_call0``). Each LWTA keeps its
    ReLU's ``inplace`` unless ``lwta_kwargs`` sets it.

    ``example_inputs`` (a tensor, or a tuple of forward's positional arguments): one forward checks
    that U divides every site's channel count and records every functional ReLU call left (in code
    fx could not trace or rewrite). Such calls raise a ValueError naming each one, or with
    ``strict=False`` a warning, the rest converted. Without example inputs a module fx could not
    trace is named in a warning: calls in its own code are neither converted nor checked.

    With ``fuse`` (the default) each BatchNorm2d that feeds an LWTA becomes one ``BatchNormLWTA2d``
    (``fuse_batchnorm_lwta``; the same state_dict keys, the LWTA then at ``<batchnorm>.act``), which the
    fused kernels run in one pass; ``fuse=False`` leaves them two modules.

    Returns ``model``; ``model.lwta_conversion`` lists each converted site (print it), at its path
    before fusion.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f'convert needs a torch.nn.Module to change, got {type(model).__name__} {model!r:.60}')
    LWTA(U=U, **lwta_kwargs)  # validate the settings before touching the model
    if example_inputs is not None and not isinstance(example_inputs, (torch.Tensor, tuple)):
        raise TypeError('convert: example_inputs must be a tensor or a tuple of the positional arguments of '
                        f'forward, got {type(example_inputs).__name__}')
    rewrite = rewrite_functional_relus(model)
    try:
        seen = _run_example(model, example_inputs) if example_inputs is not None else None
        _report_unconverted(rewrite, seen, strict)
        _check_channels(seen, U)
    except BaseException:
        rewrite.undo()
        raise
    model.lwta_conversion = _swap(model, U, lwta_kwargs, rewrite.sites, seen)
    track_kl(model)
    return fuse_batchnorm_lwta(model) if fuse else model


def _run_example(model: nn.Module, example_inputs: ExampleInputs) -> Probe:
    try:
        return probe(model, example_inputs)
    except Exception as err:
        inputs = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
        shapes = ', '.join(str(tuple(x.shape)) if isinstance(x, torch.Tensor) else type(x).__name__ for x in inputs)
        raise ValueError(f'convert: the model does not run on example_inputs of shape {shapes}: '
                         f'{type(err).__name__}: {err}') from None


def _report_unconverted(rewrite: Rewrite, seen: Optional[Probe], strict: bool) -> None:
    """Raise (or warn, ``strict=False``) naming each functional ReLU call left; warn about code fx
    could not read where no example forward looked at it."""
    left = list(dict.fromkeys(rewrite.not_rewritten + (seen.calls if seen else [])))
    if left:
        message = (f'convert: {len(left)} functional ReLU call(s) not converted:\n'
                   + '\n'.join(f'  {call}{_why(call, rewrite.untraceable)}' for call in left))
        if strict:
            raise ValueError(message + '\npass strict=False to convert the rest and leave these as they are')
        warnings.warn(message + '\nthe rest was converted', stacklevel=3)
    elif seen is None and rewrite.untraceable:
        warnings.warn('convert: fx could not trace the forward of '
                      + '; '.join(f'{path or "<model>"!r} ({why})' for path, why in rewrite.untraceable.items())
                      + ': a functional ReLU called there is neither converted nor reported; '
                        'pass example_inputs= to check', stacklevel=3)


def _why(call: Call, untraceable: Dict[str, str]) -> str:
    return f' (fx could not trace {untraceable[call.owner]})' if call.owner in untraceable else ''


def _check_channels(seen: Optional[Probe], U: int) -> None:
    """Every site's channel count is a multiple of U (else its LWTA would fail at the first forward)."""
    bad = [f'{path!r} (input {shape})' for path, shapes in (seen.shapes.items() if seen else ())
           for shape in sorted(shapes) if len(shape) < 2 or shape[1] % U]
    if bad:
        raise ValueError(f'convert: U={U} competing units do not divide the channels (dim 1) of: ' + ', '.join(bad))


def _swap(model: nn.Module, U: int, lwta_kwargs: dict, functions: Dict[str, Call],
          seen: Optional[Probe]) -> ConversionSummary:
    """Replace each ReLU module by an LWTA; the summary of what was replaced."""
    sites: List[ConvertedSite] = []
    for path, relu in [(p, m) for p, m in model.named_modules() if isinstance(m, RELU_LIKE)]:
        parent, _, name = path.rpartition('.')
        call = functions.get(path)
        channels = tuple(sorted({shape[1] for shape in seen.shapes.get(path, ())})) if seen else None
        sites.append(ConvertedSite(path, 'function' if call else 'module', call.function if call else type(relu).__name__,
                                   channels or None, U, call.where if call else ''))
        setattr(model.get_submodule(parent), name,
                LWTA(U=U, **{'inplace': getattr(relu, 'inplace', False), **lwta_kwargs}))
    return ConversionSummary(sites)


def register_timm_activation() -> None:
    """Make 'lwta' an activation name for timm (``create_model(..., act_layer='lwta')``).

    timm has no public hook for new names; its factory reads this module-level dict.
    """
    create_act._ACT_LAYER_DEFAULT.setdefault('lwta', LWTA)
