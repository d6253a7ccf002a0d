"""BatchNorm2d followed by LWTA as one module, run by the fused kernels in one pass where they apply.

In the zoo's networks an LWTA almost always reads a BatchNorm's output (WideResNet: BN -> act
-> conv; VGG and the small CNN: conv -> BN -> act). ``BatchNormLWTA2d`` is that BatchNorm with
the LWTA as its child ``act`` (as timm's ``BatchNormAct2d`` holds its activation); the
activation's old slot becomes ``nn.Identity``. It is an ``nn.BatchNorm2d`` with the same
parameters and buffers, so state_dict keys, shipped weights and imports are unchanged.

* eval (running statistics): BatchNorm is a per-channel scale and shift that the LWTA kernel
  applies as it reads: one pass, read x and write y.
* training (batch statistics): a pass reduces the statistics, then normalisation and the LWTA
  sample run in one pass; the backward of both is one pass (LWTA's gradient and BatchNorm's
  reductions) and an elementwise one. Only x is saved, as BatchNorm saves it.

The fused calls draw their noise exactly as the LWTA module would on BatchNorm's output (one
seed from torch's generator per call), so a seed gives the same samples fused or not, up to float
rounding of the normalised values. Every other case runs BatchNorm then the LWTA module: other
modes, straight-through samples, the relaxed KL, BatchNorm and LWTA in different train/eval
states, eval without running statistics, and tensors the kernels do not take.

``fuse_batchnorm_lwta(model)`` finds BatchNorm2d -> LWTA pairs in any model (``nn.Sequential``
neighbours, and module calls in a torch.fx trace of modules that trace) and fuses them;
``unfuse_batchnorm_lwta`` undoes it.
"""
from __future__ import annotations

from typing import Dict, Iterator, List, Optional, Tuple

import torch
import torch.fx
import torch.nn as nn

from . import lwta_fast
from .lwta import LWTA


