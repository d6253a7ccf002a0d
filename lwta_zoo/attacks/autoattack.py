"""AutoAttack and APGD through pyautoattack (Croce & Hein 2020), on any gradient of ours.

pyautoattack wants contiguous inputs (its checks call ``.view``) and a device; both are
taken care of here.
"""
from __future__ import annotations

import logging

import torch
import torch.nn as nn
from pyautoattack import AutoAttack
from pyautoattack.autopgd_base import APGDAttack

from .pgd import gradient_surrogate

VERSIONS = ('standard', 'rand')
logging.getLogger('auto-attack').setLevel(logging.WARNING)


def autoattack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, version: str = 'standard',
               seed: int = 0) -> torch.Tensor:
    """L-inf AutoAttack ('standard': APGD-CE, APGD-T, FAB-T, Square; 'rand': APGD-CE/DLR with EoT 20)."""
    if version not in VERSIONS:
        raise ValueError(f'AutoAttack version must be one of {VERSIONS}, got {version!r}')
    adversary = AutoAttack(model, eps=eps, version=version, seed=seed, device=x.device)
    x_adv, _ = adversary.run_standard_evaluation(x.contiguous(), y.contiguous(), batch_size=len(x))
    return x_adv


def apgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, steps: int = 100, loss: str = 'ce',
         restarts: int = 1, eot_iter: int = 1, gradient: str = 'model', seed: int = 0) -> torch.Tensor:
    """L-inf APGD following ``gradient`` ('model', 'mean', 'max', 'ste'); EoT is ``eot_iter``.

    On a surrogate gradient APGD keeps the highest-loss point of each example (a surrogate
    that is already fooled says little about the real model); otherwise the first
    adversarial point it finds, as in AutoAttack.
    """
    attack = APGDAttack(model, n_iter=steps, eps=eps, loss=loss, n_restarts=restarts, eot_iter=eot_iter,
                        seed=seed, device=x.device)
    if gradient == 'eot':
        raise ValueError("APGD averages gradients itself: use gradient='model' with eot_iter")
    with gradient_surrogate(model, gradient), torch.enable_grad():
        return attack.perturb(x.contiguous(), y.contiguous(), best_loss=gradient != 'model').detach()