class BatchNormLWTA2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` then the LWTA ``act``, fused where the kernels apply (see the module docstring)."""

    def __init__(self, num_features: int, act: LWTA, eps: float = 1e-5, momentum: Optional[float] = 0.1,
                 affine: bool = True, track_running_stats: bool = True, device=None, dtype=None):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype)
        self.act = act
        self.act_slot = 'act'  # the attribute of the parent module that held ``act`` before fusing

    @classmethod
    def fuse(cls, bn: nn.BatchNorm2d, act: LWTA) -> 'BatchNormLWTA2d':
        """The fused module holding ``bn``'s own parameters and buffers (shared, not copied) and ``act``."""
        fused = cls(bn.num_features, act, bn.eps, bn.momentum, bn.affine, bn.track_running_stats, device='meta')
        fused._parameters, fused._buffers = bn._parameters, bn._buffers
        return fused.train(bn.training)

    def unfuse(self) -> Tuple[nn.BatchNorm2d, nn.Module]:
        """A plain BatchNorm2d with this module's parameters and buffers, and the activation."""
        bn = nn.BatchNorm2d(self.num_features, self.eps, self.momentum, self.affine, self.track_running_stats,
                            device='meta')
        bn._parameters, bn._buffers = self._parameters, self._buffers
        return bn.train(self.training), self.act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = self.act
        # a hook on the LWTA (a figure reading its input, say) sees it called as in the unfused network
        if not (isinstance(act, LWTA) and act.mode == 'sample' and not act.straight_through
                and not (act._forward_hooks or act._forward_pre_hooks)
                and lwta_fast.supports_batchnorm(x, act.U) and x.shape[1] == self.num_features
                and x.shape[1] % act.U == 0):
            return act(super().forward(x))
        batch_stats = self.training or self.running_mean is None
        if batch_stats and act.training and act.kl_form == 'closed' and x.shape[0] * x.shape[2] * x.shape[3] > 1:
            return self._train_forward(x, act)
        if not batch_stats and not act.training:
            return self._eval_forward(x, act)
        return act(super().forward(x))

    def _train_forward(self, x: torch.Tensor, act: LWTA) -> torch.Tensor:
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:  # as BatchNorm2d
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        y, mean, var, kl = lwta_fast.batchnorm_train(x, self.weight, self.bias, self.eps, act.tau, act.U, act.hard)
        act._record_kl(kl)
        if self.training and self.running_mean is not None:
            n = x.numel() // x.shape[1]
            with torch.no_grad():
                self.running_mean.mul_(1 - factor).add_(mean.to(self.running_mean.dtype), alpha=factor)
                self.running_var.mul_(1 - factor).add_(var.to(self.running_var.dtype), alpha=factor * n / (n - 1))
        return y

    def _eval_forward(self, x: torch.Tensor, act: LWTA) -> torch.Tensor:
        # as BatchNorm2d's CPU kernel: alpha = w / sqrt(var + eps), beta = b - mean * alpha, y = x * alpha + beta
        scale = (self.running_var.float() + self.eps).sqrt().reciprocal()
        if self.weight is not None:
            scale = scale * self.weight.float()
        shift = -self.running_mean.float() * scale
        if self.bias is not None:
            shift = self.bias.float() + shift
        if act.eval_tau is not None:
            return lwta_fast.batchnorm_relaxed(x, scale, shift, act.eval_tau, act.U)
        return lwta_fast.batchnorm_sample(x, scale, shift, act.U)


class _Tracer(torch.fx.Tracer):
    """Module calls as graph nodes, BatchNorm and LWTA never traced into."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, (nn.BatchNorm2d, LWTA)) or super().is_leaf_module(m, qualname)


class _Features(nn.Module):
    """A timm-style model's ``forward_features`` as a module's forward (its ``forward`` may not trace:
    the zoo's folds L samples into the batch)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.m = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.m.forward_features(x)


def _trace(module: nn.Module) -> Optional[Tuple[torch.fx.Graph, str]]:
    """A graph of ``module``'s forward (else of its forward_features) and the prefix of its module paths;
    None where fx cannot trace either (data-dependent control flow, ...)."""
    for root, prefix in ((module, ''), (_Features(module), 'm.')):
        if prefix and not hasattr(module, 'forward_features'):
            break
        try:
            return _Tracer().trace(root), prefix
        except Exception:
            continue
    return None


def _traced_pairs(module: nn.Module) -> Optional[List[Tuple[str, str]]]:
    """(BatchNorm path, LWTA path) in a trace of ``module`` (None if it does not trace): the LWTA's only
    input is the BatchNorm's output, nothing else reads that output, each is called once, and both
    have one parent module."""
    traced = _trace(module)
    if traced is None:
        return None
    graph, prefix = traced
    calls: Dict[str, int] = {}
    for node in graph.nodes:
        if node.op == 'call_module':
            calls[node.target] = calls.get(node.target, 0) + 1
    pairs = []
    for node in graph.nodes:
        if node.op != 'call_module' or len(node.users) != 1:
            continue
        (user,) = node.users
        if user.op != 'call_module' or user.args != (node,) or user.kwargs:
            continue
        bn_path, act_path = node.target.removeprefix(prefix), user.target.removeprefix(prefix)
        if (calls[node.target] == calls[user.target] == 1 and bn_path.rpartition('.')[0] == act_path.rpartition('.')[0]
                and type(module.get_submodule(bn_path)) is nn.BatchNorm2d
                and isinstance(module.get_submodule(act_path), LWTA)):
            pairs.append((bn_path, act_path))
    return pairs


def _find_pairs(module: nn.Module, prefix: str = '') -> Iterator[Tuple[str, str]]:
    """(BatchNorm path, LWTA path) pairs in ``module``: from a trace of it, or else of its children."""
    traced = _traced_pairs(module)
    if traced is not None:
        yield from ((prefix + a, prefix + b) for a, b in traced)
        return
    for name, child in module.named_children():
        if not isinstance(child, (nn.BatchNorm2d, LWTA)):
            yield from _find_pairs(child, f'{prefix}{name}.')


def _parent(model: nn.Module, path: str) -> Tuple[nn.Module, str]:
    parent, _, name = path.rpartition('.')
    return model.get_submodule(parent), name


def fuse_batchnorm_lwta(model: nn.Module) -> nn.Module:
    """Fuse every BatchNorm2d whose output only an LWTA of the same parent module reads (found by tracing
    with torch.fx) into a ``BatchNormLWTA2d``, in place; the LWTA's slot becomes ``nn.Identity``.
    Returns ``model``; its state_dict keys do not change."""
    for bn_path, act_path in list(_find_pairs(model)):
        parent, bn_name = _parent(model, bn_path)
        act_name = act_path.rpartition('.')[2]
        fused = BatchNormLWTA2d.fuse(getattr(parent, bn_name), getattr(parent, act_name))
        fused.act_slot = act_name
        setattr(parent, bn_name, fused)
        setattr(parent, act_name, nn.Identity())
    return model


def unfuse_batchnorm_lwta(model: nn.Module) -> nn.Module:
    """Undo ``fuse_batchnorm_lwta`` in place: each BatchNormLWTA2d becomes its BatchNorm2d again and its
    LWTA goes back to the slot it came from. Returns ``model``."""
    for path, m in list(model.named_modules()):
        if isinstance(m, BatchNormLWTA2d):
            parent, name = _parent(model, path)
            bn, act = m.unfuse()
            setattr(parent, name, bn)
            setattr(parent, m.act_slot, act)
    return model
